"""The triage flow on real radiographs and the CLI demo, with real dcmtk peers."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from typer.testing import CliRunner

from config import Settings
from db.audit import AuditEventType, AuditLog
from db.models import OutputObject, RunStatus, Study, StudyStatus
from db.repositories import RunRepository
from flows.cli.app import app
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.flows.profiles import EVERY_OBJECT
from tests.peers import assert_dciodvfy_clean, nema_cr, require_binary

pytestmark = pytest.mark.slow


def wait_for_status(runtime: Runtime, study_uid: str, timeout: float = 240) -> StudyStatus:
    finished = {StudyStatus.TRIAGED, StudyStatus.FAILED, StudyStatus.NOT_TRIAGED}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with runtime.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            if study is not None and study.status in finished:
                return study.status
        time.sleep(0.5)
    raise AssertionError(f"study {study_uid} not finished after {timeout} s")


def test_real_jpeg2000_cr_is_triaged_with_valid_outputs(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """A real NEMA extremity CR (MONOCHROME1, JPEG 2000) sent by storescu."""
    storescu = require_binary("storescu", "dcmtk")
    source = nema_cr("RG3_J2KR")
    header = dcmread(source, stop_before_pixels=True)
    runtime = Runtime.create(make_settings(outputs=EVERY_OBJECT))
    caplog.set_level(logging.DEBUG)
    with TriageService(runtime) as service:
        assert service.address is not None
        subprocess.run(
            [
                storescu,
                "-xv",  # propose JPEG 2000 lossless, the file's transfer syntax
                "-aec",
                "FRACTURE_TRIAGE",
                "127.0.0.1",
                str(service.address[1]),
                str(source),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        assert wait_for_status(runtime, header.StudyInstanceUID) is StudyStatus.TRIAGED

    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(header.StudyInstanceUID)
        assert run is not None and run.status is RunStatus.SUCCEEDED
        (image,) = run.image_results
        assert image.sop_instance_uid == header.SOPInstanceUID
        outputs = list(session.scalars(select(OutputObject).order_by(OutputObject.id)))
        refusals = [
            event
            for event in AuditLog(session).for_study(header.StudyInstanceUID)
            if event.event_type == AuditEventType.OUTPUT_CREATED and event.outcome == "failure"
        ]
    # Every object (EVERY_OBJECT). This CR has no pixel spacing: no Parametric Map (its
    # plane would be made up); when the model found the view positive (it gets a map), the
    # missing map is audited. The other outputs stand; a view not assessed gets no
    # annotated copy.
    assessed = image.region is not None
    positive = image.level in ("fracture suspected", "fracture likely")
    assert [o.kind for o in outputs] == ["sr", "summary", "gsps"] + (["sc"] if assessed else [])
    assert "PixelSpacing" not in header and "ImagerPixelSpacing" not in header
    assert [(e.sop_instance_uid, e.detail["kind"]) for e in refusals] == (
        [(header.SOPInstanceUID, "pm")] if positive else []
    )
    assert all("Pixel Spacing" in e.detail["reason"] for e in refusals)
    for output in outputs:
        path = runtime.output_dir / output.path
        assert_dciodvfy_clean(path)
        produced = dcmread(path)
        assert produced.StudyInstanceUID == header.StudyInstanceUID
        assert produced.SeriesInstanceUID != header.SeriesInstanceUID
    for sc_output in [o for o in outputs if o.kind == "sc"]:
        sc = dcmread(runtime.output_dir / sc_output.path)
        assert sc.Columns == header.Columns and sc.Rows > header.Rows  # the band above
        assert sc.BurnedInAnnotation == "YES"

    # Logs carry UIDs, never the patient's name or ID.
    for value in (str(header.PatientName), str(header.PatientID)):
        if value:
            assert value not in caplog.text


def test_demo_command_prints_the_triage_table(
    tmp_path: Path, demo_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "STORE_DIR": tmp_path / "store",
        "OUTPUT_DIR": tmp_path / "outputs",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}",
        "MODEL_BUNDLE_DIR": demo_bundle,
        "PREFECT_FLOW_HEARTBEAT": "false",
    }.items():
        monkeypatch.setenv(f"FRACTURE_TRIAGE_{key}", str(value))
    result = CliRunner().invoke(
        app, ["demo", "--samples-dir", str(tmp_path / "samples"), "--timeout", "300"]
    )
    assert result.exit_code == 0, result.output
    assert "Triage results" in result.output
    for expected in ("wrist", "hand", "elbow", "unsupported"):
        assert expected in result.output

    studies = sorted(p.name for p in (tmp_path / "samples").iterdir() if p.is_dir())
    assert len(studies) == 4
    for study in studies:
        files = list((tmp_path / "outputs" / study).rglob("*.dcm"))
        kinds = {str(dcmread(f, stop_before_pixels=True).Modality) for f in files}
        assert "SR" in kinds, f"no SR for study {study}"

    # `audit --study` tells the whole story of a study that went through the real pipeline.
    wrist = next(
        s
        for s in studies
        if dcmread(tmp_path / "samples" / s / "001.dcm", stop_before_pixels=True).BodyPartExamined
        == "WRIST"
    )
    story = CliRunner().invoke(app, ["audit", "--study", wrist, "--json"])
    assert story.exit_code == 0, story.output
    events = [event["event_type"] for event in json.loads(story.output)["events"]]
    assert events.count("instance_stored") == 2  # the wrist sample has two views
    start = events.index("triage_started")
    assert events.index("study_ready") < start < events.index("triage_finished")
    assert "output_created" in events[start:]


def test_view_without_orientation_gets_no_parametric_map_and_the_run_says_so(
    tmp_path: Path, make_settings: Callable[..., Settings], sample_studies: list[Path]
) -> None:
    """The wrist phantom without Patient Orientation: every output but the maps, audited."""
    storescu = require_binary("storescu", "dcmtk")
    files = []
    for path in sorted(sample_studies[0].glob("*.dcm")):
        ds = dcmread(path)
        del ds.PatientOrientation
        files.append(tmp_path / path.name)
        ds.save_as(files[-1])
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    runtime = Runtime.create(make_settings(outputs=EVERY_OBJECT))
    with TriageService(runtime) as service:
        assert service.address is not None
        subprocess.run(
            [storescu, "-aec", "FRACTURE_TRIAGE", "127.0.0.1", str(service.address[1])]
            + [str(f) for f in files],
            check=True,
            capture_output=True,
            timeout=60,
        )
        assert wait_for_status(runtime, study_uid) is StudyStatus.TRIAGED

    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(study_uid)
        assert run is not None and run.status is RunStatus.SUCCEEDED
        assessed = {i.sop_instance_uid for i in run.image_results if i.region is not None}
        positive = {
            i.sop_instance_uid
            for i in run.image_results
            if i.level in ("fracture suspected", "fracture likely")
        }
        kinds = sorted(o.kind for o in run.outputs)
        refusals = {
            event.sop_instance_uid: event.detail
            for event in AuditLog(session).for_study(study_uid)
            if event.event_type == AuditEventType.OUTPUT_CREATED and event.outcome == "failure"
        }
    assert positive, "the wrist phantom's views are positive (they have heatmaps)"
    assert kinds == sorted(["sr", "summary", "gsps", *["sc"] * len(assessed)])
    assert set(refusals) == positive  # a map is made for positive views only
    assert all(
        d["kind"] == "pm" and "Patient Orientation" in d["reason"] for d in refusals.values()
    )
