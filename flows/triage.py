"""The ``triage_study`` flow: load, preprocess, region, fracture, Grad-CAM, outputs, send, record.

Tasks pass UIDs, paths and numbers between them, never pixel arrays or patient
data: tensors go through files in a per-run work directory, so Prefect's state
(and its database) holds nothing a hospital would call PHI.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.runtime import flow_run
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from config import REGIONS, FractureLevel, Settings
from config.settings import Hl7Destination
from db.audit import AuditEventType, AuditLog, Outcome
from db.models import RunStatus, StudyStatus
from db.repositories import ImageResultRow, RunRepository, StudyRepository
from dicom_node.hl7_oru import build_oru_r01, is_flagged
from dicom_node.presentation_state import build_triage_gsps
from dicom_node.results import (
    AlgorithmIdentity,
    BoundingBox,
    ImageFinding,
    StudyFinding,
    Thresholds,
)
from dicom_node.secondary_capture import build_overlay_secondary_capture
from dicom_node.sr import build_triage_sr
from dicom_node.store import write_durably
from dicom_node.summary import build_summary_secondary_capture
from flows.runtime import Runtime, current_runtime
from models.decision import aggregate_study, study_region
from models.inference import HierarchicalModel
from models.overlay import render_overlay
from models.preprocessing import Geometry, display_image_from_dataset, preprocess_dicom_file

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002
SUMMARY_SERIES_NUMBER = 9003
GSPS_SERIES_NUMBER = 9004


@dataclass(frozen=True)
class TriageSummary:
    """What ``triage_study`` returns: UIDs, numbers and paths only."""

    study_instance_uid: str
    status: str
    run_id: int | None = None
    region: str | None = None
    fracture_probability: float | None = None
    level: str | None = None
    outputs: tuple[str, ...] = ()
    undelivered: int = 0


# -- tasks -----------------------------------------------------------------------------


@task(name="load-study")
def load_study(study_instance_uid: str) -> list[dict[str, str]]:
    """The study's triageable instances (CR/DX, not our own outputs) as UID and path."""
    runtime = current_runtime()
    with runtime.sessions() as session:
        runs = RunRepository(session)
        return [
            {
                "sop_instance_uid": instance.sop_instance_uid,
                "path": str(runtime.store.absolute(instance.path)),
            }
            for instance in StudyRepository(session).instances(
                study_instance_uid, triageable_only=True
            )
            if not runs.is_our_output(instance.sop_instance_uid)
        ]


@task(name="preprocess")
def preprocess_images(sources: list[dict[str, str]], work_dir: str) -> dict[str, Any]:
    """Decode and preprocess each view; write the batch tensor to the work directory.

    Views that cannot be decoded are reported by UID (and left out of the batch)
    rather than failing the whole study.
    """
    model = current_runtime().model()
    size = model.metadata.image_size
    tensors, geometries, used, unreadable = [], [], [], []
    for source in sources:
        try:
            tensor, geometry = preprocess_dicom_file(source["path"], size)
        except Exception as error:  # one bad view must not sink the study
            logger.warning(
                "cannot preprocess SOP Instance %s: %s",
                source["sop_instance_uid"],
                type(error).__name__,
            )
            unreadable.append(
                {"sop_instance_uid": source["sop_instance_uid"], "reason": str(error)[:200]}
            )
            continue
        tensors.append(tensor)
        geometries.append(_geometry_to_dict(geometry))
        used.append(source)
    inputs_path = Path(work_dir) / "inputs.npy"
    inputs_path.parent.mkdir(parents=True, exist_ok=True)
    if tensors:
        np.save(inputs_path, np.stack(tensors).astype(np.float32))
    return {
        "inputs_path": str(inputs_path),
        "sources": used,
        "geometries": geometries,
        "unreadable": unreadable,
    }


@task(name="classify-region")
def classify_regions(inputs_path: str) -> list[dict[str, Any]]:
    images = np.load(inputs_path)
    return [
        {"region": region, "region_probability": probability}
        for region, probability in current_runtime().model().classify_regions(images)
    ]


