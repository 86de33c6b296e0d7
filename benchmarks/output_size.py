"""Output size: the AI objects' bytes per study against the source study's, default profile.

The objects are made by the real assembly (``flows.triage.assemble.assemble``) with
the default output profile (the SR for every study, the summary and the annotated
positive views for assessed ones; Secondary Captures JPEG-LS Lossless). The model is
not run: each assessed view gets a fixed result (probability 0.9 for a positive view,
0.1 for a negative one, a box on the middle third) and a Grad-CAM-like blob in a
224-pixel model input, so the figure depends on the profile and the pictures only.

Studies: the demo sample studies (``write_sample_studies``: wrist, hand, elbow,
chest-like; 512 x 512, 12-bit, uncompressed) with every view of a supported region
positive (the worst case for the default profile) and the chest-like study not
assessed; and a real-sized 3-view study, 3000 x 2500, 12-bit, uncompressed (phantoms
upsampled, with noise of 1 % of the range added at full size as a detector has), once
with one positive view and once with all three.

    python -m benchmarks.output_size [--quick] [--json var/bench/output_size.json]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_phantom_study, write_report
from config.domain.anatomy import part_of_term
from config.domain.decision import ViewResult, decide
from config.domain.findings import (
    AlgorithmIdentity,
    BoundingBox,
    Gate,
    NotAssessed,
    OperatingPoints,
)
from config.domain.vocabulary import REGIONS
from config.settings import Settings, load_settings
from flows.triage.assemble import StudyRun, ViewPixels, assemble
from models.runtime.preprocessing import FitToSquare, display_image_from_dataset
from models.training.phantoms import write_sample_studies

ALGORITHM = AlgorithmIdentity("fracture-demo", "0.1.0", trained_on_synthetic_data=True)
POINTS = OperatingPoints(suspected=0.3, likely=0.7)
MODEL_INPUT = 224
GOAL = 0.5


@dataclass(frozen=True)
class Row:
    """One study: its views, bytes of source and AI objects, and the ratio."""

    study: str
    views: int
    positive_views: int
    source_bytes: int
    ai_bytes: int
    ai_bytes_by_kind: dict[str, int]

    @property
    def ratio(self) -> float:
        return self.ai_bytes / self.source_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1200 x 1000 'real-sized' study")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compression", help="outputs.compression (default: the node's default)")
    options = parser.parse_args()
    size = (1200, 1000) if options.quick else (3000, 2500)
    outputs = {"compression": options.compression} if options.compression else {}
    with tempfile.TemporaryDirectory() as work:
        rows = measure_all(Path(work), size, load_settings(None, outputs=outputs))
    report(rows, size, options.json)


def measure_all(work: Path, size: tuple[int, int], settings: Settings) -> list[Row]:
    rows = []
    for study_dir in write_sample_studies(work / "samples"):
        sources = [dcmread(path) for path in sorted(study_dir.glob("*.dcm"))]
        region = part_of_term(str(sources[0].get("BodyPartExamined", "")))
        name = region.name if region is not None and region.name in REGIONS else "chest-like"
        positive = len(sources) if name != "chest-like" else 0
        rows.append(
            measure(work, f"demo {name}", study_dir, positive, settings, assessed=positive > 0)
        )
    real = real_sized_study(work / "real", *size)
    label = f"{size[0]} x {size[1]} x 3"
    for positive in (1, 3):
        rows.append(
            measure(work, f"{label}, {positive} positive", real, positive, settings, assessed=True)
        )
    return rows


def real_sized_study(out: Path, rows: int, columns: int, views: int = 3) -> Path:
    """A 3-view wrist study of ``rows`` x ``columns`` 12-bit views, written uncompressed."""
    rng = np.random.default_rng(11)
    study_dir = write_phantom_study(
        out, REGIONS.index("wrist"), views, True, rng, name="Real", rows=rows
    )
    for path in sorted(study_dir.glob("*.dcm")):
        ds = dcmread(path)
        pixels = ds.pixel_array[:, :columns].astype(np.float64)
        pixels += rng.normal(0.0, 0.01 * 4095, pixels.shape)  # detector noise, full size
        ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
        ds.Columns = columns
        ds.save_as(path, enforce_file_format=True)
    return study_dir


def measure(
    work: Path, label: str, study_dir: Path, positive: int, settings: Settings, *, assessed: bool
) -> Row:
    """Assemble the default profile's objects for a study; count their bytes."""
    paths = sorted(study_dir.glob("*.dcm"))
    sources = [dcmread(path) for path in paths]
    views, pixels = [], {}
    for index, ds in enumerate(sources):
        uid = str(ds.SOPInstanceUID)
        if not assessed:
            outside = NotAssessed(Gate.HEADER, "the header names a body part outside the model")
            views.append(ViewResult(uid, not_assessed=outside))
            continue
        rows, columns = int(ds.Rows), int(ds.Columns)
        box = BoundingBox(rows / 3, columns / 3, 2 * rows / 3, 2 * columns / 3)
        views.append(ViewResult(uid, "wrist", 0.95, 0.9 if index < positive else 0.1, box))
        pixels[uid] = _view_pixels(ds, box)
    finding = decide(str(sources[0].StudyInstanceUID), views, {"wrist": POINTS})
    output_dir = work / "outputs" / label.replace(" ", "-").replace(",", "")
    run = StudyRun(1, finding, tuple(sources), ALGORITHM, output_dir / finding.study_instance_uid)
    placed = settings.model_copy(update={"output_dir": output_dir})
    done = assemble(run, pixels, placed, None, ())
    by_kind: dict[str, int] = {}
    for output in done.outputs:
        size = (output_dir / output.path).stat().st_size
        by_kind[str(output.kind)] = by_kind.get(str(output.kind), 0) + size
    return Row(
        label,
        len(sources),
        positive,
        sum(path.stat().st_size for path in paths),
        sum(by_kind.values()),
        by_kind,
    )


