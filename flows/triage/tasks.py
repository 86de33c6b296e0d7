"""The triage tasks: small steps with typed inputs, UIDs and paths in, UIDs and paths out.

Tensors and heatmaps go through files in the batch's work directory (owner-only,
deleted when the batch ends); no pixel array and no patient data passes through
Prefect.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from prefect import task
from pydicom import dcmread

from config.domain.findings import FractureType, StudyFinding
from config.domain.intended_use import header_gate
from db.repositories import WrittenOutput
from dicom_node.delivery.outbox import OutboxPass
from dicom_node.headers import header_facts
from dicom_node.store import make_private_dirs
from flows.runtime import current_runtime
from flows.triage import records
from flows.triage.assemble import StudyRun, ViewPixels, assemble, read_headers
from flows.triage.errors import shielded
from flows.triage.payloads import (
    Box,
    Explanations,
    HeaderScreen,
    PreprocessedBatch,
    RegionResult,
    SourceView,
    StudyViews,
    UnreadableView,
)
from models.runtime.preprocessing import preprocess_dicom_file

logger = logging.getLogger(__name__)


@task(name="load-studies")
@shielded("load-studies")
def load_studies(study_instance_uids: list[str]) -> dict[str, tuple[SourceView, ...]]:
    """Each study's triageable instances (CR/DX, not our own outputs): UID, hash and path."""
    runtime = current_runtime()
    return {
        uid: records.triageable_views(runtime.sessions, uid, runtime.store.absolute)
        for uid in study_instance_uids
    }


@task(name="screen-headers")
@shielded("screen-headers")
def screen_headers(views: tuple[SourceView, ...]) -> tuple[HeaderScreen, ...]:
    """The header gate for each view, before any pixel is read (dicom_node.headers)."""
    use = current_runtime().intended_use()
    screens = []
    for view in views:
        try:
            facts = header_facts(dcmread(view.path, stop_before_pixels=True))
        except Exception as error:  # an unreadable header leaves it to the pixel decoder
            logger.warning(
                "header of SOP Instance %s unreadable: %s",
                view.sop_instance_uid,
                type(error).__name__,
            )
            screens.append(HeaderScreen(view.sop_instance_uid))
            continue
        verdict = header_gate(facts, use)
        screens.append(
            HeaderScreen(
                view.sop_instance_uid, verdict.not_assessed, tuple(sorted(verdict.regions))
            )
        )
    return tuple(screens)


@task(name="preprocess")
@shielded("preprocess")
def preprocess_views(views: tuple[SourceView, ...], work_dir: str) -> PreprocessedBatch:
    """Decode and preprocess each view; write the batch tensor to the work directory.

    A view that cannot be decoded is reported (and left out of the batch) rather than
    failing its study or the batch.
    """
    size = current_runtime().model().image_size
    tensors, geometries, decoded, unreadable = [], [], [], []
    for view in views:
        try:
            tensor, geometry = preprocess_dicom_file(view.path, size)
        except Exception as error:  # one bad view must not sink the study
            logger.warning(
                "cannot preprocess SOP Instance %s: %s", view.sop_instance_uid, type(error).__name__
            )
            reason = f"pixel data cannot be decoded ({type(error).__name__})"
            unreadable.append(
                UnreadableView(view.study_instance_uid, view.sop_instance_uid, reason)
            )
            continue
        tensors.append(tensor)
        geometries.append(geometry)
        decoded.append(view)
    inputs_path = Path(work_dir) / "inputs.npy"
    make_private_dirs(inputs_path.parent)  # the tensors are pixel data: owner-only
    if tensors:
        np.save(inputs_path, np.stack(tensors).astype(np.float32))
    return PreprocessedBatch(str(inputs_path), tuple(decoded), tuple(geometries), tuple(unreadable))


@task(name="classify-region")
@shielded("classify-region")
def classify_regions(inputs_path: str) -> tuple[RegionResult, ...]:
    """Stage 1 and the pixel gate: each view's region (None: why not) and its confidence."""
    images = np.load(inputs_path)
    return tuple(
        RegionResult(call.region, call.probability, call.reason, call.fracture_probabilities)
        for call in current_runtime().model().classify_regions(images)
    )


@task(name="classify-fracture")
@shielded("classify-fracture")
def classify_fractures(
    inputs_path: str, regions: tuple[str | None, ...]
) -> tuple[float | None, ...]:
    """Stage 2 without gradients: each view's fracture probability (None without a region)."""
    images = np.load(inputs_path)
    return tuple(current_runtime().model().classify_fractures(images, list(regions)))


