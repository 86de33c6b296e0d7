"""Shared fixtures of the flow tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from config import Settings
from db.migrate import upgrade
from db.models import StudyStatus
from db.repositories import StudyRepository
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_study
from models.runtime.bundle import update_metadata

#: The version the upgraded copy of the demo bundle claims.
UPGRADED_VERSION = "0.2.0"


def bundle_with_version(bundle: Path, version: str, target: Path) -> Path:
    """A copy of ``bundle`` that says it is model version ``version``."""
    shutil.copytree(bundle, target)
    update_metadata(target, version=version)
    return target


@pytest.fixture
def upgraded_bundle(test_bundle: Path, tmp_path: Path) -> Path:
    """The test bundle as a newer model version (a site upgrading its model)."""
    return bundle_with_version(test_bundle, UPGRADED_VERSION, tmp_path / "bundle-upgraded")


def store_study(runtime: Runtime, study_dir: Path, *, urgent: bool = False) -> str:
    """Put a study's files in the store and the DB as the SCP would (no association), READY."""
    uid = ""
    with runtime.sessions.begin() as session:
        studies = StudyRepository(session)
        for path in sorted(study_dir.glob("*.dcm")):
            header = dcmread(path, stop_before_pixels=True)
            uid = str(header.StudyInstanceUID)
            received = runtime.store_instance(path.read_bytes(), header, "MODALITY", urgent)
            studies.record_instance(received)
        studies.set_status(uid, StudyStatus.READY)
    return uid


def triage_in_process(settings: Settings, *study_dirs: Path) -> tuple[Runtime, list[str]]:
    """A runtime on ``settings`` (database migrated) that stores each study and triages it
    in this process (no Prefect server); returned with the studies' UIDs, in order."""
    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    install_runtime(runtime)
    try:
        uids = [store_study(runtime, study) for study in study_dirs]
        with flow_run_settings(False):
            for uid in uids:
                triage_study(uid)
    finally:
        install_runtime(None)
    return runtime, uids


def node_environment(settings: Settings, **extra: object) -> dict[str, str]:
    """The environment of a `fracture-triage` process started with these settings (and
    ``extra`` ones, by their FRACTURE_TRIAGE_ names without the prefix), heartbeat off."""
    env = dict(os.environ)
    for key, value in {
        "STORE_DIR": settings.store_dir,
        "OUTPUT_DIR": settings.output_dir,
        "DATABASE_URL": settings.database_url,
        "MODEL_BUNDLE_DIR": settings.model_bundle_dir,
        "STUDY_STABLE_SECONDS": settings.study_stable_seconds,
        "PREFECT_FLOW_HEARTBEAT": "false",
        **extra,
    }.items():
        env[f"FRACTURE_TRIAGE_{key}"] = str(value)
    return env


def concept_codes(item: Dataset) -> list[str]:
    """Every code value of the CODE items in an SR content tree (values, not names)."""
    found = [str(code.CodeValue) for code in item.get("ConceptCodeSequence", [])]
    for child in item.get("ContentSequence", []):
        found += concept_codes(child)
    return found
