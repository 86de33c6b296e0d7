"""The ``triage_study`` flow: load, preprocess, region, fracture, Grad-CAM, outputs, send, record.

Tasks pass UIDs, paths and numbers between them, never pixel arrays or patient
data: tensors go through files in a per-run work directory, so Prefect's state
(and its database) holds nothing a hospital would call PHI.
"""

from __future__ import annotations

import datetime
import hashlib
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
from config.domain.decision import aggregate_study, study_region
from config.domain.findings import (
    AlgorithmIdentity,
    BoundingBox,
    ImageFinding,
    StudyFinding,
    Thresholds,
)
from config.settings import Hl7Destination
from db.audit import AuditEventType, AuditLog, Outcome
from db.models import RunStatus, StudyStatus
from db.repositories import ImageResultRow, RunRepository, StudyRepository
from dicom_node.hl7.oru import build_oru_r01, is_flagged
from dicom_node.outputs.parametric_map import UndefinedGeometryError, build_heatmap_parametric_map
from dicom_node.outputs.presentation_state import build_triage_gsps
from dicom_node.outputs.rejection_note import build_rejection_note
from dicom_node.outputs.secondary_capture import build_overlay_secondary_capture
from dicom_node.outputs.sr import build_triage_sr, device_observer_uid
from dicom_node.outputs.summary import build_summary_secondary_capture
from dicom_node.store import make_private_dirs, write_durably
from flows.runtime import Runtime, current_runtime
from models.runtime.inference import HierarchicalModel
from models.runtime.overlay import render_overlay
from models.runtime.preprocessing import Geometry, display_image_from_dataset, preprocess_dicom_file

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002
SUMMARY_SERIES_NUMBER = 9003
GSPS_SERIES_NUMBER = 9004
PM_SERIES_NUMBER = 9005
REJECTION_NOTE_SERIES_NUMBER = 9009

#: Output kinds that are not DICOM objects in the study (never named by a rejection note).
NOT_REJECTABLE_KINDS = frozenset({"hl7", "kos"})


#: Status of a triage that found the same instances already triaged by the same model.
UNCHANGED = "unchanged"


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