@task(name="classify-fracture")
def classify_fractures(inputs_path: str, regions: list[dict[str, Any]]) -> list[float | None]:
    images = np.load(inputs_path)
    return current_runtime().model().classify_fractures(images, [r["region"] for r in regions])


@task(name="grad-cam")
def explain(inputs_path: str, regions: list[dict[str, Any]], work_dir: str) -> dict[str, Any]:
    """Grad-CAM maps (to a file) and their hottest boxes, in model-input coordinates."""
    images = np.load(inputs_path)
    explanations = current_runtime().model().explain(images, [r["region"] for r in regions])
    size = images.shape[-1]
    cams = np.stack(
        [cam if cam is not None else np.zeros((size, size), np.float32) for cam, _ in explanations]
    )
    cams_path = Path(work_dir) / "cams.npy"
    np.save(cams_path, cams)
    return {"cams_path": str(cams_path), "boxes": [box for _, box in explanations]}


@task(name="build-outputs")
def build_outputs(
    study_instance_uid: str,
    run_id: int,
    preprocessed: dict[str, Any],
    finding: StudyFinding,
    explanation: dict[str, Any],
) -> list[dict[str, str]]:
    """Build the result objects the site switched on; write them to the output directory.

    SR (with planar ROIs, superseding the previous run's SR), one summary SC, one
    annotated SC per view (box dotted when suspected, solid when likely; heatmap
    optional) and one GSPS over the original views. Every run writes new series.
    """
    runtime = current_runtime()
    switches = runtime.settings.outputs
    model = runtime.model()
    algorithm = algorithm_identity(model)
    sources = [dcmread(s["path"]) for s in preprocessed["sources"]]
    cams = np.load(explanation["cams_path"])
    study_dir = runtime.output_dir / study_instance_uid

    outputs: list[dict[str, str]] = []
    if switches.sr:
        sr = build_triage_sr(
            sources,
            finding,
            algorithm,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=SR_SERIES_NUMBER,
            instance_number=1,
            include_rois=switches.sr_rois,
            previous_versions=_previous_reports(runtime, study_instance_uid, run_id),
        )
        outputs.append(_write_output(sr, "sr", study_dir))

    if switches.summary:
        summary = build_summary_secondary_capture(
            sources,
            finding,
            algorithm,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=SUMMARY_SERIES_NUMBER,
            instance_number=1,
        )
        outputs.append(_write_output(summary, "summary", study_dir))

    if switches.gsps:
        gsps = build_triage_gsps(
            sources,
            finding,
            algorithm,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=GSPS_SERIES_NUMBER,
            instance_number=1,
        )
        outputs.append(_write_output(gsps, "gsps", study_dir))

    sc_series_uid = generate_uid()
    for number, (source, image, geometry, cam) in enumerate(
        zip(sources, finding.images, preprocessed["geometries"], cams, strict=True), start=1
    ):
        if not switches.annotated:
            break
        cam_source = None
        if switches.heatmap and image.region is not None:
            cam_source = _geometry_from_dict(geometry).map_to_source(cam)
        box, dotted = overlay_box(image)
        overlay = render_overlay(
            display_image_from_dataset(source),  # the source's VOI: bone looks like bone
            cam_source,
            box,
            dotted=dotted,
        )
        sc = build_overlay_secondary_capture(
            source,
            overlay,
            image,
            algorithm,
            series_instance_uid=sc_series_uid,
            sop_instance_uid=generate_uid(),
            series_number=SC_SERIES_NUMBER,
            instance_number=number,
            heatmap=switches.heatmap,
        )
        outputs.append(_write_output(sc, "sc", study_dir))

    # DICOM objects go to the DICOM destinations; a positive study's worklist flag
    # (HL7 ORU^R01, one message per RIS, addressed to it) to the HL7 ones.
    destinations = [
        d.name for d in runtime.settings.destinations if not isinstance(d, Hl7Destination)
    ]
    for output in outputs:
        output["destinations"] = destinations
    if is_flagged(finding):
        for ris in runtime.settings.destinations:
            if isinstance(ris, Hl7Destination):
                outputs.append(_write_worklist_flag(sources[0], finding, algorithm, ris, study_dir))
    with runtime.sessions.begin() as session:
        runs = RunRepository(session)
        audit = AuditLog(session)
        run = runs.get(run_id)
        for output in outputs:
            runs.add_output(
                run,
                kind=output["kind"],
                sop_class_uid=output["sop_class_uid"],
                sop_instance_uid=output["sop_instance_uid"],
                series_instance_uid=output["series_instance_uid"],
                path=output["path"],
                destinations=output.pop("destinations"),
            )
            audit.record(
                AuditEventType.OUTPUT_CREATED,
                actor="triage",
                study_instance_uid=study_instance_uid,
                sop_instance_uid=output["sop_instance_uid"],
                kind=output["kind"],
            )
    return outputs


