"""Admin flows: reprocess with a new model version (local and from the PACS), purge."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from typer.testing import CliRunner

from config import Destination, Settings
from db.audit import AuditEventType, AuditLog, verify_chain
from db.models import Instance, OutputObject, RunStatus, StudyStatus, TriageRun
from dicom_node.delivery.dimse import send_files
from flows.cli.app import app
from flows.maintenance import ReprocessCriteria, purge_store, reprocess, select_studies
from flows.node.service import TriageService
from flows.runtime import Runtime, install_runtime
from tests.peers import assert_dciodvfy_clean, free_port, run_orthanc

pytestmark = pytest.mark.slow


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def runs_of(runtime: Runtime) -> list[tuple[str, RunStatus]]:
    with runtime.sessions() as session:
        return [(r.model_version, r.status) for r in session.scalars(select(TriageRun))]


def ingest(runtime: Runtime, study_dir: Path) -> str:
    """Send a sample study to a running node and wait for its triage."""
    with TriageService(runtime) as service:
        assert service.address is not None
        node = Destination(
            name="node", ae_title="FRACTURE_TRIAGE", host="127.0.0.1", port=service.address[1]
        )
        files = sorted(study_dir.glob("*.dcm"))
        assert all(o.success for o in send_files(files, node, "MODALITY"))
        wait_for(
            lambda: len(runs_of(runtime)) == 1 and runs_of(runtime)[0][1] is not RunStatus.RUNNING,
            240,
            "the first triage",
        )
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_reprocess_with_a_new_model_version_and_purge(
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    upgraded_bundle: Path,
) -> None:
    runtime = Runtime.create(make_settings())
    study_uid = ingest(runtime, sample_studies[1])
    assert runs_of(runtime) == [("0.1.0", RunStatus.SUCCEEDED)]

    # Idempotent: the same instances and the same model are not triaged twice.
    install_runtime(runtime)
    assert reprocess(statuses=["triaged"], requested_by="admin") == {
        "selected": 1,
        "triaged": 0,
        "unchanged": 1,
        "failed": 0,
        "deferred": 0,
    }
    assert runs_of(runtime) == [("0.1.0", RunStatus.SUCCEEDED)]
    with runtime.sessions() as session:
        (skipped,) = AuditLog(session).of_type(AuditEventType.TRIAGE_SKIPPED)
        assert skipped.study_instance_uid == study_uid and "unchanged" in skipped.detail["reason"]
        first_outputs = {o.sop_instance_uid: o.kind for o in session.scalars(select(OutputObject))}

    upgraded = make_settings(model_bundle_dir=upgraded_bundle)
    runtime = Runtime.create(upgraded)
    install_runtime(runtime)
    criteria = ReprocessCriteria(model_version_older_than="0.2.0")
    assert select_studies(runtime, criteria) == [study_uid]
    assert reprocess(model_version_older_than="0.2.0", requested_by="admin") == {
        "selected": 1,
        "triaged": 1,
        "unchanged": 0,
        "failed": 0,
        "deferred": 0,
    }
    assert runs_of(runtime) == [("0.1.0", RunStatus.SUCCEEDED), ("0.2.0", RunStatus.SUCCEEDED)]
    # The new results supersede the old: an IOCM rejection note names every old object.
    with runtime.sessions() as session:
        (note,) = session.scalars(select(OutputObject).where(OutputObject.kind == "kos"))
        note_path = runtime.output_dir / note.path
        (run_id,) = session.scalars(select(TriageRun.id).where(TriageRun.model_version == "0.2.0"))
        assert note.run_id == run_id
    assert_dciodvfy_clean(note_path)
    kos = dcmread(note_path)
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113001"
    rejected = {
        sop.ReferencedSOPInstanceUID
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert rejected == {uid for uid, kind in first_outputs.items() if kind != "hl7"}
    # Idempotent: nothing is older than 0.2.0 any more.
    assert select_studies(runtime, criteria) == []
    with runtime.sessions() as session:
        events = AuditLog(session).of_type(AuditEventType.REPROCESS_REQUESTED)
        assert len(events) == 4 and all(event.actor == "admin" for event in events)
        # One summary and one per study for each request: the study's story says who asked.
        assert [e.study_instance_uid for e in events].count(study_uid) == 2

    # Purge: pixel data goes (received instances and our outputs' local copies), the DB
    # rows and the audit trail stay, each study's purge audited.
    with runtime.sessions() as session:
        instances = [runtime.store.absolute(i.path) for i in session.scalars(select(Instance))]
        outputs = [runtime.output_dir / o.path for o in session.scalars(select(OutputObject))]
        story = len(AuditLog(session).for_study(study_uid))
    assert len(instances) == 2 and outputs and all(p.is_file() for p in instances + outputs)
    size = sum(p.stat().st_size for p in instances + outputs)
    assert purge_store(0, requested_by="admin") == {
        "files": len(instances) + len(outputs),
        "bytes": size,
        "studies": 1,
    }
    assert not any(p.exists() for p in instances + outputs)
    with runtime.sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 2  # rows stay
        events = AuditLog(session).for_study(study_uid)
        assert len(events) == story + 1
        assert events[-1].event_type == AuditEventType.PURGE
        assert events[-1].actor == "admin"
        assert events[-1].detail["files"] == len(instances) + len(outputs)
        assert verify_chain(session).ok
    # Nothing left to purge: nothing deleted, nothing audited.
    assert purge_store(0, requested_by="admin")["files"] == 0


def test_reprocess_from_the_pacs_by_c_move(
    make_settings: Callable[..., Settings], sample_studies: list[Path], tmp_path: Path
) -> None:
    node_port = free_port()
    with run_orthanc(
        tmp_path / "orthanc", modalities={"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)}
    ) as orthanc:
        files = sorted(sample_studies[2].glob("*.dcm"))
        for path in files:
            orthanc.upload(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        pacs = Destination(
            name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
        )
        settings = make_settings(port=node_port, destinations=(pacs,), study_stable_seconds=30.0)
        runtime = Runtime.create(settings)
        with TriageService(runtime):
            result = reprocess(source="pacs", pacs="pacs", requested_by="admin")
        assert result == {"selected": 1, "triaged": 1, "unchanged": 0, "failed": 0, "deferred": 0}
        with runtime.sessions() as session:
            moved = sorted(session.scalars(select(Instance.sop_instance_uid)))
        assert moved == sorted(
            str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
        )
        assert [s for _, s in runs_of(runtime)] == [RunStatus.SUCCEEDED]
        series = orthanc.series_of_study(study_uid)
        assert any(s["MainDicomTags"].get("Modality") == "SR" for s in series)


def test_reprocess_cli_prints_json(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings()
    for key, value in {
        "STORE_DIR": settings.store_dir,
        "OUTPUT_DIR": settings.output_dir,
        "DATABASE_URL": settings.database_url,
        "MODEL_BUNDLE_DIR": settings.model_bundle_dir,
        "PREFECT_FLOW_HEARTBEAT": "false",
    }.items():
        monkeypatch.setenv(f"FRACTURE_TRIAGE_{key}", str(value))
    result = CliRunner().invoke(app, ["reprocess", "--status", "failed", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1]) == {
        "selected": 0,
        "triaged": 0,
        "unchanged": 0,
        "failed": 0,
        "deferred": 0,
    }
    status = CliRunner().invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.output.strip().splitlines()[-1])
    assert report["studies"] == {} and report["deliveries"] == {} and report["latest"] == []
    bad = CliRunner().invoke(app, ["reprocess", "--status", "exploded"])
    assert bad.exit_code != 0 and "unknown study statuses" in bad.output
    assert StudyStatus.FAILED.value == "failed"
