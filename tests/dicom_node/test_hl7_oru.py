"""The worklist flag: ORU^R01 content, and MLLP delivery to a real loopback listener."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest
from pydicom import Dataset

from config.domain.findings import AlgorithmIdentity, StudyFinding
from dicom_node.hl7.oru import build_oru_r01, send_mllp
from tests.hl7_listener import run_mllp_listener
from tests.peers import free_port

NOW = dt.datetime(2024, 1, 2, 10, 30, tzinfo=dt.UTC)


def _oru(dx: Dataset, finding: StudyFinding, algorithm: AlgorithmIdentity) -> str:
    return build_oru_r01(dx, finding, algorithm, control_id="MSG0001", now=NOW)


def test_oru_carries_the_order_the_finding_and_the_probability(
    dx_image: Dataset, positive_finding: StudyFinding, synthetic_algorithm: AlgorithmIdentity
) -> None:
    message = hl7.parse(_oru(dx_image, positive_finding, synthetic_algorithm))
    msh = message.segment("MSH")
    assert str(msh[9]) == "ORU^R01^ORU_R01"
    assert str(msh[10]) == "MSG0001" and str(msh[12]) == "2.5.1"
    assert str(message.segment("PID")[3]) == dx_image.PatientID
    obr = message.segment("OBR")
    assert str(obr[2]) == str(obr[3]) == "ACC123"  # the accession number
    assert str(obr[25]) == "P"  # preliminary: an AI result nobody signed
    finding, probability, study = message.segments("OBX")
    assert str(finding[3]) == "125605004^Fracture of bone^SCT"
    assert str(finding[5]) == "FXLIKELY^fracture likely^99FXTRIAGE"
    assert str(probability[2]) == "NM" and float(str(probability[5])) == pytest.approx(0.83)
    assert str(study[5]) == positive_finding.study_instance_uid
    note = str(message.segment("NTE")[3])
    assert "AI result, not for diagnostic use" in note
    assert synthetic_algorithm.name in note and "SYNTHETIC" in note


def test_only_positive_studies_are_flagged(
    dx_image: Dataset,
    positive_finding: StudyFinding,
    negative_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    assert positive_finding.is_positive and not negative_finding.is_positive
    with pytest.raises(ValueError, match="not positive"):
        _oru(dx_image, negative_finding, algorithm)


def test_free_text_delimiters_are_escaped(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    dx_image.AccessionNumber = "A|B^C"
    message = hl7.parse(_oru(dx_image, positive_finding, algorithm))
    assert len(message.segment("OBR")) == 26
    assert "A\\F\\B\\S\\C" in str(message.segment("OBR")[2])


@pytest.mark.peers
def test_mllp_delivery_to_a_real_listener(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    message = _oru(dx_image, positive_finding, algorithm)
    with run_mllp_listener() as listener:
        result = send_mllp(message, "127.0.0.1", listener.port, timeout=10)
        assert result.success, result.error
        (received,) = listener.wait_for(1)
    assert hl7.parse(received).segment("OBR")[2] == hl7.parse(message).segment("OBR")[2]
    assert "MSA|AA|MSG0001" in (result.acknowledgement or "")


@pytest.mark.peers
@pytest.mark.parametrize(("code", "permanent"), [("AR", True), ("AE", False)])
def test_refusals_are_permanent_and_errors_transient(
    dx_image: Dataset,
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    code: str,
    permanent: bool,
) -> None:
    with run_mllp_listener(ack_code=code) as listener:
        result = send_mllp(
            _oru(dx_image, positive_finding, algorithm), "127.0.0.1", listener.port, timeout=10
        )
    assert not result.success and result.permanent is permanent
    assert code in (result.error or "")


def test_nobody_listening_is_a_transient_failure(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    result = send_mllp(
        _oru(dx_image, positive_finding, algorithm), "127.0.0.1", free_port(), timeout=5
    )
    assert not result.success and not result.permanent
    assert "MLLP" in (result.error or "")
