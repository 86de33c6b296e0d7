"""Real radiographs outside the intended use, with nothing in their headers to say so.

pydicom-data's chest CR and distal-tibia CR (NEMA samples) lose every anatomical hint of
their headers (Body Part Examined, descriptions, protocol, age), so only the pixels can
stop them. Sent through a real association to the node with the demo bundle, each study
is triaged as "not assessed" by the pixel gate, its outputs say so and pass dciodvfy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from config import Destination, Settings
from config.domain.findings import Gate
from db.models import RunStatus, StudyStatus
from db.repositories import RunRepository, StudyRepository
from dicom_node.delivery.dimse import send_files
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.peers import assert_dciodvfy_clean, nema_cr, wait_until

pytestmark = pytest.mark.slow

#: What could tell the header gate where a view is from, or whose it is.
HINTS = (
    "BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName",
    "AnatomicRegionSequence", "PatientAge", "PatientBirthDate", "ViewPosition",
)  # fmt: skip


def _without_hints(source: Path, target: Path) -> Path:
    dataset = dcmread(source)
    for keyword in HINTS:
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    dataset.save_as(target, enforce_file_format=True)
    return target


def test_real_chest_and_tibia_radiographs_are_not_assessed_by_their_pixels(
    make_settings: Callable[..., Settings], demo_bundle: Path, tmp_path: Path
) -> None:
    files = [
        _without_hints(nema_cr(name), tmp_path / f"{name}.dcm") for name in ("RG1_UNCR", "RG3_UNCR")
    ]
    studies = {str(dcmread(path, stop_before_pixels=True).StudyInstanceUID) for path in files}
    runtime = Runtime.create(make_settings(model_bundle_dir=demo_bundle))
    with TriageService(runtime) as node:
        host, port = node.address or ("127.0.0.1", 0)
        target = Destination(name="node", ae_title="FRACTURE_TRIAGE", host=host, port=port)
        assert all(outcome.success for outcome in send_files(files, target, "MODALITY"))

        def triaged() -> bool:
            with runtime.sessions() as session:
                found = [StudyRepository(session).get(uid) for uid in studies]
                return all(s is not None and s.status is StudyStatus.TRIAGED for s in found)

        assert wait_until(triaged, 240, step=0.2)
    for study_uid in studies:
        with runtime.sessions() as session:
            run = RunRepository(session).latest_for_study(study_uid)
            assert run is not None and run.status is RunStatus.SUCCEEDED
            assert run.study_result is not None
            assert run.study_result.not_assessed_gate == Gate.PIXELS
            assert run.study_result.level is None
            for image in run.image_results:
                assert image.not_assessed_gate == Gate.PIXELS, image.not_assessed_reason
                assert image.fracture_probability is None
            outputs = [runtime.output_dir / output.path for output in run.outputs]
        assert outputs
        for path in outputs:
            assert_dciodvfy_clean(path)
