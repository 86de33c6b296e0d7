"""Shared fixtures: settings in a temp dir, the test and demo bundles, sample studies."""

from __future__ import annotations

import functools
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
DEMO_BUNDLE = REPO / "var" / "bundles" / "demo"


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained test bundle (tests/bundles.py): built in well under a second, results
    chosen by the tests. Flow, DICOM and node tests run on it."""
    from tests.bundles import build_test_bundle

    return build_test_bundle(tmp_path_factory.mktemp("bundles") / "untrained")


@pytest.fixture(scope="session")
def demo_bundle() -> Path:
    """The demo bundle, trained on phantoms: for the tests of model quality and pictures.

    ``make demo`` (or ``make test``'s ``demo-bundle`` step) builds var/bundles/demo; it is
    reused when it was trained by the current training code (its fingerprint, blind to
    formatting and comments, matches). Otherwise it is trained once into var/test-cache.
    ``FRACTURE_TRIAGE_TEST_BUNDLE`` points at another bundle (a developer's shortcut).
    """
    from models.training.demo import demo_bundle_is_current, train_demo_bundle
    from models.training.fingerprint import training_code_fingerprint

    if os.environ.get("FRACTURE_TRIAGE_TEST_BUNDLE"):
        return Path(os.environ["FRACTURE_TRIAGE_TEST_BUNDLE"])
    if demo_bundle_is_current(DEMO_BUNDLE):
        return DEMO_BUNDLE
    bundle = BUNDLE_CACHE / f"demo-bundle-{training_code_fingerprint()[:16]}"
    if not demo_bundle_is_current(bundle):
        # Train beside the target and rename: concurrent test sessions never see half a bundle.
        partial = BUNDLE_CACHE / f".partial-{os.getpid()}-{bundle.name}"
        shutil.rmtree(partial, ignore_errors=True)
        train_demo_bundle(partial, seed=0)
        shutil.rmtree(bundle, ignore_errors=True)
        try:
            partial.rename(bundle)
        except OSError:  # another session finished first: use its bundle
            shutil.rmtree(partial, ignore_errors=True)
    return bundle


def settings_under(root: Path, bundle: Path, **overrides: object) -> Settings:
    """Settings rooted in ``root`` (SQLite, store, outputs), fast completion."""
    values: dict[str, object] = {
        "port": 0,
        "store_dir": root / "store",
        "output_dir": root / "outputs",
        "database_url": f"sqlite:///{root / 'audit.db'}",
        "model_bundle_dir": bundle,
        "study_stable_seconds": 1.0,
        "prefect_flow_heartbeat": False,
    }
    values.update(overrides)
    return load_settings(None, **values)


@pytest.fixture
def make_settings(tmp_path: Path, test_bundle: Path) -> Callable[..., Settings]:
    """Settings rooted in the test's temp dir (SQLite, store, outputs), fast completion,
    the untrained test bundle (pass ``model_bundle_dir`` for another)."""
    return functools.partial(settings_under, tmp_path, test_bundle)


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