@task(name="classify-fracture-type")
@shielded("classify-fracture-type")
def classify_types(inputs_path: str, wanted: tuple[bool, ...]) -> tuple[FractureType | None, ...]:
    """The type head on the wanted views (those flagged as a fracture), None elsewhere."""
    rows = [k for k, want in enumerate(wanted) if want]
    calls: list[FractureType | None] = [None] * len(wanted)
    if rows:
        images = np.load(inputs_path)[rows]
        for k, call in zip(rows, current_runtime().model().classify_types(images), strict=True):
            calls[k] = call
    return tuple(calls)


@task(name="detect-fracture")
@shielded("detect-fracture")
def detect_fractures(inputs_path: str, wanted: tuple[bool, ...]) -> tuple[Box | None, ...]:
    """The detector's best box on the wanted views (those flagged), None elsewhere and
    where it finds none at its report score; boxes in model-input pixels."""
    rows = [k for k, want in enumerate(wanted) if want]
    boxes: list[Box | None] = [None] * len(wanted)
    if rows:
        images = np.load(inputs_path)[rows]
        for k, found in zip(rows, current_runtime().model().detect(images), strict=True):
            boxes[k] = found.box if found is not None else None
    return tuple(boxes)


@task(name="explain-fracture")
@shielded("explain-fracture")
def explain_fractures(
    inputs_path: str, regions: tuple[str | None, ...], work_dir: str
) -> Explanations:
    """Grad-CAM of the views that need a box or a heatmap (a region given), the others none.

    Boxes are in model-input coordinates; the maps go to a file (no arrays through Prefect).
    """
    images = np.load(inputs_path)
    explanations = current_runtime().model().explain(images, list(regions))
    size = images.shape[-1]
    cams = np.stack(
        [cam if cam is not None else np.zeros((size, size), np.float32) for cam, _ in explanations]
    )
    cams_path = Path(work_dir) / "cams.npy"
    np.save(cams_path, cams)
    return Explanations(tuple(box for _, box in explanations), str(cams_path))


@task(name="build-outputs")
@shielded("build-outputs")
def build_outputs(
    run_id: int, study: StudyViews, finding: StudyFinding, cams_path: str | None
) -> tuple[WrittenOutput, ...]:
    """Build the result objects the site switched on, write them, record them (one transaction).

    SR (with planar ROIs, superseding the previous run's SR), one summary, one GSPS over
    the views, per assessed view an annotated copy and a Parametric Map; a re-run adds
    the IOCM rejection note withdrawing the previous run's objects.
    """
    runtime = current_runtime()
    sessions, uid = runtime.sessions, study.study_instance_uid
    by_uid = {view.sop_instance_uid: view for view in study.views}
    sources = tuple(dcmread(by_uid[image.sop_instance_uid].path) for image in finding.images)
    cams = np.load(cams_path) if cams_path is not None else None
    pixels = {
        view.sop_instance_uid: ViewPixels(geometry, cams[index] if cams is not None else None)
        for view, geometry, index in zip(study.views, study.geometries, study.indices, strict=True)
        if geometry is not None
    }
    previous = records.previous_report_path(sessions, uid, run_id)
    previous_reports = read_headers(
        runtime.output_dir, [("previous SR", previous)] if previous else []
    )
    superseded = read_headers(runtime.output_dir, records.superseded_outputs(sessions, uid, run_id))
    run = StudyRun(
        run_id,
        finding,
        sources,
        runtime.algorithm(),
        runtime.output_dir / uid,
        calling_ae_title=records.calling_ae_title(sessions, uid),
        intended_use=runtime.intended_use().statement,
    )
    done = assemble(
        run,
        pixels,
        runtime.settings,
        previous_reports[0] if previous_reports else None,
        superseded,
    )
    records.record_outputs(
        sessions, uid, run_id, done.outputs, done.maps_not_made, done.repaired_attributes
    )
    return tuple(done.outputs)


@task(name="send")
@shielded("send")
def send_outputs(run_id: int) -> OutboxPass:
    """One outbox pass over the run's deliveries; what fails transiently stays queued.

    No task retries here: the outbox retries with backoff (and across restarts), so a
    PACS that is down for an hour does not hold the flow run open.
    """
    return current_runtime().outbox.send_due(run_id)
