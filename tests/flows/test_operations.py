"""The node's operations side over real sockets: /metrics, /readyz, probes, status, check.

A real node (TriageService) receives a study over DICOM and delivers its SR to dcmtk's
storescp; the metrics endpoint is scraped over HTTP and parsed with prometheus-client's
own parser; ``status`` and ``check`` run as the operator runs them, in a process of their
own; the readiness test stops a real PostgreSQL database under the node and brings it back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from config import Destination, Settings
from config.domain.vocabulary import OutputKind
from db.audit import AuditEventType, AuditLog
from db.migrate import upgrade
from db.models import Delivery, DeliveryStatus, OutputObject, Study, StudyStatus
from dicom_node.delivery.dimse import send_files
from dicom_node.receive.statuses import CANNOT_UNDERSTAND
from flows.node.service import TriageService
from flows.runtime import Runtime
from models.runtime.bundle import update_metadata
from tests.dicom_node.test_outbox import storescp_pacs
from tests.peers import (
    POSTGRES_ADMIN_URL,
    free_port,
    require_binary,
    scratch_postgres_database,
    wait_until,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(node: TriageService) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    assert node.operations.address is not None
    host, port = node.operations.address
    status, body = http_get(f"http://{host}:{port}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def readyz(node: TriageService) -> tuple[int, dict[str, object]]:
    assert node.operations.address is not None
    host, port = node.operations.address
    status, body = http_get(f"http://{host}:{port}/readyz")
    return status, json.loads(body)


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``fracture-triage ARGS`` in its own process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "FRACTURE_TRIAGE_STORE_DIR": str(settings.store_dir),
        "FRACTURE_TRIAGE_OUTPUT_DIR": str(settings.output_dir),
        "FRACTURE_TRIAGE_DATABASE_URL": settings.database_url,
        "FRACTURE_TRIAGE_MODEL_BUNDLE_DIR": str(settings.model_bundle_dir),
        "FRACTURE_TRIAGE_DESTINATIONS": json.dumps(
            [d.model_dump(mode="json") for d in settings.destinations]
        ),
    }


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Destination]:
    require_binary("storescp", "dcmtk")
    port = free_port()
    with storescp_pacs(tmp_path / "pacs", port):
        yield Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)


def _truncated_copy(path: Path, target: Path) -> Path:
    """A copy of ``path`` in a study of its own whose pixel data is cut short."""
    ds = dcmread(path)
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = ds.PixelData[:64]
    ds.save_as(target, enforce_file_format=True)
    return target


def _sr_sent(runtime: Runtime, study_uid: str) -> bool:
    with runtime.sessions() as session:
        query = (
            select(Delivery.status)
            .join(Delivery.output)
            .where(OutputObject.kind == OutputKind.SR, Delivery.destination == "pacs")
        )
        statuses = list(session.scalars(query))
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    return (
        study is not None
        and study.status == StudyStatus.TRIAGED
        and (DeliveryStatus.SENT in statuses)
    )


def test_metrics_count_a_study_a_refusal_a_delivered_sr_and_a_probe_and_status_shows_it(
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    pacs: Destination,
    tmp_path: Path,
) -> None:
    settings = make_settings(destinations=(pacs,))
    runtime = Runtime.create(settings)
    study_dir = sample_studies[0]
    files = sorted(study_dir.glob("*.dcm"))
    with TriageService(runtime) as node:
        assert node.address is not None
        target = Destination(
            name="node", ae_title=settings.ae_title, host="127.0.0.1", port=node.address[1]
        )
        assert all(o.success for o in send_files(files, target, "MODALITY"))
        bad = _truncated_copy(files[0], tmp_path / "truncated.dcm")
        (refused,) = send_files([bad], target, "MODALITY")
        assert refused.status == CANNOT_UNDERSTAND
        socket.create_connection(("127.0.0.1", node.address[1]), timeout=10).close()

        assert wait_until(lambda: _sr_sent(runtime, study_dir.name), timeout=600)
        assert wait_until(lambda: node.scp.connection_probes == 1)
        samples = scrape(node)
    assert samples[("fracture_triage_instances_received_total", (("outcome", "stored"),))] == len(
        files
    )
    reason = (("reason", "cannot_understand"),)
    assert samples[("fracture_triage_instances_refused_total", reason)] == 1
    assert samples[("fracture_triage_connection_probes_total", ())] == 1
    assert samples[("fracture_triage_studies", (("status", "triaged"),))] == 1
    assert samples[("fracture_triage_ready_queue_depth", ())] == 0
    latency = (("destination", "pacs"),)
    assert samples[("fracture_triage_triage_latency_seconds_count", latency)] == 1
    assert samples[("fracture_triage_triage_latency_seconds_sum", latency)] > 0
    sent = (("destination", "pacs"), ("status", "sent"))
    assert samples[("fracture_triage_outbox_deliveries", sent)] >= 1
    assert samples[("fracture_triage_database_up", ())] == 1
    assert any(name == "fracture_triage_model_info" for name, _ in samples)
    with runtime.sessions() as session:  # the probe is counted, never audited
        assert AuditLog(session).of_type(AuditEventType.CONNECTION_DROPPED) == []

    _status_json_carries_the_results(settings, study_dir.name)


def _status_json_carries_the_results(settings: Settings, study_uid: str) -> None:
    """``status --json`` in a process that never imports Prefect: the study's results."""
    code = (
        "import sys\n"
        "from flows.cli.app import main\n"
        "try:\n"
        "    main(['status', '--json'])\n"
        "finally:\n"
        "    assert 'prefect' not in sys.modules, 'status imported prefect'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **settings_env(settings), "PREFECT_API_URL": "http://127.0.0.1:9/api"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (study,) = [s for s in report["latest"] if s["study_instance_uid"] == study_uid]
    assert study["status"] == "triaged" and study["region"]
    assert 0.0 <= study["fracture_probability"] <= 1.0 and study["level"]
    assert study["outputs"]["sr"] == 1
    assert study["deliveries"]["pacs"]["sent"] >= 1
    assert set(report["outputs"]) >= {"sr", "summary", "sc", "gsps", "pm", "kos", "hl7"}
    assert report["studies"]["triaged"] == 1


def _set_connections(database: str, allowed: bool) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


def _check(report: dict[str, object], name: str) -> dict[str, object]:
    checks = report["checks"]
    assert isinstance(checks, list)
    (found,) = [check for check in checks if check["name"] == name]
    return found


def test_readyz_follows_the_database_down_and_back(make_settings: Callable[..., Settings]) -> None:
    with scratch_postgres_database() as url:
        database = url.rsplit("/", 1)[1]
        runtime = Runtime.create(make_settings(database_url=url))
        upgrade(runtime.engine)  # PostgreSQL: its owner migrates, the node never does
        with TriageService(runtime) as node:
            status, _ = http_get(
                "http://{}:{}/healthz".format(*node.operations.address)  # type: ignore[str-format]
            )
            assert status == 200
            assert wait_until(lambda: readyz(node)[0] == 200, timeout=300), readyz(node)
            _set_connections(database, allowed=False)
            try:
                assert wait_until(lambda: readyz(node)[0] == 503, timeout=60)
                status, report = readyz(node)
                assert report["ready"] is False
                assert _check(report, "database")["ok"] is False
                assert _check(report, "store")["ok"] is True
                assert _check(report, "model")["ok"] is True
                assert scrape(node)[("fracture_triage_database_up", ())] == 0
            finally:
                _set_connections(database, allowed=True)
            assert wait_until(lambda: readyz(node)[0] == 200, timeout=60), readyz(node)
            assert scrape(node)[("fracture_triage_database_up", ())] == 1
        runtime.close()


def test_check_names_a_wrong_destination_in_one_line(
    make_settings: Callable[..., Settings], pacs: Destination, test_bundle: Path, tmp_path: Path
) -> None:
    wrong = Destination(name="wrong", ae_title="NOBODY", host="127.0.0.1", port=free_port())
    settings = make_settings(destinations=(pacs, wrong))
    from db.migrate import upgrade

    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    runtime.close()
    result = cli("check", "--timeout", "5", env=settings_env(settings))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * 6 + ["FAIL"]
    for name in ("settings", "model bundle", "database", "store", "outputs", "destination pacs"):
        assert any(f"{name}:" in line for line in lines), lines
    assert lines[-1].startswith("FAIL  destination wrong: ")
    assert f"NOBODY@127.0.0.1:{wrong.port}" in lines[-1]
    assert "Traceback" not in result.stdout + result.stderr

    good = cli("check", env={**settings_env(settings), "FRACTURE_TRIAGE_DESTINATIONS": "[]"})
    assert good.returncode == 0, good.stdout + good.stderr

    # A bundle `serve` would refuse fails `check` too, with the same reason.
    abnormality = tmp_path / "abnormality-bundle"
    shutil.copytree(test_bundle, abnormality)
    update_metadata(abnormality, label_meaning="abnormality")
    env = settings_env(settings) | {"FRACTURE_TRIAGE_DESTINATIONS": "[]"}
    refused = cli("check", env=env | {"FRACTURE_TRIAGE_MODEL_BUNDLE_DIR": str(abnormality)})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "FAIL  model bundle:" in refused.stdout and "does not run this bundle" in refused.stdout