def _write_worklist_flag(
    source: Dataset,
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    ris: Hl7Destination,
    study_dir: Path,
) -> dict[str, Any]:
    """Write the ORU^R01 for one RIS to ``<study>/hl7/<uid>.hl7``; the outbox sends it."""
    uid = generate_uid(prefix=None)  # 2.25.<uuid>: the message's key in the outputs table
    message = build_oru_r01(
        source,
        finding,
        algorithm,
        control_id=uid.rsplit(".", 1)[-1][-20:],
        sending_facility=ris.sending_facility,
        receiving_application=ris.receiving_application,
        receiving_facility=ris.receiving_facility,
    )
    path = study_dir / "hl7" / f"{uid}.hl7"
    write_durably(path, message.encode("utf-8"))
    return {
        "kind": "hl7",
        "sop_class_uid": "",
        "sop_instance_uid": uid,
        "series_instance_uid": "",
        "path": str(path.relative_to(study_dir.parent)),
        "destinations": [ris.name],
    }


def overlay_box(image: ImageFinding) -> tuple[tuple[float, float, float, float] | None, bool]:
    """The box to burn into a view's annotated SC and whether it is dotted.

    Positive views only: dotted when the fracture is suspected (high-sensitivity
    operating point), solid when likely (high-specificity point); none otherwise.
    """
    if image.level not in (FractureLevel.SUSPECTED, FractureLevel.LIKELY):
        return None, False
    return _box_tuple(image.box), image.level is FractureLevel.SUSPECTED


def _previous_reports(runtime: Runtime, study_instance_uid: str, run_id: int) -> list[Dataset]:
    """The SR of the study's previous successful run (header only), which the new SR supersedes."""
    with runtime.sessions() as session:
        previous = RunRepository(session).previous_sr_output(study_instance_uid, run_id)
        relative = previous.path if previous is not None else None
    if relative is None:
        return []
    path = runtime.output_dir / relative
    try:
        return [dcmread(path, stop_before_pixels=True)]
    except (OSError, ValueError) as error:
        logger.warning(
            "previous SR of study %s unreadable (%s): the new SR names no predecessor",
            study_instance_uid,
            type(error).__name__,
        )
        return []


@task(name="send")
def send_outputs(run_id: int) -> dict[str, int]:
    """One outbox pass over the run's deliveries; what fails transiently stays queued.

    No task retries here: the outbox retries with backoff (and across restarts),
    so a PACS that is down for an hour does not hold the flow run open.
    """
    result = current_runtime().outbox.send_due(run_id)
    return {"sent": result.sent, "failed": result.failed, "retrying": result.retrying}


# -- the flow ----------------------------------------------------------------------------


