"""Inference: the per-image pipeline, stage by stage, against the bare networks.

The reference is measured in the same process on the same tensors: the region
network's forward, the fracture network's forward and Grad-CAM. The pipeline adds
decoding, preprocessing, the hierarchy's bookkeeping, output encoding (overlay,
Secondary Capture, SR) and Prefect's orchestration of one study.

    python -m benchmarks.inference --bundle var/bundles/demo [--images 4] [--threads 2]
        [--batch-studies 16] [--architecture densenet121 --image-size 320]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, generate_uid
from rich.console import Console
from rich.table import Table

from benchmarks.common import write_report
from config import REGION_CLASSES
from config.domain.decision import ViewResult, decide
from config.domain.findings import AlgorithmIdentity, OperatingPoints
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.secondary_capture import build_annotated_view
from dicom_node.outputs.sr import build_triage_sr
from models.runtime.bundle import load_bundle
from models.runtime.gradcam import CamExplainer
from models.runtime.networks import gradcam_target_layer
from models.runtime.preprocessing import display_image_from_dataset, preprocess
from models.training.phantoms import phantom_dataset, render_phantom


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def write_inputs(directory: Path, count: int, rows: int, compressed: bool) -> list[Path]:
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        phantom = render_phantom("wrist", index % 2 == 0, rng, size=256)
        ds = phantom_dataset(
            phantom,
            patient_name="Bench^Mark",
            patient_id="BENCH",
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=generate_uid(),
            accession_number="B1",
            instance_number=index + 1,
            rows=rows,
        )
        if compressed:
            ds.compress(JPEG2000Lossless)
        path = directory / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def orchestration_seconds(tasks: int, repeats: int) -> float:
    """Prefect's cost of one flow run with ``tasks`` no-op task runs."""
    from prefect import flow, task

    from flows.prefect_env import flow_run_settings

    @task
    def noop(value: int) -> int:
        return value

    @flow(persist_result=False)
    def empty_flow() -> None:
        for index in range(tasks):
            noop(index)

    with flow_run_settings(heartbeat=False):
        return timed(empty_flow, repeats)


def batch_task_runs(studies: int) -> int:
    """Task runs of one ``triage_batch`` run: load, preprocess, region, fracture (with its
    Grad-CAM) for the batch, then build-outputs and send per study."""
    return 4 + 2 * studies


def realistic_bundle(
    demo: Path, architecture: str, size: int, target: Path, shared_backbone: bool = False
) -> Path:
    """An untrained bundle of a production-sized network (timing only; weights random);
    with ``shared_backbone`` its one-network form."""
    import torch.nn as nn

    from models.runtime.bundle import load_metadata, save_bundle
    from models.runtime.networks import NetworkSpec, SharedStages, build_network, shared_outputs

    metadata = load_metadata(demo)
    regions = len(metadata.regions)
    outputs = shared_outputs(regions) if shared_backbone else len(REGION_CLASSES)
    region = NetworkSpec(architecture=architecture, out_channels=outputs)
    fracture = NetworkSpec(architecture=architecture, out_channels=1)
    # Random weights: the demo's pixel gate statistics do not fit them, so none is kept.
    metadata = metadata.model_copy(
        update={
            "image_size": size,
            "region_network": region,
            "fracture_network": fracture,
            "shared_backbone": shared_backbone,
            "pixel_gate": None,
        }
    )
    if shared_backbone:
        shared = SharedStages(build_network(region), metadata.regions)
        save_bundle(target, metadata, shared, None)
        return target
    nets: dict[str, nn.Module] = {r: build_network(fracture) for r in metadata.regions}
    save_bundle(target, metadata, build_network(region), nets)
    return target


