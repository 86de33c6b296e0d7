"""Every output builder behind one signature, for the tests that run them all."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.findings import AlgorithmIdentity, StudyFinding
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.parametric_map import build_heatmap_parametric_map
from dicom_node.outputs.presentation_state import build_triage_gsps
from dicom_node.outputs.rejection_note import build_rejection_note
from dicom_node.outputs.secondary_capture import build_annotated_view
from dicom_node.outputs.sr import build_triage_sr
from dicom_node.outputs.summary import build_summary_secondary_capture

Builder = Callable[[list[Dataset], StudyFinding, AlgorithmIdentity, NewInstance], Dataset]


def _first_assessed(images: list[Dataset], finding: StudyFinding) -> tuple[Dataset, int]:
    index = next(i for i, image in enumerate(finding.images) if image.assessed)
    uid = finding.images[index].sop_instance_uid
    return next(ds for ds in images if ds.SOPInstanceUID == uid), index


def blob(rows: int, columns: int) -> np.ndarray:
    """A smooth [0, 1] map peaking in the middle of a rows x columns grid."""
    r, c = np.mgrid[0:rows, 0:columns]
    spread = max(rows, columns) / 6
    return np.exp(-(((r - rows / 2) ** 2 + (c - columns / 2) ** 2) / (2 * spread**2))).astype(
        np.float32
    )


def annotated(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, new: NewInstance
) -> Dataset:
    source, index = _first_assessed(images, finding)
    rows, columns = int(source.Rows), int(source.Columns)
    display = np.linspace(0.0, 1.0, rows * columns, dtype=np.float32).reshape(rows, columns)
    return build_annotated_view(
        source, display, finding.images[index], algorithm, new, cam=blob(rows, columns)
    )


def parametric_map(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, new: NewInstance
) -> Dataset:
    source, index = _first_assessed(images, finding)
    heatmap = blob(int(source.Rows), int(source.Columns))
    return build_heatmap_parametric_map(source, heatmap, finding.images[index], algorithm, new)


def rejection_note(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, new: NewInstance
) -> Dataset:
    """A note withdrawing an SR built from ``images`` (our own object, from imperfect input)."""
    earlier = build_triage_sr(images, finding, algorithm, NewInstance.new_series(9001))
    return build_rejection_note([earlier], algorithm, new, reason=f"test {generate_uid()}")


#: name -> builder; the annotated view and the map need an assessed view.
BUILDERS: dict[str, Builder] = {
    "sr": build_triage_sr,
    "summary": build_summary_secondary_capture,
    "gsps": build_triage_gsps,
    "annotated": annotated,
    "parametric-map": parametric_map,
    "rejection-note": rejection_note,
}