@flow(name="triage-study", log_prints=False, persist_result=False)
def triage_study(study_instance_uid: str, force: bool = False) -> TriageSummary:
    """Triage one study: two-stage model, SR and Grad-CAM SCs, sent to every destination.

    Parameters
    ----------
    study_instance_uid:
        The study to triage (its instances are in the store and the DB).
    force:
        Triage even when the study is not READY (a re-run from the CLI).
    """
    runtime = current_runtime()
    if not _claim(runtime, study_instance_uid, force):
        logger.info("study %s is not ready (or already taken); skipped", study_instance_uid)
        return TriageSummary(study_instance_uid, status="skipped")

    sources = load_study(study_instance_uid)
    if not sources:
        _finish_without_run(runtime, study_instance_uid, "no triageable instances")
        return TriageSummary(study_instance_uid, status=StudyStatus.NOT_TRIAGED.value)

    model = runtime.model()
    run_id = _start_run(runtime, study_instance_uid, model)
    work_dir = runtime.work_dir / str(run_id)
    try:
        preprocessed = preprocess_images(sources, str(work_dir))
        if not preprocessed["sources"]:
            raise ValueError("no view of the study could be decoded")
        regions = classify_regions(preprocessed["inputs_path"])
        fractures = classify_fractures(preprocessed["inputs_path"], regions)
        explanation = explain(preprocessed["inputs_path"], regions, str(work_dir))
        finding = decide(
            study_instance_uid,
            [s["sop_instance_uid"] for s in preprocessed["sources"]],
            regions,
            fractures,
            explanation["boxes"],
            [_geometry_from_dict(g) for g in preprocessed["geometries"]],
            model,
            runtime.settings,
        )
        _record_results(runtime, run_id, finding)
        outputs = build_outputs(study_instance_uid, run_id, preprocessed, finding, explanation)
    except Exception as error:
        _fail_run(runtime, study_instance_uid, run_id, error)
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    undelivered = 0
    if runtime.settings.destinations:
        sent = send_outputs(run_id)
        undelivered = sent["failed"] + sent["retrying"]
    _finish_run(runtime, study_instance_uid, run_id, finding, model)
    return TriageSummary(
        study_instance_uid,
        status=StudyStatus.TRIAGED.value,
        run_id=run_id,
        region=finding.region,
        fracture_probability=finding.fracture_probability,
        level=finding.level.value if finding.level else None,
        outputs=tuple(o["path"] for o in outputs),
        undelivered=undelivered,
    )


# -- pure decision logic -----------------------------------------------------------------


def decide(
    study_instance_uid: str,
    sop_instance_uids: Sequence[str],
    regions: Sequence[dict[str, Any]],
    fractures: Sequence[float | None],
    boxes: Sequence[Sequence[float] | None],
    geometries: Sequence[Geometry],
    model: HierarchicalModel,
    settings: Settings,
) -> StudyFinding:
    """Turn per-view model outputs into the study finding, with the bundle's operating points."""
    images = []
    for uid, region, probability, box, geometry in zip(
        sop_instance_uids, regions, fractures, boxes, geometries, strict=True
    ):
        name = region["region"]
        if name is None or probability is None:
            images.append(ImageFinding(uid, None, float(region["region_probability"])))
            continue
        thresholds = thresholds_for(model, name, settings)
        source_box = BoundingBox(*geometry.box_to_source(*box)) if box is not None else None
        images.append(
            ImageFinding(
                uid,
                name,
                float(region["region_probability"]),
                float(probability),
                thresholds.level(float(probability)),
                source_box,
            )
        )

    region = study_region([image.region for image in images])
    if region is None:
        thresholds = thresholds_for(model, REGIONS[0], settings)
        return StudyFinding(study_instance_uid, None, None, None, thresholds, tuple(images))
    thresholds = thresholds_for(model, region, settings)
    probability = aggregate_study(
        [
            i.fracture_probability
            for i in images
            if i.region == region and i.fracture_probability is not None
        ],
        model.metadata.study_aggregation,
    )
    return StudyFinding(
        study_instance_uid,
        region,
        probability,
        thresholds.level(probability),
        thresholds,
        tuple(images),
    )


def thresholds_for(model: HierarchicalModel, region: str, settings: Settings) -> Thresholds:
    """The bundle's operating points for ``region``, unless the site overrides them."""
    suspected, likely = model.thresholds_for(region)
    if settings.fracture_suspected_threshold is not None:
        suspected = settings.fracture_suspected_threshold
    if settings.fracture_likely_threshold is not None:
        likely = settings.fracture_likely_threshold
    return Thresholds(suspected, max(likely, suspected))


def algorithm_identity(model: HierarchicalModel) -> AlgorithmIdentity:
    metadata = model.metadata
    return AlgorithmIdentity(
        name=metadata.name,
        version=metadata.version,
        trained_on_synthetic_data=metadata.trained_on_synthetic_data,
    )


# -- DB bookkeeping (small helpers of the flow, each one transaction) ---------------------