def measure(
    bundle: Path, images: int, rows: int, compressed: bool, repeats: int, batch_studies: int
) -> dict:
    model = load_bundle(bundle)
    size = model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp), images, rows, compressed)
        datasets = [dcmread(p) for p in paths]
        displays = [display_image_from_dataset(ds) for ds in datasets]
        batch = np.stack([preprocess(d, size)[0] for d in displays])
        regions = [call.region for call in model.classify_regions(batch)]
        regions = [r or "wrist" for r in regions]  # time stage 2 on every image
        tensor = torch.as_tensor(batch)
        region_net = model.region_network
        fracture_net = model.fracture_networks["wrist"]
        explainer = CamExplainer(
            fracture_net, gradcam_target_layer(model.metadata.fracture_network)
        )

        def bare() -> None:
            with torch.no_grad():
                region_net(tensor)
                fracture_net(tensor)
            explainer(tensor, 0)

        stages = {
            "decode": lambda: [dcmread(p).pixel_array for p in paths],
            "preprocess": lambda: [
                preprocess(display_image_from_dataset(ds), size) for ds in datasets
            ],
            "stage 1 (region)": lambda: model.classify_regions(batch),
            # One pass: the explained forward gives the fracture logits too.
            "stage 2 (fracture) with Grad-CAM": lambda: model.classify_and_explain(batch, regions),
        }
        algorithm = AlgorithmIdentity("bench", "1", trained_on_synthetic_data=True)
        study = decide(
            datasets[0].StudyInstanceUID,
            [ViewResult(ds.SOPInstanceUID, "wrist", 0.9, 0.8) for ds in datasets],
            {"wrist": OperatingPoints(suspected=0.3, likely=0.7)},
        )
        findings = list(study.images)

        def encode() -> None:
            instance = NewInstance.new_series(9002)
            for ds, display, finding in zip(datasets, displays, findings, strict=True):
                sc = build_annotated_view(ds, display, finding, algorithm, instance)
                sc.save_as(BytesIO(), enforce_file_format=True)
                instance = instance.next_in_series()
            sr = build_triage_sr(datasets, study, algorithm, NewInstance.new_series(9001))
            sr.save_as(BytesIO(), enforce_file_format=True)

        stages["output encoding"] = encode
        per_image = {name: timed(fn, repeats) / images for name, fn in stages.items()}
        # triage_batch: one flow run for `batch_studies` studies of `images` views each.
        per_image[f"orchestration (Prefect, batch of {batch_studies} studies)"] = (
            orchestration_seconds(batch_task_runs(batch_studies), repeats)
            / (images * batch_studies)
        )
        reference = timed(bare, repeats) / images
    total = sum(per_image.values())
    whole = None if compressed else whole_pipeline_seconds(bundle, batch_studies, images, rows)
    return {
        "input": "JPEG 2000 lossless" if compressed else "uncompressed",
        "network": f"{model.metadata.region_network.architecture} at {size}px",
        "images": images,
        "rows": rows,
        "per_image_seconds": {k: round(v, 5) for k, v in per_image.items()},
        "pipeline_seconds_per_image": round(total, 5),
        "bare_model_seconds_per_image": round(reference, 5),
        "ratio_pipeline_to_bare": round(total / reference, 2),
        # The same, measured whole: triage_batch over stored studies, every output built,
        # written durably and recorded (no destination to send to), per image.
        "whole_triage_batch_seconds_per_image": None if whole is None else round(whole, 5),
        "ratio_whole_to_bare": None if whole is None else round(whole / reference, 2),
        "goal_met": (max(total, whole or 0.0) / reference) <= 1.5 if not compressed else None,
    }


def whole_pipeline_seconds(bundle: Path, studies: int, views: int, rows: int) -> float:
    """Seconds per image of real ``triage_batch`` runs draining ``studies`` stored studies."""
    from benchmarks.common import write_phantom_study
    from benchmarks.scale import timed_drain

    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        written = [
            write_phantom_study(work / "studies", k, views, k % 2 == 0, rng, "Bench", rows)
            for k in range(studies)
        ]
        timed_drain(work / "warm-up", bundle, written[:1])  # Prefect's first flow run
        return timed_drain(work / "timed", bundle, written) / (studies * views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("var/bundles/demo"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-studies", type=int, default=16, help="studies per batch")
    parser.add_argument(
        "--architecture",
        default=None,
        help="also time an untrained bundle of this network (e.g. densenet121) ...",
    )
    parser.add_argument("--image-size", type=int, default=320, help="... at this input size")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundles = [args.bundle]
    temp = tempfile.TemporaryDirectory()
    if args.architecture:
        bundles.append(
            realistic_bundle(
                args.bundle, args.architecture, args.image_size, Path(temp.name) / "bundle"
            )
        )
    results = [
        measure(bundle, args.images, args.rows, compressed, args.repeats, args.batch_studies)
        for bundle in bundles
        for compressed in (False, True)
    ]
    temp.cleanup()
    console = Console()
    for result in results:
        table = Table(
            title=f"Per image, {result['network']}, {result['input']} "
            f"{result['rows']}x{result['rows']}"
        )
        table.add_column("stage")
        table.add_column("ms", justify="right")
        for name, seconds in result["per_image_seconds"].items():
            table.add_row(name, f"{seconds * 1000:.1f}")
        table.add_row("pipeline total", f"{result['pipeline_seconds_per_image'] * 1000:.1f}")
        table.add_row(
            "bare networks + Grad-CAM", f"{result['bare_model_seconds_per_image'] * 1000:.1f}"
        )
        table.add_row("ratio", str(result["ratio_pipeline_to_bare"]))
        if result["whole_triage_batch_seconds_per_image"] is not None:
            table.add_row(
                "triage_batch measured whole",
                f"{result['whole_triage_batch_seconds_per_image'] * 1000:.1f}",
            )
            table.add_row("ratio whole / bare", str(result["ratio_whole_to_bare"]))
        console.print(table)
    write_report(args.json, results=results)


if __name__ == "__main__":
    main()