@task(name="load-studies")
def load_studies(study_instance_uids: list[str]) -> dict[str, list[dict[str, str]]]:
    """Each study's triageable instances (CR/DX, not our own outputs): UID, hash and path."""
    runtime = current_runtime()
    with runtime.sessions() as session:
        runs = RunRepository(session)
        studies = StudyRepository(session)
        return {
            uid: [
                {
                    "sop_instance_uid": instance.sop_instance_uid,
                    "sha256": instance.sha256,
                    "path": str(runtime.store.absolute(instance.path)),
                }
                for instance in studies.instances(uid, triageable_only=True)
                if not runs.is_our_output(instance.sop_instance_uid)
            ]
            for uid in study_instance_uids
        }


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
    make_private_dirs(inputs_path.parent)  # the tensors are pixel data: owner-only
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
def classify_fractures(
    inputs_path: str, regions: list[dict[str, Any]], work_dir: str
) -> dict[str, Any]:
    """Stage 2 with its Grad-CAM in one pass: probabilities, map file, hottest boxes.

    Boxes are in model-input coordinates; the maps go to a file (no arrays through Prefect).
    """
    images = np.load(inputs_path)
    fractures, explanations = (
        current_runtime().model().classify_and_explain(images, [r["region"] for r in regions])
    )
    size = images.shape[-1]
    cams = np.stack(
        [cam if cam is not None else np.zeros((size, size), np.float32) for cam, _ in explanations]
    )
    cams_path = Path(work_dir) / "cams.npy"
    np.save(cams_path, cams)
    return {
        "fractures": fractures,
        "cams_path": str(cams_path),
        "boxes": [box for _, box in explanations],
    }


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
    optional), one GSPS over the original views and one Parametric Map of the
    Grad-CAM heatmap per assessed view. Every run writes new series, dated now.
    A re-run adds the IOCM rejection note withdrawing the previous run's objects.
    """
    runtime = current_runtime()
    switches = runtime.settings.outputs
    model = runtime.model()
    algorithm = algorithm_identity(model)
    sources = [dcmread(s["path"]) for s in preprocessed["sources"]]
    cams = np.load(explanation["cams_path"])
    study_dir = runtime.output_dir / study_instance_uid
    created = datetime.datetime.now()  # local time, like DICOM dates: every series' date

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
            series_created=created,
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
            series_created=created,
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
            series_created=created,
        )
        outputs.append(_write_output(gsps, "gsps", study_dir))

    sc_series_uid, pm_series_uid = generate_uid(), generate_uid()
    refused: list[tuple[str, str]] = []  # (SOP Instance UID, reason) of maps not made
    for number, (source, image, geometry, cam) in enumerate(
        zip(sources, finding.images, preprocessed["geometries"], cams, strict=True), start=1
    ):
        # The heatmap on the source's grid (models resample it; dicom_node only wraps it).
        cam_source = None
        if image.region is not None and (switches.heatmap or switches.parametric_map):
            cam_source = _geometry_from_dict(geometry).map_to_source(cam)
        if switches.annotated:
            box, dotted = overlay_box(image)
            overlay = render_overlay(
                display_image_from_dataset(source),  # the source's VOI: bone looks like bone
                cam_source if switches.heatmap else None,
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
                series_created=created,
            )
            outputs.append(_write_output(sc, "sc", study_dir))
        if switches.parametric_map and cam_source is not None:
            try:
                pm = build_heatmap_parametric_map(
                    source,
                    cam_source,
                    image,
                    algorithm,
                    series_instance_uid=pm_series_uid,
                    sop_instance_uid=generate_uid(),
                    series_number=PM_SERIES_NUMBER,
                    instance_number=number,
                    series_created=created,
                )
            except UndefinedGeometryError as error:
                # The other outputs of the view stand; the missing map is logged and audited.
                logger.warning(
                    "no Parametric Map for SOP Instance %s: %s", image.sop_instance_uid, error
                )
                refused.append((image.sop_instance_uid, str(error)))
            else:
                outputs.append(_write_output(pm, "pm", study_dir))

    # DICOM objects go to the DICOM destinations; a positive study's worklist flag
    # (HL7 ORU^R01, one message per RIS, addressed to it) to the HL7 ones.
    note = _rejection_note(runtime, study_instance_uid, run_id, algorithm, created)
    if note is not None:
        outputs.append(note)
    destinations = _dicom_destinations(runtime.settings)
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
        for sop_instance_uid, reason in refused:
            audit.record(
                AuditEventType.OUTPUT_CREATED,
                Outcome.FAILURE,
                actor="triage",
                study_instance_uid=study_instance_uid,
                sop_instance_uid=sop_instance_uid,
                kind="pm",
                reason=reason,
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


def _rejection_note(
    runtime: Runtime,
    study_instance_uid: str,
    run_id: int,
    algorithm: AlgorithmIdentity,
    created: datetime.datetime,
) -> dict[str, Any] | None:
    """The IOCM rejection note (KOS) withdrawing the previous run's DICOM objects, if any.

    It goes to the DICOM destinations like every other output; an IOCM-aware PACS
    hides what it names, any other shows the note beside the new results.
    """
    with runtime.sessions() as session:
        superseded = [
            (o.sop_instance_uid, o.path)
            for o in RunRepository(session).previous_outputs(study_instance_uid, run_id)
            if o.kind not in NOT_REJECTABLE_KINDS
        ]
    rejected = []
    for uid, relative in superseded:
        try:
            rejected.append(dcmread(runtime.output_dir / relative, stop_before_pixels=True))
        except (OSError, ValueError) as error:
            # Never withdraw what we cannot name exactly; the audit trail still tells.
            logger.warning(
                "superseded object %s unreadable (%s): not in the rejection note",
                uid,
                type(error).__name__,
            )
    if not rejected:
        return None
    note = build_rejection_note(
        rejected,
        algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=REJECTION_NOTE_SERIES_NUMBER,
        instance_number=1,
        reason=f"Superseded by {algorithm.name} {algorithm.version} (triage run {run_id})",
        series_created=created,
    )
    return _write_output(note, "kos", runtime.output_dir / study_instance_uid)


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

    Raises
    ------
    Exception
        Whatever made the triage fail, after the run is recorded as failed.
    """
    runtime = current_runtime()
    if not _claim(runtime, study_instance_uid, force):
        logger.info("study %s is not ready (or already taken); skipped", study_instance_uid)
        return TriageSummary(study_instance_uid, status="skipped")
    (outcome,) = _triage_claimed(runtime, [study_instance_uid])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@flow(name="triage-batch", log_prints=False, persist_result=False)
