"""Assembling a run's result objects: pixels from the models, objects from dicom_node.outputs.

The output profile (``settings.outputs.routes``) says which kinds of object a study
gets and where each goes; :func:`assemble` builds each with its ``dicom_node.outputs``
builder, writes it durably under ``output_dir/<study>/<series>/<sop>.dcm`` and
returns :class:`~flows.triage.payloads.WrittenOutput` values (with their destinations)
for the caller to record in one transaction. The source headers are repaired once
(:func:`~dicom_node.outputs.sources.repaired_headers`: broken values written empty);
:attr:`Assembled.repaired_attributes` names what was repaired, by keyword only, for
the audit. Pixel work that needs the models (the source rendered as a viewer shows
it, the heatmap resampled to the source grid) happens here, in the flows layer, so
``dicom_node`` never imports torch.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from config.domain.findings import AlgorithmIdentity, ImageFinding, StudyFinding
from config.domain.vocabulary import OutputKind
from config.settings import Hl7Destination, OutputSettings, Settings
from db.repositories import WrittenOutput
from dicom_node.hl7.oru import build_oru_r01
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.parametric_map import (
    UndefinedGeometryError,
    build_heatmap_parametric_map,
)
from dicom_node.outputs.presentation_state import build_triage_gsps
from dicom_node.outputs.rejection_note import build_rejection_note
from dicom_node.outputs.secondary_capture import (
    LOSSLESS_TRANSFER_SYNTAXES,
    build_annotated_view,
)
from dicom_node.outputs.sources import repaired_headers
from dicom_node.outputs.sr import build_triage_sr
from dicom_node.outputs.summary import build_summary_secondary_capture
from dicom_node.store import write_durably
from models.runtime.preprocessing import Geometry, display_image_from_dataset

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002  # annotated views with the heatmap
SUMMARY_SERIES_NUMBER = 9003
GSPS_SERIES_NUMBER = 9004
PM_SERIES_NUMBER = 9005
PLAIN_SC_SERIES_NUMBER = 9006  # annotated views without a heatmap
REJECTION_NOTE_SERIES_NUMBER = 9009


@dataclass(frozen=True)
class StudyRun:
    """What every output of one study's run shares."""

    run_id: int
    finding: StudyFinding
    sources: tuple[Dataset, ...]  # each image's dataset, in the finding's order
    algorithm: AlgorithmIdentity
    study_dir: Path  # output_dir / study UID
    created: datetime.datetime = field(default_factory=datetime.datetime.now)  # local, as DICOM
    calling_ae_title: str | None = None  # who sent the study (output routes may select on it)
    intended_use: str | None = None  # the bundle's statement, printed on the summary

    @property
    def study_instance_uid(self) -> str:
        return self.finding.study_instance_uid


@dataclass
class Assembled:
    """The objects written for a run, the views whose Parametric Map could not be made,
    and the keywords of source header attributes written empty (never their values)."""

    outputs: list[WrittenOutput] = field(default_factory=list)
    maps_not_made: list[tuple[str, str]] = field(default_factory=list)  # (SOP UID, reason)
    repaired_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ViewPixels:
    """How a decoded view was fitted into the model input, and its Grad-CAM map there."""

    geometry: Geometry
    cam: np.ndarray | None  # model-input pixels; None where the view was not explained


Plan = dict[OutputKind, tuple[str, ...]]  # kind -> destination names (may be empty)


def output_plan(run: StudyRun, settings: Settings) -> Plan:
    """Which kinds the study gets and where each goes, by the output profile's routes."""
    dicom = tuple(d.name for d in settings.destinations if not isinstance(d, Hl7Destination))
    modalities = {str(ds.get("Modality") or "") for ds in run.sources}
    plan: Plan = {}
    for route in settings.outputs.routes:
        if not route.selects(
            assessed=run.finding.assessed,
            positive=run.finding.is_positive,
            calling_ae_title=run.calling_ae_title,
            modalities=modalities,
        ):
            continue
        for kind in filter(settings.outputs.switched_on, route.kinds):
            names = plan.get(kind, ()) + (route.destinations or dicom)
            plan[kind] = tuple(dict.fromkeys(names))
    return plan