def _claim(runtime: Runtime, study_instance_uid: str, force: bool) -> bool:
    with runtime.sessions.begin() as session:
        studies = StudyRepository(session)
        if studies.claim_for_triage(study_instance_uid):
            return True
        return force and studies.claim_forced(study_instance_uid)


def _start_run(runtime: Runtime, study_instance_uid: str, model: HierarchicalModel) -> int:
    flow_run_id = flow_run.get_id()
    with runtime.sessions.begin() as session:
        run = RunRepository(session).start(
            study_instance_uid,
            model_name=model.metadata.name,
            model_version=model.metadata.version,
            flow_run_id=str(flow_run_id) if flow_run_id else None,
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_STARTED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run.id,
            model_name=model.metadata.name,
            model_version=model.metadata.version,
        )
        return run.id


def _record_results(runtime: Runtime, run_id: int, finding: StudyFinding) -> None:
    with runtime.sessions.begin() as session:
        runs = RunRepository(session)
        runs.record_results(
            runs.get(run_id),
            images=[
                ImageResultRow(
                    i.sop_instance_uid,
                    i.region,
                    i.region_probability,
                    i.fracture_probability,
                    i.level.value if i.level else None,
                )
                for i in finding.images
            ],
            region=finding.region,
            fracture_probability=finding.fracture_probability,
            level=finding.level.value if finding.level else None,
            threshold_suspected=finding.thresholds.suspected,
            threshold_likely=finding.thresholds.likely,
        )


def _finish_run(
    runtime: Runtime,
    study_instance_uid: str,
    run_id: int,
    finding: StudyFinding,
    model: HierarchicalModel,
) -> None:
    with runtime.sessions.begin() as session:
        runs = RunRepository(session)
        runs.finish(runs.get(run_id), RunStatus.SUCCEEDED)
        # A study reopened by a late instance stays RECEIVING and is triaged again.
        StudyRepository(session).set_status(
            study_instance_uid, StudyStatus.TRIAGED, only_from=StudyStatus.TRIAGING
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_FINISHED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run_id,
            model_name=model.metadata.name,
            model_version=model.metadata.version,
            region=finding.region,
            level=finding.level.value if finding.level else None,
        )


def _fail_run(runtime: Runtime, study_instance_uid: str, run_id: int, error: Exception) -> None:
    reason = f"{type(error).__name__}: {str(error)[:300]}"
    logger.error("triage of study %s failed: %s", study_instance_uid, type(error).__name__)
    with runtime.sessions.begin() as session:
        runs = RunRepository(session)
        runs.finish(runs.get(run_id), RunStatus.FAILED, reason)
        StudyRepository(session).set_status(
            study_instance_uid, StudyStatus.FAILED, only_from=StudyStatus.TRIAGING
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_FAILED,
            Outcome.FAILURE,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run_id,
            reason=reason,
        )


def _finish_without_run(runtime: Runtime, study_instance_uid: str, reason: str) -> None:
    with runtime.sessions.begin() as session:
        StudyRepository(session).set_status(
            study_instance_uid, StudyStatus.NOT_TRIAGED, only_from=StudyStatus.TRIAGING
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_SKIPPED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            reason=reason,
        )


# -- small conversions --------------------------------------------------------------------


def _write_output(dataset: Dataset, kind: str, study_dir: Path) -> dict[str, str]:
    path = study_dir / dataset.SeriesInstanceUID / f"{dataset.SOPInstanceUID}.dcm"
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_durably(path, buffer.getbuffer())
    return {
        "kind": kind,
        "sop_class_uid": str(dataset.SOPClassUID),
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "series_instance_uid": str(dataset.SeriesInstanceUID),
        "path": str(path.relative_to(study_dir.parent)),
    }


def _geometry_to_dict(geometry: Geometry) -> dict[str, Any]:
    return asdict(geometry)


def _geometry_from_dict(values: dict[str, Any]) -> Geometry:
    return Geometry(**values)


def _box_tuple(box: BoundingBox | None) -> tuple[float, float, float, float] | None:
    if box is None:
        return None
    return (box.row_min, box.col_min, box.row_max, box.col_max)
