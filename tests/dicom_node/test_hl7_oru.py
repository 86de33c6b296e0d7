"""The worklist flag: ORU^R01 content and its escaping (delivery: test_mllp.py)."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest
from pydicom import Dataset

from config.domain.findings import AlgorithmIdentity, StudyFinding
from dicom_node.hl7.oru import build_oru_r01, escape

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


def _hand_written_escape(text: str) -> str:
    """The escaping this module had before it used the hl7 package's (kept as the reference)."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
        .replace("\r", " ")
        .replace("\n", " ")
    )


@pytest.mark.parametrize("text", ["A|B^C&D~E\\F", "plain ACC-123", "line one\rline two\nthree", ""])
def test_the_hl7_package_escapes_as_the_hand_written_code_did(text: str) -> None:
    assert escape(text) == _hand_written_escape(text)
    message = hl7.parse(f"MSH|^~\\&|A\rNTE|1|L|{escape(text)}")
    assert message.unescape(str(message.segment("NTE")[3])) == text.replace("\r", " ").replace(
        "\n", " "
    )


def test_non_ascii_and_control_characters_are_escaped_readably() -> None:
    assert escape("Müller") == "M\\Xfc\\ller"  # no MSH-18: ASCII with hex escapes
    assert escape("a\x01b\tc") == "a b c"  # the package would write "\\X 1\\" here


def test_a_broken_birth_date_or_one_component_name_still_makes_a_message(
    dx_image: Dataset, positive_finding: StudyFinding, algorithm: AlgorithmIdentity
) -> None:
    dx_image.PatientName = "Doe"
    dx_image.AccessionNumber = ""
    message = hl7.parse(_oru(dx_image, positive_finding, algorithm))
    assert str(message.segment("PID")[5]) == "Doe"
    assert str(message.segment("OBR")[2]) == ""
