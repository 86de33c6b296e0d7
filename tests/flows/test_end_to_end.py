"""One study through everything: Orthanc -> node -> Prefect flow -> AI results -> Orthanc.

The AI results of a study with a fracture and of one without: the SR with a
planar ROI per positive view, the summary SC, one annotated SC per view (dotted
box: suspected, solid box: likely, none when negative), the GSPS (dashed box:
suspected, solid: likely) and a Parametric Map of the Grad-CAM heatmap per
assessed view, each series dated; one ORU^R01 per positive study. A forced
re-run supersedes the SR and writes new series.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import hl7
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from sqlalchemy import func, select

from config import Destination, Settings
from config.settings import Hl7Destination
from db.audit import AuditEventType, AuditLog
from db.models import Delivery, DeliveryStatus, RunStatus, Study, StudyStatus, TriageRun
from db.repositories import RunRepository
from dicom_node.outputs.drawing import BOX_COLOUR
from dicom_node.outputs.parametric_map import PM_SERIES_DESCRIPTION
from dicom_node.outputs.presentation_state import GSPS_SERIES_DESCRIPTION
from dicom_node.outputs.rejection_note import REJECTION_NOTE_SERIES_DESCRIPTION
from dicom_node.outputs.sr import SR_SERIES_DESCRIPTION
from dicom_node.outputs.summary import SUMMARY_SERIES_DESCRIPTION
from flows.node.service import TriageService
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import UNCHANGED, triage_study
from flows.triage.payloads import TriageSummary
from tests.flows.profiles import EVERY_OBJECT
from tests.hl7_listener import run_mllp_listener
from tests.peers import Orthanc, assert_dciodvfy_clean, free_port, run_orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection (rejection note)


def _walk(items: list[Dataset]) -> list[Dataset]:
    found = []
    for item in items:
        found.append(item)
        found.extend(_walk(item.get("ContentSequence", [])))
    return found


def box_style(rgb: np.ndarray) -> str | None:
    """'solid', 'dotted' or None: the burned-in box on an annotated SC, from its pixels.

    Box pixels are exactly BOX_COLOUR; the heatmap is blended (never pure) and the
    banner text is white or amber. The box's longest edge row tells the style.
    """
    mask = np.all(rgb == BOX_COLOUR, axis=-1)
    counts = mask.sum(axis=1)
    if counts.max() < 8:
        return None
    row = mask[int(counts.argmax())]
    columns = np.flatnonzero(row)
    fill = len(columns) / (columns.max() - columns.min() + 1)
    return "solid" if fill > 0.95 else "dotted"


POSITIVE_LEVELS = ("fracture suspected", "fracture likely")
#: The box style the annotated captures and the GSPS give each level.
STYLE_OF_LEVEL = {"fracture suspected": "dotted", "fracture likely": "solid"}


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ai_instances(orthanc: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """Orthanc instance IDs of the study's AI series, by SOP Class UID."""
    found: dict[str, list[str]] = {}
    for series in orthanc.series_of_study(study_uid):
        if not series["MainDicomTags"].get("SeriesDescription", "").startswith("AI"):
            continue
        for instance_id in series["Instances"]:
            tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
            found.setdefault(tags["SOPClassUID"], []).append(instance_id)
    return found


