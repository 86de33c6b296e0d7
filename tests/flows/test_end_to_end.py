"""One study through everything: Orthanc -> node -> Prefect flow -> SR + SCs -> Orthanc."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from config import Destination, Settings
from db.audit import AuditEventType, AuditLog
from db.models import Delivery, DeliveryStatus, RunStatus, Study, StudyStatus, TriageRun
from db.repositories import RunRepository
from flows.runtime import Runtime
from flows.service import TriageService
from tests.peers import Orthanc, assert_dciodvfy_clean, free_port, run_orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image


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


def push_study(orthanc: Orthanc, study_uid: str) -> None:
    study_id = orthanc.study_id(study_uid)
    assert study_id is not None
    orthanc.request(
        "POST", "/modalities/triage/store", {"Resources": [study_id], "Synchronous": True}
    )


def test_orthanc_study_is_triaged_and_results_arrive_back(
    tmp_path: Path, make_settings: Callable[..., Settings], sample_studies: list[Path]
) -> None:
    node_port = free_port()
    with run_orthanc(
        tmp_path / "orthanc", modalities={"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)}
    ) as orthanc:
        settings = make_settings(
            port=node_port,
            destinations=(
                Destination(
                    name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
                ),
            ),
        )
        study_dir = sample_studies[0]  # a study with a fracture
        files = sorted(study_dir.glob("*.dcm"))
        for path in files:
            orthanc.upload(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        runtime = Runtime.create(settings)
        with TriageService(runtime):
            push_study(orthanc, study_uid)

            def results_arrived() -> dict[str, list[str]] | None:
                found = ai_instances(orthanc, study_uid)
                complete = SR_CLASS in found and len(found.get(SC_CLASS, [])) == len(files)
                return found if complete else None

            found = wait_until(results_arrived, timeout=300, what="the SR and SCs in Orthanc")

            # Every object Orthanc received passes the reference validator.
            for instance_ids in found.values():
                for instance_id in instance_ids:
                    path = tmp_path / f"{instance_id}.dcm"
                    path.write_bytes(orthanc.get(f"/instances/{instance_id}/file"))
                    assert_dciodvfy_clean(path)

            sr = dcmread(tmp_path / f"{found[SR_CLASS][0]}.dcm")
            assert sr.StudyInstanceUID == study_uid
            assert sr.VerificationFlag == "UNVERIFIED"
            referenced = {
                sop.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence
            }
            assert referenced == {
                str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
            }
            assert "synthetic" in str(sr).lower()

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
                assert runs == 1