def write_output(
    dataset: Dataset, kind: OutputKind, study_dir: Path, destinations: Sequence[str] = ()
) -> WrittenOutput:
    """Write a DICOM object durably under the study's folder; name it for the records."""
    path = study_dir / dataset.SeriesInstanceUID / f"{dataset.SOPInstanceUID}.dcm"
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_durably(path, buffer.getbuffer())
    return WrittenOutput(
        kind=kind,
        sop_instance_uid=str(dataset.SOPInstanceUID),
        path=str(path.relative_to(study_dir.parent)),
        sop_class_uid=str(dataset.SOPClassUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        destinations=tuple(destinations),
    )


def assemble(
    run: StudyRun,
    pixels: Mapping[str, ViewPixels],
    settings: Settings,
    previous_report: Dataset | None,
    superseded: Sequence[Dataset],
) -> Assembled:
    """Build and write every object the output profile gives this study.

    ``pixels`` holds the decoded views by SOP Instance UID; ``superseded`` the previous
    run's objects that a rejection note withdraws (sent to every DICOM destination).
    """
    headers, repaired = repaired_headers(run.sources)
    if repaired:
        logger.info(
            "study %s: source attributes written empty: %s",
            run.study_instance_uid,
            ", ".join(repaired),
        )
    plan = output_plan(run, settings)
    done = Assembled(repaired_attributes=repaired)
    study_wide = {
        OutputKind.SR: lambda: structured_report(run, headers, settings.outputs, previous_report),
        OutputKind.SUMMARY: lambda: summary(run, headers, settings.outputs),
        OutputKind.GSPS: lambda: presentation_state(run, headers),
    }
    for kind, build in study_wide.items():
        if kind in plan:
            done.outputs.append(write_output(build(), kind, run.study_dir, plan[kind]))
    _per_view_outputs(run, headers, pixels, settings.outputs, plan, done)
    if superseded:
        dicom = [d.name for d in settings.destinations if not isinstance(d, Hl7Destination)]
        note = rejection_note(run, superseded)
        done.outputs.append(write_output(note, OutputKind.REJECTION_NOTE, run.study_dir, dicom))
    if run.finding.is_positive:
        done.outputs += [
            worklist_flag(run, headers[0], ris)
            for ris in settings.destinations
            if isinstance(ris, Hl7Destination)
        ]
    return done


class _Series:
    """New series made on first use: one per key, instances numbered from 1."""

    def __init__(self, created: datetime.datetime) -> None:
        self._created = created
        self._last: dict[int, NewInstance] = {}

    def next(self, series_number: int) -> NewInstance:
        last = self._last.get(series_number)
        instance = (
            last.next_in_series()
            if last is not None
            else NewInstance.new_series(series_number, self._created)
        )
        self._last[series_number] = instance
        return instance


def _per_view_outputs(
    run: StudyRun,
    headers: Sequence[Dataset],
    pixels: Mapping[str, ViewPixels],
    switches: OutputSettings,
    plan: Plan,
    done: Assembled,
) -> None:
    """Annotated copies (positive views; negatives only as plain copies if asked) and the
    Parametric Maps of positive views. Views not assessed get neither."""
    series = _Series(run.created)
    for source, header, image in _assessed_views(run, headers, pixels):
        view = pixels[image.sop_instance_uid]
        heatmap = None
        if image.is_positive and view.cam is not None:
            heatmap = view.geometry.map_to_source(view.cam)  # the source's grid
        if OutputKind.ANNOTATED in plan and (
            image.is_positive or switches.negative_views == "plain"
        ):
            cam = heatmap if switches.heatmap else None
            number = SC_SERIES_NUMBER if cam is not None else PLAIN_SC_SERIES_NUMBER
            sc = annotated_view(run, source, header, image, cam, series.next(number), switches)
            done.outputs.append(
                write_output(sc, OutputKind.ANNOTATED, run.study_dir, plan[OutputKind.ANNOTATED])
            )
        if OutputKind.PARAMETRIC_MAP in plan and heatmap is not None:
            try:
                pm = build_heatmap_parametric_map(
                    header, heatmap, image, run.algorithm, series.next(PM_SERIES_NUMBER)
                )
            except UndefinedGeometryError as error:
                # The view's other outputs stand; the missing map is logged and audited.
                logger.warning(
                    "no Parametric Map for SOP Instance %s: %s", image.sop_instance_uid, error
                )
                done.maps_not_made.append((image.sop_instance_uid, str(error)))
                continue
            kind = OutputKind.PARAMETRIC_MAP
            done.outputs.append(write_output(pm, kind, run.study_dir, plan[kind]))


def _assessed_views(
    run: StudyRun, headers: Sequence[Dataset], pixels: Mapping[str, ViewPixels]
) -> Iterator[tuple[Dataset, Dataset, ImageFinding]]:
    """(source with pixels, repaired header, finding) of each assessed, decoded view."""
    for source, header, image in zip(run.sources, headers, run.finding.images, strict=True):
        if image.assessed and image.sop_instance_uid in pixels:
            yield source, header, image


def structured_report(
    run: StudyRun,
    headers: Sequence[Dataset],
    switches: OutputSettings,
    previous_report: Dataset | None,
) -> Dataset:
    return build_triage_sr(
        headers,
        run.finding,
        run.algorithm,
        NewInstance.new_series(SR_SERIES_NUMBER, run.created),
        include_rois=switches.sr_rois,
        previous_versions=[previous_report] if previous_report is not None else [],
    )


def summary(run: StudyRun, headers: Sequence[Dataset], switches: OutputSettings) -> Dataset:
    return build_summary_secondary_capture(
        headers,
        run.finding,
        run.algorithm,
        NewInstance.new_series(SUMMARY_SERIES_NUMBER, run.created),
        intended_use=run.intended_use,
        transfer_syntax_uid=LOSSLESS_TRANSFER_SYNTAXES[switches.compression],
    )


def presentation_state(run: StudyRun, headers: Sequence[Dataset]) -> Dataset:
    return build_triage_gsps(
        headers,
        run.finding,
        run.algorithm,
        NewInstance.new_series(GSPS_SERIES_NUMBER, run.created),
    )


def annotated_view(
    run: StudyRun,
    source: Dataset,
    header: Dataset,
    image: ImageFinding,
    cam: np.ndarray | None,
    instance: NewInstance,
    switches: OutputSettings,
) -> Dataset:
    """The annotated copy of one view: the source as its VOI renders it (bone looks like
    bone), the result band above, box and heatmap on positive views."""
    return build_annotated_view(
        header,
        display_image_from_dataset(source),
        image,
        run.algorithm,
        instance,
        cam=cam,
        transfer_syntax_uid=LOSSLESS_TRANSFER_SYNTAXES[switches.compression],
    )


def rejection_note(run: StudyRun, superseded: Sequence[Dataset]) -> Dataset:
    """The IOCM rejection note (KOS) withdrawing the previous run's DICOM objects.

    An IOCM-aware PACS hides what it names, any other shows the note beside the new
    results.
    """
    return build_rejection_note(
        superseded,
        run.algorithm,
        NewInstance.new_series(REJECTION_NOTE_SERIES_NUMBER, run.created),
        reason=(
            f"Superseded by {run.algorithm.name} {run.algorithm.version} (triage run {run.run_id})"
        ),
    )


def worklist_flag(run: StudyRun, header: Dataset, ris: Hl7Destination) -> WrittenOutput:
    """Write the ORU^R01 for one RIS to ``<study>/hl7/<uid>.hl7``; the outbox sends it."""
    uid = generate_uid(prefix=None)  # 2.25.<uuid>: the message's key in the outputs table
    message = build_oru_r01(
        header,
        run.finding,
        run.algorithm,
        control_id=uid.rsplit(".", 1)[-1][-20:],
        sending_facility=ris.sending_facility,
        receiving_application=ris.receiving_application,
        receiving_facility=ris.receiving_facility,
    )
    path = run.study_dir / "hl7" / f"{uid}.hl7"
    write_durably(path, message.encode("utf-8"))
    return WrittenOutput(
        kind=OutputKind.WORKLIST_FLAG,
        sop_instance_uid=uid,
        path=str(path.relative_to(run.study_dir.parent)),
        destinations=(ris.name,),
    )


def read_headers(output_dir: Path, paths: Sequence[tuple[str, str]]) -> list[Dataset]:
    """Headers of earlier outputs by (SOP Instance UID, relative path); unreadable ones skipped.

    Never withdraw or supersede what cannot be named exactly; the audit trail still tells.
    """
    headers = []
    for uid, relative in paths:
        try:
            headers.append(dcmread(output_dir / relative, stop_before_pixels=True))
        except (OSError, ValueError) as error:
            logger.warning("earlier output %s unreadable (%s)", uid, type(error).__name__)
    return headers
