"""How a claimed batch of studies is triaged: one pass through the models, a run per study.

The views of every study go through the model tasks together (one tensor file, one
pass per network), then each study is decided, recorded, built and sent on its own:
one study failing does not fail the others, and every outcome is recorded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread

from config.domain.decision import ViewResult, decide
from config.domain.findings import (
    AlgorithmIdentity,
    BoundingBox,
    FractureType,
    Gate,
    NotAssessed,
    OperatingPoints,
    StudyFinding,
)
from config.domain.intended_use import resolve_region
from config.domain.vocabulary import BoxSource
from config.settings import Settings
from dicom_node.delivery.outbox import Backoff
from dicom_node.phi import patient_values, scrub
from flows.runtime import Runtime
from flows.triage import records
from flows.triage.errors import TriageError
from flows.triage.payloads import (
    FractureResults,
    HeaderScreen,
    PreprocessedBatch,
    RegionResult,
    SourceView,
    StudyViews,
    TriageStatus,
    TriageSummary,
)
from flows.triage.tasks import (
    build_outputs,
    classify_fractures,
    classify_regions,
    classify_types,
    detect_fractures,
    explain_fractures,
    load_studies,
    preprocess_views,
    screen_headers,
    send_outputs,
)
from models.runtime.inference import HierarchicalModel
from models.runtime.preprocessing import Geometry

logger = logging.getLogger(__name__)

Outcome = TriageSummary | TriageError


@dataclass(frozen=True)
class ModelPass:
    """What the gates and the models said about a batch (model results in the batch's order)."""

    screens: Mapping[str, HeaderScreen]  # by SOP Instance UID, every view of the batch
    batch: PreprocessedBatch  # the views the header let through, decoded
    regions: tuple[RegionResult, ...] = ()  # stage 1
    conflicts: Mapping[str, NotAssessed] = field(default_factory=dict)  # header vs stage 1
    stage2_regions: tuple[str | None, ...] = ()  # what stage 2 ran with
    fractures: FractureResults | None = None


def operating_points(model: HierarchicalModel, settings: Settings) -> dict[str, OperatingPoints]:
    """The bundle's operating points per region, with the site's overrides applied."""
    return {
        region: OperatingPoints(suspected=points.suspected, likely=points.likely).overridden(
            settings.fracture_suspected_threshold, settings.fracture_likely_threshold
        )
        for region, points in model.metadata.thresholds.items()
    }


def triage_claimed(runtime: Runtime, study_uids: Sequence[str]) -> list[Outcome]:
    """Triage studies this process has claimed; one outcome (or the error) per study."""
    algorithm = runtime.algorithm()
    outcomes: dict[str, Outcome] = {}
    runs: dict[str, int] = {}
    views: list[SourceView] = []
    for uid, study_views in load_studies(list(study_uids)).items():
        opened = _open_run(runtime, uid, study_views, algorithm)
        if isinstance(opened, TriageSummary):
            outcomes[uid] = opened
        else:
            runs[uid] = opened
            views += study_views
    if runs:
        outcomes.update(_triage_runs(runtime, runs, tuple(views), algorithm))
    return [outcomes[uid] for uid in study_uids]


def _open_run(
    runtime: Runtime, uid: str, views: tuple[SourceView, ...], algorithm: AlgorithmIdentity
) -> TriageSummary | int:
    """A new run for the study (its id), or the summary of why none is needed."""
    sessions = runtime.sessions
    if not views:
        records.finish_without_run(sessions, uid, "no triageable instances")
        return TriageSummary(uid, TriageStatus.NOT_TRIAGED)
    key = records.input_key(algorithm, views)
    earlier = records.earlier_identical_run(sessions, key)
    if earlier is not None:
        # The same instances, the same model: the result would be the same. Re-sent
        # studies and repeated reprocess requests cost nothing and leave no duplicates.
        records.finish_unchanged(sessions, uid, earlier, algorithm)
        return TriageSummary(uid, TriageStatus.UNCHANGED, run_id=earlier)
    return records.start_run(sessions, uid, algorithm, key)


def _triage_runs(
    runtime: Runtime,
    runs: Mapping[str, int],
    views: tuple[SourceView, ...],
    algorithm: AlgorithmIdentity,
) -> dict[str, Outcome]:
    work_dir = runtime.work_dir / f"batch-{min(runs.values())}"
    outcomes: dict[str, Outcome] = {}
    try:
        try:
            model_pass = _run_models(runtime, views, str(work_dir))
        except Exception as error:  # the whole batch failed: every run says so
            for uid, run_id in runs.items():
                outcomes[uid] = _fail(runtime, uid, run_id, error)
            return outcomes
        for uid, run_id in runs.items():
            try:
                study = study_views(model_pass, uid, views)
                outcomes[uid] = _finish_study(runtime, run_id, study, model_pass, algorithm)
            except Exception as error:
                outcomes[uid] = _fail(runtime, uid, run_id, error)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return outcomes


def retry_policy(settings: Settings, *, orchestration: bool = False) -> records.RetryPolicy:
    """The site's retry rule for failed triage runs; without a limit where the run never
    started because the orchestration failed (not the study's fault: it waits for Prefect)."""
    backoff = Backoff(settings.triage_retry_base_seconds, settings.triage_retry_cap_seconds)
    return records.RetryPolicy(
        None if orchestration else settings.triage_max_attempts, backoff.delay
    )


def failure_reason(runtime: Runtime, study_uid: str, error: BaseException) -> str:
    """The error's type and message, with every patient value of the study scrubbed."""
    kind = error.kind if isinstance(error, TriageError) else type(error).__name__
    detail = error.detail if isinstance(error, TriageError) else str(error)
    values = patient_values(
        _header(runtime.store.absolute(path))
        for path in records.instance_paths(runtime.sessions, study_uid)
    )
    return f"{kind}: {scrub(detail, values)}"[:300]


def _header(path: Path) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception:  # unreadable: nothing of it can be quoted either
        return Dataset()


def _fail(runtime: Runtime, study_uid: str, run_id: int, error: BaseException) -> TriageError:
    """Record the failed run (scrubbed reason, retry or FAILED); the error as flows raise it."""
    reason = failure_reason(runtime, study_uid, error)
    records.fail_run(runtime.sessions, study_uid, run_id, reason, retry_policy(runtime.settings))
    return error if isinstance(error, TriageError) else TriageError("triage", error)


def _run_models(runtime: Runtime, views: tuple[SourceView, ...], work_dir: str) -> ModelPass:
    """The header gate, then stage 1, the conflict check, stage 2: the fracture model only
    ever runs on views every gate let through, and Grad-CAM's backward pass only on the
    views whose box or heatmap an output draws (at or above "suspected")."""
    use = runtime.intended_use()
    screens = {screen.sop_instance_uid: screen for screen in screen_headers(views)}
    through = tuple(view for view in views if screens[view.sop_instance_uid].not_assessed is None)
    batch = preprocess_views(through, work_dir)
    if not batch.views:  # nothing to run the models on: each study says why
        return ModelPass(screens, batch)
    regions = classify_regions(batch.inputs_path)
    stage2: list[str | None] = []
    conflicts: dict[str, NotAssessed] = {}
    for view, region in zip(batch.views, regions, strict=True):
        header_regions = frozenset(screens[view.sop_instance_uid].regions)
        resolved, conflict = (
            resolve_region(header_regions, region.region, use) if region.region else (None, None)
        )
        stage2.append(resolved)
        if conflict is not None:
            conflicts[view.sop_instance_uid] = conflict
    probabilities = fractures_from_stage_one(regions, stage2)
    if probabilities is None:
        probabilities = classify_fractures(batch.inputs_path, tuple(stage2))
    flagged = flagged_views(runtime, stage2, probabilities)
    explanations = explain_fractures(
        batch.inputs_path, explained_regions(runtime, flagged), work_dir
    )
    wanted = tuple(r is not None for r in flagged)
    types: tuple[FractureType | None, ...] = ()
    if runtime.model().type_network is not None:
        types = classify_types(batch.inputs_path, wanted)
    boxes, detected = explanations.boxes, ()
    if runtime.model().detector is not None and boxes_drawn(runtime.settings):
        found = detect_fractures(batch.inputs_path, wanted)  # where it finds none: Grad-CAM's
        boxes = tuple(d if d is not None else g for d, g in zip(found, boxes, strict=True))
        detected = tuple(d is not None for d in found)
    fractures = FractureResults(probabilities, boxes, explanations.cams_path, types, detected)
    return ModelPass(screens, batch, regions, conflicts, tuple(stage2), fractures)


def fractures_from_stage_one(
    regions: Sequence[RegionResult], stage2: Sequence[str | None]
) -> tuple[float | None, ...] | None:
    """Stage 2's probability of each view (None without a region) where stage 1's pass
    gave every one needed (a shared-backbone bundle); None where stage 2 must run."""
    found: list[float | None] = []
    for result, region in zip(regions, stage2, strict=True):
        known = result.fracture_probabilities or {}
        if region is not None and region not in known:
            return None
        found.append(known[region] if region is not None else None)
    return tuple(found)


def explained_regions(runtime: Runtime, flagged: Sequence[str | None]) -> tuple[str | None, ...]:
    """The views Grad-CAM must explain (their region; None for the others): the flagged
    ones (:func:`flagged_views`), when an output draws a box or a heatmap."""
    if not (boxes_drawn(runtime.settings) or runtime.settings.outputs.parametric_map):
        return tuple(None for _ in flagged)
    return tuple(flagged)


def boxes_drawn(settings: Settings) -> bool:
    """Whether an output the site switched on draws a flagged view's box (the SR's ROIs,
    the annotated captures, the GSPS): the detector and Grad-CAM's box serve those only."""
    outputs = settings.outputs
    return bool((outputs.sr and outputs.sr_rois) or outputs.annotated or outputs.gsps)


def flagged_views(
    runtime: Runtime, regions: Sequence[str | None], probabilities: Sequence[float | None]
) -> tuple[str | None, ...]:
    """The views at or above their region's "suspected" point (their region; None for the
    others): where a box, a heatmap or a fracture type is said."""
    points = operating_points(runtime.model(), runtime.settings)
    return tuple(
        region if region is not None and p is not None and p >= points[region].suspected else None
        for region, p in zip(regions, probabilities, strict=True)
    )


def study_views(
    model_pass: ModelPass, study_uid: str, all_views: Sequence[SourceView]
) -> StudyViews:
    """The study's views in its stored order, with their rows in the batch (-1: not decoded)."""
    rows = {view.sop_instance_uid: k for k, view in enumerate(model_pass.batch.views)}
    mine = [view for view in all_views if view.study_instance_uid == study_uid]
    indices = tuple(rows.get(view.sop_instance_uid, -1) for view in mine)
    geometries = tuple(model_pass.batch.geometries[k] if k >= 0 else None for k in indices)
    return StudyViews(study_uid, tuple(mine), geometries, indices)


def view_results(model_pass: ModelPass, study: StudyViews) -> list[ViewResult]:
    """What the gates, the decoder and the models said about each of the study's views."""
    return [
        _view_result(model_pass, view.sop_instance_uid, geometry, k)
        for view, geometry, k in zip(study.views, study.geometries, study.indices, strict=True)
    ]


def _view_result(model_pass: ModelPass, uid: str, geometry: Geometry | None, k: int) -> ViewResult:
    stopped = model_pass.screens[uid].not_assessed
    if stopped is not None:
        return ViewResult(uid, not_assessed=stopped)
    if geometry is None or model_pass.fractures is None:
        unreadable = {u.sop_instance_uid: u.reason for u in model_pass.batch.unreadable}
        reason = unreadable.get(uid, "pixel data cannot be decoded")
        return ViewResult(uid, not_assessed=NotAssessed(Gate.UNREADABLE, reason))
    stage1 = model_pass.regions[k]
    if stage1.region is None:
        assert stage1.rejection_reason is not None  # RegionResult holds one or the other
        return ViewResult.no_region(uid, stage1.probability, stage1.rejection_reason)
    if uid in model_pass.conflicts:
        return ViewResult(
            uid, region_probability=stage1.probability, not_assessed=model_pass.conflicts[uid]
        )
    box = model_pass.fractures.boxes[k]
    types, detected = model_pass.fractures.types, model_pass.fractures.detected
    return ViewResult(
        uid,
        region=model_pass.stage2_regions[k],
        region_probability=stage1.probability,
        fracture_probability=model_pass.fractures.probabilities[k],
        box=BoundingBox(*geometry.box_to_source(*box)) if box is not None else None,
        fracture_type=types[k] if types else None,
        box_source=BoxSource.DETECTOR if detected and detected[k] else BoxSource.GRAD_CAM,
    )


def _finish_study(
    runtime: Runtime,
    run_id: int,
    study: StudyViews,
    model_pass: ModelPass,
    algorithm: AlgorithmIdentity,
) -> TriageSummary:
    """Decide, record, build and send the outputs of one study of a batch."""
    study_uid = study.study_instance_uid
    screened_out = [v for v in study.views if model_pass.screens[v.sop_instance_uid].not_assessed]
    if all(k < 0 for k in study.indices) and not screened_out:
        raise ValueError("no view of the study could be decoded")
    model = runtime.model()
    finding = decide(
        study_uid,
        view_results(model_pass, study),
        operating_points(model, runtime.settings),
        model.metadata.study_aggregation,
    )
    records.record_results(runtime.sessions, run_id, finding)
    cams_path = model_pass.fractures.cams_path if model_pass.fractures else None
    outputs = build_outputs(run_id, study, finding, cams_path)
    undelivered = 0
    if runtime.settings.destinations:
        sent = send_outputs(run_id)
        undelivered = sent.failed + sent.retrying
    records.finish_run(runtime.sessions, study_uid, run_id, finding, algorithm)
    return _summary(run_id, finding, outputs, undelivered)


def _summary(
    run_id: int, finding: StudyFinding, outputs: Sequence[object], undelivered: int
) -> TriageSummary:
    return TriageSummary(
        finding.study_instance_uid,
        TriageStatus.TRIAGED,
        run_id=run_id,
        region=finding.region,
        fracture_probability=finding.fracture_probability,
        level=finding.level.value if finding.level else None,
        outputs=tuple(getattr(o, "path", "") for o in outputs),
        undelivered=undelivered,
    )