def _view_pixels(ds: Dataset, box: BoundingBox) -> ViewPixels:
    """The view fitted into the model input and a Grad-CAM-like blob on the box there."""
    _, geometry = FitToSquare(MODEL_INPUT)(display_image_from_dataset(ds))
    top, left, bottom, right = geometry.box_to_model(*box.as_tuple())
    r, c = np.mgrid[0:MODEL_INPUT, 0:MODEL_INPUT]
    spread = max(bottom - top, right - left) / 3
    centre = ((top + bottom) / 2, (left + right) / 2)
    cam = np.exp(-(((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * spread**2)))
    return ViewPixels(geometry, cam.astype(np.float32))


def report(rows: list[Row], size: tuple[int, int], json_path: Path | None) -> None:
    table = Table(title="AI bytes per study / source bytes (default output profile)")
    for column in ("Study", "Views", "Positive", "Source MB", "AI MB", "SR KB", "Summary KB",
                   "Annotated MB", "AI / source", f"Goal (<= {GOAL})"):  # fmt: skip
        table.add_column(column)
    for row in rows:
        kinds = row.ai_bytes_by_kind
        table.add_row(
            row.study,
            str(row.views),
            str(row.positive_views),
            f"{row.source_bytes / 1e6:.2f}",
            f"{row.ai_bytes / 1e6:.2f}",
            f"{kinds.get('sr', 0) / 1e3:.0f}",
            f"{kinds.get('summary', 0) / 1e3:.0f}",
            f"{kinds.get('sc', 0) / 1e6:.2f}",
            f"{row.ratio:.3f}",
            "met" if row.ratio <= GOAL else "NOT met",
        )
    Console().print(table)
    write_report(
        json_path,
        real_sized=list(size),
        goal=GOAL,
        rows=[{**asdict(row), "ratio": row.ratio} for row in rows],
        goal_met=all(row.ratio <= GOAL for row in rows),
    )


if __name__ == "__main__":
    main()