def triage_batch(
    study_instance_uids: list[str] | None = None, max_studies: int | None = None
) -> list[TriageSummary]:
    """Triage several studies in one run: their views go through the models together.

    One flow run and one set of model tasks for the batch: Prefect's per-run and
    per-task overhead, and the model's per-call overhead, are shared by every
    study, and a GPU gets full batches. Each study still gets its own triage run,
    results, outputs and audit events; one study failing does not fail the others.

    Parameters
    ----------
    study_instance_uids:
        Studies to triage (each only if READY); ``None``: the READY studies, urgent
        ones first, then oldest first.
    max_studies:
        At most this many studies (default: the ``batch_max_studies`` setting).
    """
    runtime = current_runtime()
    limit = max_studies or runtime.settings.batch_max_studies
    claimed = _claim_ready(runtime, study_instance_uids, limit)
    if not claimed:
        return []
    return [
        outcome
        if isinstance(outcome, TriageSummary)
        else TriageSummary(uid, status=StudyStatus.FAILED.value)
        for uid, outcome in zip(claimed, _triage_claimed(runtime, claimed), strict=True)
    ]


def _triage_claimed(runtime: Runtime, study_uids: Sequence[str]) -> list[TriageSummary | Exception]:
    """Triage studies this process has claimed; one outcome (or the error) per study."""
    model = runtime.model()
    algorithm = algorithm_identity(model)
    outcomes: dict[str, TriageSummary | Exception] = {}
    runs: dict[str, int] = {}
    batch: list[dict[str, str]] = []
    for uid, sources in load_studies(list(study_uids)).items():
        if not sources:
            _finish_without_run(runtime, uid, "no triageable instances")
            outcomes[uid] = TriageSummary(uid, status=StudyStatus.NOT_TRIAGED.value)
            continue
        key = input_key(algorithm, sources)
        earlier = _earlier_identical_run(runtime, key)
        if earlier is not None:
            # The same instances, the same model: the result would be the same. Re-sent
            # studies and repeated reprocess requests cost nothing and leave no duplicates.
            _finish_unchanged(runtime, uid, earlier, algorithm)
            outcomes[uid] = TriageSummary(uid, status=UNCHANGED, run_id=earlier)
            continue
        runs[uid] = _start_run(runtime, uid, algorithm, key)
        batch += [{**source, "study_instance_uid": uid} for source in sources]
    if not runs:
        return [outcomes[uid] for uid in study_uids]

    work_dir = runtime.work_dir / f"batch-{min(runs.values())}"
    try:
        try:
            preprocessed = preprocess_images(batch, str(work_dir))
            regions: list[dict[str, Any]] = []
            fractures: list[float | None] = []
            boxes: list[Any] = []
            cams = np.empty((0, 0, 0), np.float32)
            if preprocessed["sources"]:  # else every study fails below: nothing decoded
                regions = classify_regions(preprocessed["inputs_path"])
                stage2 = classify_fractures(preprocessed["inputs_path"], regions, str(work_dir))
                fractures, boxes = stage2["fractures"], stage2["boxes"]
                cams = np.load(stage2["cams_path"])
        except Exception as error:  # the whole batch failed: every run says so
            for uid, run_id in runs.items():
                _fail_run(runtime, uid, run_id, error)
                outcomes[uid] = error
            return [outcomes[uid] for uid in study_uids]
        for uid, run_id in runs.items():
            views = [
                k for k, s in enumerate(preprocessed["sources"]) if s["study_instance_uid"] == uid
            ]
            try:
                outcomes[uid] = _finish_study(
                    runtime, uid, run_id, model, views, preprocessed, regions, fractures,
                    boxes, cams, work_dir,
                )  # fmt: skip
            except Exception as error:
                _fail_run(runtime, uid, run_id, error)
                outcomes[uid] = error
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return [outcomes[uid] for uid in study_uids]


def _finish_study(
    runtime: Runtime,
    study_instance_uid: str,
    run_id: int,
    model: HierarchicalModel,
    views: list[int],
    preprocessed: dict[str, Any],
    regions: list[dict[str, Any]],
    fractures: list[float | None],
    boxes: list[Any],
    cams: np.ndarray,
    work_dir: Path,
) -> TriageSummary:
    """Decide, record, build and send the outputs of one study of a batch."""
    if not views:
        raise ValueError("no view of the study could be decoded")
    mine = {
        "inputs_path": preprocessed["inputs_path"],
        "sources": [preprocessed["sources"][k] for k in views],
        "geometries": [preprocessed["geometries"][k] for k in views],
    }
    cams_path = work_dir / f"cams-{run_id}.npy"
    np.save(cams_path, cams[views])
    finding = decide(
        study_instance_uid,
        [s["sop_instance_uid"] for s in mine["sources"]],
        [regions[k] for k in views],
        [fractures[k] for k in views],
        [boxes[k] for k in views],
        [_geometry_from_dict(g) for g in mine["geometries"]],
        model,
        runtime.settings,
    )
    _record_results(runtime, run_id, finding)
    explanation = {"cams_path": str(cams_path), "boxes": [boxes[k] for k in views]}
    outputs = build_outputs(study_instance_uid, run_id, mine, finding, explanation)
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


