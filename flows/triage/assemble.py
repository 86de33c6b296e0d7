"""Assembling a run's result objects: pixels from the models, objects from dicom_node.outputs.

One function per output kind. Each builds its object with the ``dicom_node.outputs``
builder, writes it durably under ``output_dir/<study>/<series>/<sop>.dcm`` and returns
a :class:`~flows.triage.payloads.WrittenOutput`; the caller records them all in one
transaction. Pixel work that needs the models (the source rendered as a viewer shows
it, the heatmap resampled to the source grid) happens here, in the flows layer, so
``dicom_node`` never imports torch.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from config.domain.findings import AlgorithmIdentity, ImageFinding, StudyFinding
from config.domain.vocabulary import FractureLevel, OutputKind
from config.settings import Hl7Destination, OutputSettings, Settings
from dicom_node.hl7.oru import build_oru_r01
from dicom_node.outputs.parametric_map import (
    UndefinedGeometryError,
    build_heatmap_parametric_map,
)
from dicom_node.outputs.presentation_state import build_triage_gsps
from dicom_node.outputs.rejection_note import build_rejection_note
from dicom_node.outputs.secondary_capture import build_overlay_secondary_capture
from dicom_node.outputs.sr import build_triage_sr
from dicom_node.outputs.summary import build_summary_secondary_capture
from dicom_node.store import write_durably
from flows.triage.payloads import WrittenOutput
from models.runtime.overlay import render_overlay
from models.runtime.preprocessing import Geometry, display_image_from_dataset

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002
SUMMARY_SERIES_NUMBER = 9003
GSPS_SERIES_NUMBER = 9004
PM_SERIES_NUMBER = 9005
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

    @property
    def study_instance_uid(self) -> str:
        return self.finding.study_instance_uid


@dataclass
class Assembled:
    """The objects written for a run, and the views whose Parametric Map could not be made."""

    outputs: list[WrittenOutput] = field(default_factory=list)
    maps_not_made: list[tuple[str, str]] = field(default_factory=list)  # (SOP UID, reason)


def write_output(dataset: Dataset, kind: OutputKind, study_dir: Path) -> WrittenOutput:
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
    )


@dataclass(frozen=True)
class ViewPixels:
    """How a decoded view was fitted into the model input, and its Grad-CAM map there."""

    geometry: Geometry
    cam: np.ndarray | None  # model-input pixels; None where the view was not explained


def assemble(
    run: StudyRun,
    pixels: Mapping[str, ViewPixels],
    settings: Settings,
    previous_report: Dataset | None,
    superseded: Sequence[Dataset],
) -> Assembled:
    """Build and write every object the site switched on for one study's run.

    ``pixels`` holds the decoded views by SOP Instance UID; ``superseded`` the previous
    run's objects that a rejection note withdraws.
    """
    switches = settings.outputs
    done = Assembled()
    if switches.sr:
        done.outputs.append(structured_report(run, switches.sr_rois, previous_report))
    if switches.summary:
        done.outputs.append(summary(run))
    if switches.gsps:
        done.outputs.append(presentation_state(run))
    _per_view_outputs(run, pixels, switches, done)
    if superseded:
        done.outputs.append(rejection_note(run, superseded))
    dicom_destinations = tuple(
        d.name for d in settings.destinations if not isinstance(d, Hl7Destination)
    )
    done.outputs = [replace(output, destinations=dicom_destinations) for output in done.outputs]
    if run.finding.is_positive:
        done.outputs += [
            worklist_flag(run, ris)
            for ris in settings.destinations
            if isinstance(ris, Hl7Destination)
        ]
    return done


def _per_view_outputs(
    run: StudyRun, pixels: Mapping[str, ViewPixels], switches: OutputSettings, done: Assembled
) -> None:
    """The annotated copy and the Parametric Map of each assessed view (one series each)."""
    sc_series, pm_series = generate_uid(), generate_uid()
    assessed = [
        (source, image)
        for source, image in zip(run.sources, run.finding.images, strict=True)
        if image.assessed and image.sop_instance_uid in pixels
    ]
    for number, (source, image) in enumerate(assessed, start=1):
        view = pixels[image.sop_instance_uid]
        # The heatmap on the source's grid (models resample it; dicom_node only wraps it).
        heatmap = None
        if view.cam is not None and (switches.heatmap or switches.parametric_map):
            heatmap = view.geometry.map_to_source(view.cam)
        if switches.annotated:
            shown = heatmap if switches.heatmap else None
            done.outputs.append(annotated_view(run, source, image, shown, sc_series, number))
        if switches.parametric_map and heatmap is not None:
            try:
                done.outputs.append(parametric_map(run, source, image, heatmap, pm_series, number))
            except UndefinedGeometryError as error:
                # The view's other outputs stand; the missing map is logged and audited.
                logger.warning(
                    "no Parametric Map for SOP Instance %s: %s", image.sop_instance_uid, error
                )
                done.maps_not_made.append((image.sop_instance_uid, str(error)))


def structured_report(run: StudyRun, rois: bool, previous_report: Dataset | None) -> WrittenOutput:
    sr = build_triage_sr(
        run.sources,
        run.finding,
        run.algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        instance_number=1,
        include_rois=rois,
        previous_versions=[previous_report] if previous_report is not None else [],
        series_created=run.created,
    )
    return write_output(sr, OutputKind.SR, run.study_dir)


def summary(run: StudyRun) -> WrittenOutput:
    page = build_summary_secondary_capture(
        run.sources,
        run.finding,
        run.algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=SUMMARY_SERIES_NUMBER,
        instance_number=1,
        series_created=run.created,
    )
    return write_output(page, OutputKind.SUMMARY, run.study_dir)


def presentation_state(run: StudyRun) -> WrittenOutput:
    gsps = build_triage_gsps(
        run.sources,
        run.finding,
        run.algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=GSPS_SERIES_NUMBER,
        instance_number=1,
        series_created=run.created,
    )
    return write_output(gsps, OutputKind.GSPS, run.study_dir)


def overlay_box(image: ImageFinding) -> tuple[tuple[float, float, float, float] | None, bool]:
    """The box to burn into a view's annotated copy and whether it is dotted.

    Positive views only: dotted when a fracture is suspected (high-sensitivity
    operating point), solid when likely (high-specificity point); none otherwise.
    """
    if not image.is_positive or image.box is None:
        return None, False
    return image.box.as_tuple(), image.level is FractureLevel.SUSPECTED


def annotated_view(
    run: StudyRun,
    source: Dataset,
    image: ImageFinding,
    heatmap: np.ndarray | None,
    series_instance_uid: str,
    number: int,
) -> WrittenOutput:
    box, dotted = overlay_box(image)
    # The source as its VOI renders it: bone looks like bone.
    overlay = render_overlay(display_image_from_dataset(source), heatmap, box, dotted=dotted)
    sc = build_overlay_secondary_capture(
        source,
        overlay,
        image,
        run.algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=generate_uid(),
        series_number=SC_SERIES_NUMBER,
        instance_number=number,
        heatmap=heatmap is not None,
        series_created=run.created,
    )
    return write_output(sc, OutputKind.ANNOTATED, run.study_dir)


def parametric_map(
    run: StudyRun,
    source: Dataset,
    image: ImageFinding,
    heatmap: np.ndarray,
    series_instance_uid: str,
    number: int,
) -> WrittenOutput:
    pm = build_heatmap_parametric_map(
        source,
        heatmap,
        image,
        run.algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=generate_uid(),
        series_number=PM_SERIES_NUMBER,
        instance_number=number,
        series_created=run.created,
    )
    return write_output(pm, OutputKind.PARAMETRIC_MAP, run.study_dir)


def rejection_note(run: StudyRun, superseded: Sequence[Dataset]) -> WrittenOutput:
    """The IOCM rejection note (KOS) withdrawing the previous run's DICOM objects.

    It goes to the DICOM destinations like every other output; an IOCM-aware PACS
    hides what it names, any other shows the note beside the new results.
    """
    note = build_rejection_note(
        superseded,
        run.algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=REJECTION_NOTE_SERIES_NUMBER,
        instance_number=1,
        reason=(
            f"Superseded by {run.algorithm.name} {run.algorithm.version} (triage run {run.run_id})"
        ),
        series_created=run.created,
    )
    return write_output(note, OutputKind.REJECTION_NOTE, run.study_dir)


def worklist_flag(run: StudyRun, ris: Hl7Destination) -> WrittenOutput:
    """Write the ORU^R01 for one RIS to ``<study>/hl7/<uid>.hl7``; the outbox sends it."""
    uid = generate_uid(prefix=None)  # 2.25.<uuid>: the message's key in the outputs table
    message = build_oru_r01(
        run.sources[0],
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
