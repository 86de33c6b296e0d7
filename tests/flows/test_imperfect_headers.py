"""Real-world headers through the whole pipeline: received, triaged, valid outputs, no name leaked.

Two studies a real archive sends: one whose every Type 2 patient and study attribute is
gone (anonymised or modality-made data), one with malformed dates and one-component or
odd person names. Both go through a real association into the node, are triaged, and
every object the node makes passes dciodvfy; the names appear in no log record (the
session's scan also covers every database and Prefect's store at its end).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from config import Destination, Settings
from db.audit import AuditEventType, AuditLog
from db.models import RunStatus, StudyStatus
from db.repositories import RunRepository, StudyRepository
from dicom_node.delivery.dimse import send_files
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.peers import assert_dciodvfy_clean, wait_until
from tests.phi import log_scanner

pytestmark = pytest.mark.slow

#: Type 2 attributes of the Patient and General Study modules (and Series' Laterality).
TYPE_2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName", "Laterality",
)  # fmt: skip
#: Names a log must never show: one-component, odd components, non-ASCII.
ODD_NAMES = ("Wandaleaf", "Quilliam^^^^^Jr", "Zbyszko-Brzęczyszczykiewicz")


def _defective_copies(study_dir: Path, target: Path, defect: str) -> list[Path]:
    target.mkdir(parents=True)
    paths = []
    for number, path in enumerate(sorted(study_dir.glob("*.dcm"))):
        dataset = dcmread(path)
        if defect == "missing":
            for keyword in TYPE_2:
                if keyword in dataset:
                    delattr(dataset, keyword)
        else:
            dataset.PatientName = ODD_NAMES[number % len(ODD_NAMES)]
            dataset.SpecificCharacterSet = "ISO_IR 192"
            dataset.PatientBirthDate = "19800000"
            dataset.StudyDate = "20241399"
            dataset.StudyTime = "256161"
            dataset.ReferringPhysicianName = "Dr Who"
        dataset.save_as(target / path.name, enforce_file_format=True)
        paths.append(target / path.name)
    return paths


@pytest.mark.parametrize("defect", ["missing", "malformed"])
def test_a_study_with_imperfect_headers_is_triaged_with_valid_outputs(
    defect: str,
    make_settings: Callable[..., Settings],
    sample_studies: list[Path],
    tmp_path: Path,
) -> None:
    files = _defective_copies(sample_studies[0], tmp_path / defect, defect)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    runtime = Runtime.create(make_settings())
    with log_scanner.watching(*ODD_NAMES) as watch, TriageService(runtime) as node:
        host, port = node.address or ("127.0.0.1", 0)
        target = Destination(name="node", ae_title="FRACTURE_TRIAGE", host=host, port=port)
        assert all(o.success for o in send_files(files, target, "MODALITY"))

        def triaged() -> bool:
            with runtime.sessions() as session:
                study = StudyRepository(session).get(study_uid)
                return study is not None and study.status is StudyStatus.TRIAGED

        assert wait_until(triaged, 240, step=0.2)
    assert not watch.caught, watch.caught
    with runtime.sessions() as session:
        run = RunRepository(session).latest_for_study(study_uid)
        assert run is not None and run.status is RunStatus.SUCCEEDED
        outputs = [runtime.output_dir / output.path for output in run.outputs]
        repaired = [
            e.detail for e in AuditLog(session).for_study(study_uid)
            if e.event_type == AuditEventType.HEADER_REPAIRED
        ]  # fmt: skip
    assert outputs
    for path in outputs:
        assert_dciodvfy_clean(path)
    if defect == "malformed":  # what was written empty is audited by keyword, never by value
        (detail,) = repaired
        assert {"PatientBirthDate", "StudyDate", "StudyTime"} <= set(detail["attributes"])
        assert "19800000" not in str(detail)