def input_key(algorithm: AlgorithmIdentity, sources: Sequence[dict[str, str]]) -> str:
    """What makes a result: the model's identity and the exact source instances.

    SHA-256 over the model's name, version and device UID and each source's SOP
    Instance UID with the SHA-256 of its stored file, so a study re-sent unchanged
    maps to the same key while a changed instance or another model does not.
    """
    digest = hashlib.sha256()
    for part in (algorithm.name, algorithm.version, device_observer_uid(algorithm)):
        digest.update(part.encode() + b"\0")
    for uid, sha256 in sorted((s["sop_instance_uid"], s["sha256"]) for s in sources):
        digest.update(f"{uid}:{sha256}".encode() + b"\0")
    return digest.hexdigest()


# -- DB bookkeeping (small helpers of the flow, each one transaction) ---------------------


def _claim(runtime: Runtime, study_instance_uid: str, force: bool) -> bool:
    with runtime.sessions.begin() as session:
        studies = StudyRepository(session)
        if studies.claim_for_triage(study_instance_uid):
            return True
        return force and studies.claim_forced(study_instance_uid)


def _claim_ready(runtime: Runtime, study_uids: Sequence[str] | None, limit: int) -> list[str]:
    with runtime.sessions.begin() as session:
        return StudyRepository(session).claim_ready(limit, among=study_uids)


def _start_run(
    runtime: Runtime, study_instance_uid: str, algorithm: AlgorithmIdentity, key: str
) -> int:
    flow_run_id = flow_run.get_id()
    with runtime.sessions.begin() as session:
        run = RunRepository(session).start(
            study_instance_uid,
            model_name=algorithm.name,
            model_version=algorithm.version,
            input_key=key,
            flow_run_id=str(flow_run_id) if flow_run_id else None,
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_STARTED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run.id,
            model_name=algorithm.name,
            model_version=algorithm.version,
        )
        return run.id


def _earlier_identical_run(runtime: Runtime, key: str) -> int | None:
    with runtime.sessions() as session:
        run = RunRepository(session).succeeded_with_input_key(key)
        return run.id if run is not None else None


def _finish_unchanged(
    runtime: Runtime, study_instance_uid: str, earlier_run_id: int, algorithm: AlgorithmIdentity
) -> None:
    logger.info(
        "study %s: run %d already triaged these instances with %s %s; nothing to do",
        study_instance_uid,
        earlier_run_id,
        algorithm.name,
        algorithm.version,
    )
    with runtime.sessions.begin() as session:
        StudyRepository(session).set_status(
            study_instance_uid, StudyStatus.TRIAGED, only_from=StudyStatus.TRIAGING
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_SKIPPED,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=earlier_run_id,
            model_name=algorithm.name,
            model_version=algorithm.version,
            reason="unchanged: these instances were triaged by this model already",
        )


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
        run = runs.get(run_id)
        runs.finish(run, RunStatus.FAILED, reason)
        StudyRepository(session).set_status(
            study_instance_uid, StudyStatus.FAILED, only_from=StudyStatus.TRIAGING
        )
        AuditLog(session).record(
            AuditEventType.TRIAGE_FAILED,
            Outcome.FAILURE,
            actor="triage",
            study_instance_uid=study_instance_uid,
            run_id=run_id,
            model_name=run.model_name,
            model_version=run.model_version,
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


def _dicom_destinations(settings: Settings) -> list[str]:
    return [d.name for d in settings.destinations if not isinstance(d, Hl7Destination)]


def _geometry_to_dict(geometry: Geometry) -> dict[str, Any]:
    return asdict(geometry)


def _geometry_from_dict(values: dict[str, Any]) -> Geometry:
    return Geometry(**values)


def _box_tuple(box: BoundingBox | None) -> tuple[float, float, float, float] | None:
    if box is None:
        return None
    return (box.row_min, box.col_min, box.row_max, box.col_max)
