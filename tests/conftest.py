"""Shared fixtures: settings in a temp dir, the demo bundle (trained once), sample studies."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Prefect reads its settings at import: give the test session its own home, ephemeral API,
# before anything imports `flows`.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ft-prefect-"))
# Every node a test starts (here or as `fracture-triage serve`) serves /healthz, /readyz and
# /metrics on a free port: concurrent sessions on one machine never compete for 9112.
os.environ.setdefault("FRACTURE_TRIAGE_HTTP__PORT", "0")

import pytest

from config import Settings, load_settings
from tests.phi import log_scanner, scan_files

REPO = Path(__file__).resolve().parents[1]
BUNDLE_CACHE = REPO / "var" / "test-cache"


def _models_fingerprint() -> str:
    # The demo bundle is trained, calibrated and evaluated by models/ as a whole (phantoms,
    # data loading, training, evaluation into the model card): any change retrains it.
    digest = hashlib.sha256()
    for path in sorted((REPO / "models").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def demo_bundle() -> Path:
    """The demo bundle, trained once per version of the training code and cached under var/.

    ``FRACTURE_TRIAGE_TEST_BUNDLE`` points the tests at an existing bundle instead
    (a developer iterating on other code); CI never sets it.
    """
    from models.training.train import train_demo_bundle

    if os.environ.get("FRACTURE_TRIAGE_TEST_BUNDLE"):
        return Path(os.environ["FRACTURE_TRIAGE_TEST_BUNDLE"])

    bundle = BUNDLE_CACHE / f"demo-bundle-{_models_fingerprint()}"
    if not (bundle / "configs" / "metadata.json").is_file():
        # Train beside the target and rename: concurrent test sessions never see half a bundle.
        partial = BUNDLE_CACHE / f".partial-{os.getpid()}-{bundle.name}"
        shutil.rmtree(partial, ignore_errors=True)
        train_demo_bundle(partial, seed=0)
        try:
            partial.rename(bundle)
        except OSError:  # another session finished first: use its bundle
            shutil.rmtree(partial, ignore_errors=True)
    return bundle


@pytest.fixture
def make_settings(tmp_path: Path, demo_bundle: Path) -> Callable[..., Settings]:
    """Settings rooted in the test's temp dir (SQLite, store, outputs), fast completion."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "port": 0,
            "store_dir": tmp_path / "store",
            "output_dir": tmp_path / "outputs",
            "database_url": f"sqlite:///{tmp_path / 'audit.db'}",
            "model_bundle_dir": demo_bundle,
            "study_stable_seconds": 1.0,
            "prefect_flow_heartbeat": False,
        }
        values.update(overrides)
        return load_settings(None, **values)

    return make


@pytest.fixture(scope="session")
def sample_studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from models.training.phantoms import write_sample_studies

    return write_sample_studies(tmp_path_factory.mktemp("samples"))


# -- no patient data in any log line, Prefect store or audit event ----------------------------

OUR_PACKAGES = ("config", "db", "models", "dicom_node", "flows")


def pytest_configure(config: pytest.Config) -> None:
    log_scanner.install()
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.DEBUG)  # scan our debug lines too


@pytest.fixture(autouse=True)
def _scan_debug_records() -> Iterator[None]:
    """A command run in this process (CliRunner) sets our loggers to its log_level: put
    them back at DEBUG, so the next test's debug records are scanned too."""
    yield
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when patient data reached a log, Prefect's store or an audit event.

    Covers this process's log records and the files of every process the tests started
    (nodes, workers, Prefect servers: their logs, Prefect homes and databases).
    """
    roots = [session.config._tmp_path_factory.getbasetemp()]  # type: ignore[attr-defined]
    leaks = log_scanner.leaks + scan_files(roots, Path(os.environ["PREFECT_HOME"]))
    if leaks:
        print("\nPATIENT DATA IN LOGS, PREFECT'S STORE OR AUDIT EVENTS:\n" + "\n".join(leaks[:20]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    # Prefect stops its ephemeral API server at interpreter exit and logs that to a
    # stream pytest has already closed; silence logging once the session is over.
    logging.disable(logging.CRITICAL)