def check_ai_results(
    orthanc: Orthanc, runtime: Runtime, study_uid: str, files: list[Path], tmp_path: Path
) -> dict[str, str | None]:
    """Wait for a study's AI results in Orthanc and check each; return the views' levels."""
    source_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

    def results_arrived() -> dict[str, list[str]] | None:
        with runtime.sessions() as session:
            run = RunRepository(session).latest_for_study(study_uid)
            if run is None or run.status is not RunStatus.SUCCEEDED:
                return None
            assessed = sum(i.region is not None for i in run.image_results)
            positive = sum(i.level in POSITIVE_LEVELS for i in run.image_results)
        found = ai_instances(orthanc, study_uid)
        complete = (
            len(found.get(SR_CLASS, [])) == 1
            # one annotated SC per assessed view (EVERY_OBJECT: negatives too) and the summary
            and len(found.get(SC_CLASS, [])) == assessed + 1
            and len(found.get(GSPS_CLASS, [])) == 1
            # one heatmap Parametric Map per positive view
            and len(found.get(PM_CLASS, [])) == positive
        )
        return found if complete else None

    found = wait_until(results_arrived, timeout=300, what="the SR, SCs, GSPS and maps in Orthanc")

    # Every object Orthanc received passes the reference validator and is a dated AI series.
    series_dates: dict[str, tuple[str, str]] = {}
    for instance_ids in found.values():
        for instance_id in instance_ids:
            path = tmp_path / f"{instance_id}.dcm"
            path.write_bytes(orthanc.get(f"/instances/{instance_id}/file"))
            assert_dciodvfy_clean(path)
            ds = dcmread(path, stop_before_pixels=True)
            assert ds.SeriesDescription.startswith("AI")
            assert ds.SeriesDate and ds.SeriesTime
            # IHE AI Results: the algorithm is named as contributing (processing) equipment.
            algorithm = [
                e
                for e in ds.ContributingEquipmentSequence
                if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
                and e.get("ManufacturerModelName")
                and e.get("SoftwareVersions")
            ]
            assert algorithm, f"{ds.SOPClassUID}: no algorithm in Contributing Equipment"
            dated = (str(ds.SeriesDate), str(ds.SeriesTime))
            assert series_dates.setdefault(ds.SeriesInstanceUID, dated) == dated

    sr = dcmread(tmp_path / f"{found[SR_CLASS][0]}.dcm")
    assert sr.StudyInstanceUID == study_uid
    assert sr.VerificationFlag == "UNVERIFIED"
    referenced = {
        sop.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == source_uids
    assert "synthetic" in str(sr).lower()

    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(study_uid)
        assert run is not None
        levels = {i.sop_instance_uid: i.level for i in run.image_results}
        assessed = {i.sop_instance_uid for i in run.image_results if i.region is not None}
    positive = {uid for uid, level in levels.items() if level in POSITIVE_LEVELS}

    # SR: a planar ROI (SCOORD on its source image) per view: the box on a positive view,
    # the whole view on the others; each assessed view's probability inferred from it.
    scoords = [i for i in _walk(sr.ContentSequence) if i.ValueType == "SCOORD"]
    regions = [i for i in scoords if i.RelationshipType == "CONTAINS"]
    roi_images = {
        i.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID: i for i in regions
    }
    assert len(regions) == len(source_uids) and set(roi_images) == source_uids
    assert len(scoords) - len(regions) == len(assessed)  # INFERRED FROM copies
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    sizes = {str(h.SOPInstanceUID): (float(h.Columns), float(h.Rows)) for h in headers}
    for uid in positive:
        columns, rows = sizes[uid]
        whole = [[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]]
        assert np.asarray(roi_images[uid].GraphicData).reshape(-1, 2).tolist() != whole

    # Summary SC and annotated SCs with the right box style per view.
    summaries, annotated = [], {}
    for instance_id in found[SC_CLASS]:
        sc = dcmread(tmp_path / f"{instance_id}.dcm")
        if sc.SeriesDescription == SUMMARY_SERIES_DESCRIPTION:
            summaries.append(sc)
        else:
            annotated[sc.SourceImageSequence[0].ReferencedSOPInstanceUID] = sc
    (summary,) = summaries
    assert summary.Columns == 1024
    assert {i.ReferencedSOPInstanceUID for i in summary.ReferencedImageSequence} == source_uids
    assert set(annotated) == assessed
    for uid, sc in annotated.items():
        expected = STYLE_OF_LEVEL.get(levels[uid] or "")
        assert box_style(sc.pixel_array) == expected, (uid, levels[uid])

    # GSPS over the original views: a box on each positive view, dashed when suspected.
    gsps = dcmread(tmp_path / f"{found[GSPS_CLASS][0]}.dcm")
    boxes = {
        a.ReferencedImageSequence[0].ReferencedSOPInstanceUID: a.GraphicObjectSequence[0]
        for a in gsps.GraphicAnnotationSequence
        if "GraphicObjectSequence" in a
    }
    assert set(boxes) == positive
    for uid, box in boxes.items():
        dashing = box.LineStyleSequence[0].LineDashingStyle
        assert {"DASHED": "dotted", "SOLID": "solid"}[dashing] == STYLE_OF_LEVEL[levels[uid]]

    # The Grad-CAM heatmap of each positive view as a Parametric Map (at most 512 px).
    mapped = {}
    for instance_id in found.get(PM_CLASS, []):
        pm = dcmread(tmp_path / f"{instance_id}.dcm")
        source = pm.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        mapped[source.ReferencedSOPInstanceUID] = pm
        assert pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[
            0
        ].LUTExplanation == ("Grad-CAM")
    assert set(mapped) == positive
    for uid, pm in mapped.items():
        assert max(pm.Rows, pm.Columns) <= 512 and pm.Columns <= annotated[uid].Columns
    return levels


def check_suspected_boxes(
    orthanc: Orthanc, study_uid: str, old_series: set[str], tmp_path: Path
) -> set[str]:
    """The new series' annotated SCs and GSPS draw every positive view's box dotted/dashed.

    Returns the source views with a box.
    """
    boxed: dict[str, str] = {}
    dashed: set[str] = set()
    for series in orthanc.series_of_study(study_uid):
        if series["ID"] in old_series:
            continue
        for instance_id in series["Instances"]:
            path = tmp_path / f"rerun-{instance_id}.dcm"
            path.write_bytes(orthanc.get(f"/instances/{instance_id}/file"))
            ds = dcmread(path)
            if ds.SOPClassUID == SC_CLASS and "SourceImageSequence" in ds:
                style = box_style(ds.pixel_array)
                if style is not None:
                    boxed[ds.SourceImageSequence[0].ReferencedSOPInstanceUID] = style
            elif ds.SOPClassUID == GSPS_CLASS:
                dashed |= {
                    a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
                    for a in ds.GraphicAnnotationSequence
                    if "GraphicObjectSequence" in a
                    and a.GraphicObjectSequence[0].LineStyleSequence[0].LineDashingStyle == "DASHED"
                }
    assert set(boxed.values()) <= {"dotted"}, boxed
    assert dashed == set(boxed), (dashed, boxed)
    return set(boxed)


def triage_with(settings: Settings, study_uid: str, node: Runtime) -> TriageSummary:
    """A forced triage under other settings (a new model, other operating points), as
    an admin's run beside the node would; the node's runtime is installed again after."""
    install_runtime(Runtime.create(settings))
    try:
        with flow_run_settings(settings.flow_heartbeat):
            return triage_study(study_uid, force=True)
    finally:
        install_runtime(node)


def push_study(orthanc: Orthanc, study_uid: str) -> None:
    study_id = orthanc.study_id(study_uid)
    assert study_id is not None
    orthanc.request(
        "POST", "/modalities/triage/store", {"Resources": [study_id], "Synchronous": True}
    )


def test_orthanc_study_is_triaged_and_results_arrive_back(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    upgraded_bundle: Path,
) -> None:
    node_port = free_port()
    with (
        run_orthanc(
            tmp_path / "orthanc",
            modalities={"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)},
        ) as orthanc,
        run_mllp_listener() as ris,
    ):
        settings = make_settings(
            port=node_port,
            destinations=(
                Destination(
                    name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
                ),
                Hl7Destination(kind="hl7", name="ris", host="127.0.0.1", port=ris.port),
            ),
            outputs=EVERY_OBJECT,
        )
        # A study with a fracture (wrist) and one without (hand).
        studies = {}
        for study_dir in sample_studies[:2]:
            files = sorted(study_dir.glob("*.dcm"))
            for path in files:
                orthanc.upload(path)
            studies[str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = files
        study_uid = next(iter(studies))  # the one with a fracture

        runtime = Runtime.create(settings)
        with TriageService(runtime):
            for uid in studies:
                push_study(orthanc, uid)

            positive_studies = set()
            for uid, files in studies.items():
                levels = check_ai_results(orthanc, runtime, uid, files, tmp_path)
                if set(levels.values()) & set(POSITIVE_LEVELS):
                    positive_studies.add(uid)
            assert study_uid in positive_studies, "the phantom study with a fracture is flagged"
            # The study without a fracture is not: no box, no ROI, no ORU for it (checked
            # by check_ai_results per level and by the RIS count below).
            assert positive_studies == {study_uid}, "the phantom study without one is not"

            # The RIS got one ORU^R01 per positive study, with its accession number.
            orus = ris.wait_for(len(positive_studies))
            time.sleep(1)  # a message for a negative study would come in the meantime
            assert len(ris.messages) == len(positive_studies)
            accessions = {
                str(dcmread(studies[uid][0], stop_before_pixels=True).AccessionNumber)
                for uid in positive_studies
            }
            assert {str(hl7.parse(oru).segment("OBR")[2]) for oru in orus} == accessions
            for oru in orus:
                parsed = hl7.parse(oru)
                assert str(parsed.segment("MSH")[9]) == "ORU^R01^ORU_R01"
                assert "fracture" in str(parsed.segments("OBX")[0][5])

            with runtime.sessions() as session:
                study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
                assert study is not None and study.status is StudyStatus.TRIAGED
                run = RunRepository(session).latest_for_study(study_uid)
                assert run is not None and run.status is RunStatus.SUCCEEDED
                assert run.study_result is not None
                assert run.study_result.region == "wrist"
                assert run.study_result.level != "no fracture suspected"
                deliveries = list(session.scalars(select(Delivery)))
                assert deliveries and all(d.status is DeliveryStatus.SENT for d in deliveries)
                kinds = [e.event_type for e in AuditLog(session).for_study(study_uid)]
                for expected in (
                    AuditEventType.INSTANCE_STORED,
                    AuditEventType.STUDY_READY,
                    AuditEventType.TRIAGE_STARTED,
                    AuditEventType.OUTPUT_CREATED,
                    AuditEventType.TRIAGE_FINISHED,
                ):
                    assert str(expected) in kinds

            # Orthanc pushes the study again, now with our AI series in it: the node stores
            # them but never triages its own outputs, so no second run starts.
            push_study(orthanc, study_uid)
            time.sleep(settings.study_stable_seconds * 3)
            with runtime.sessions() as session:
                runs = session.scalar(select(func.count()).select_from(TriageRun))
                assert runs == len(studies)

            # The same instances, the same model: triaging again changes nothing.
            first_series = {s["ID"] for s in orthanc.series_of_study(study_uid)}
            with flow_run_settings(settings.flow_heartbeat):
                again = triage_study(study_uid, force=True)
            assert again.status == UNCHANGED
            assert {s["ID"] for s in orthanc.series_of_study(study_uid)} == first_series

            # A new model version: the new SR supersedes the first, every result goes
            # into new series, and an IOCM rejection note withdraws the old objects.
            first_ai = {uid for uids in ai_instances(orthanc, study_uid).values() for uid in uids}
            first_ai_uids = {
                orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in first_ai
            }
            upgraded = settings.model_copy(update={"model_bundle_dir": upgraded_bundle})
            rerun = triage_with(upgraded, study_uid, runtime)
            assert rerun.status == StudyStatus.TRIAGED.value and rerun.undelivered == 0
            with runtime.sessions() as session:
                first_sr, second_sr = (
                    o
                    for run in session.scalars(
                        select(TriageRun)
                        .join(Study)
                        .where(Study.study_instance_uid == study_uid)
                        .order_by(TriageRun.id)
                    )
                    for o in run.outputs
                    if o.kind == "sr"
                )
                first_sr_uid, second_sr_path = first_sr.sop_instance_uid, second_sr.path
                first_sr_series = first_sr.series_instance_uid
            second = dcmread(runtime.output_dir / second_sr_path)
            (predecessor,) = second.PredecessorDocumentsSequence
            (series,) = predecessor.ReferencedSeriesSequence
            assert series.SeriesInstanceUID == first_sr_series
            assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first_sr_uid
            assert second.SeriesInstanceUID != first_sr_series
            new_series = [
                s for s in orthanc.series_of_study(study_uid) if s["ID"] not in first_series
            ]
            # SR, summary, annotated SCs (with and without heatmap), GSPS, maps, rejection note
            descriptions = {s["MainDicomTags"]["SeriesDescription"] for s in new_series}
            assert descriptions >= {
                SR_SERIES_DESCRIPTION,
                SUMMARY_SERIES_DESCRIPTION,
                GSPS_SERIES_DESCRIPTION,
                PM_SERIES_DESCRIPTION,
                REJECTION_NOTE_SERIES_DESCRIPTION,
            }
            (note_id,) = ai_instances(orthanc, study_uid)[KOS_CLASS]
            note_path = tmp_path / "rejection-note.dcm"
            note_path.write_bytes(orthanc.get(f"/instances/{note_id}/file"))
            assert_dciodvfy_clean(note_path)
            note = dcmread(note_path)
            assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
            withdrawn = {
                sop.ReferencedSOPInstanceUID
                for study in note.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence
            }
            assert withdrawn == first_ai_uids
            flags = len(positive_studies) + 1
            assert len(ris.wait_for(flags)) == flags  # and a new worklist flag

            # A site lowers its screening point far below the hand study's probabilities:
            # its views are now 'suspected' (not 'likely'), drawn dotted on the captures and
            # dashed in the GSPS, and the RIS gets a flag for it.
            (hand_uid,) = set(studies) - {study_uid}
            hand_series = {s["ID"] for s in orthanc.series_of_study(hand_uid)}
            cautious = upgraded.model_copy(
                update={"fracture_suspected_threshold": 0.001, "fracture_likely_threshold": 0.999}
            )
            flagged = triage_with(cautious, hand_uid, runtime)
            assert flagged.status == StudyStatus.TRIAGED.value and flagged.undelivered == 0
            assert flagged.level == "fracture suspected"
            suspected_views = check_suspected_boxes(orthanc, hand_uid, hand_series, tmp_path)
            assert suspected_views == {
                str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in studies[hand_uid]
            }
            assert len(ris.wait_for(flags + 1)) == flags + 1
