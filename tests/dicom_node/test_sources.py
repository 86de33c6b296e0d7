"""Imperfect source headers: repaired into what every builder accepts, reported by keyword."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
from pydicom import Dataset

from dicom_node.outputs.sources import COPIED_TYPE_2, repaired_header, repaired_headers


def test_a_clean_header_needs_no_repair_and_loses_only_its_pixels(dx_image: Dataset) -> None:
    repaired = repaired_header(dx_image)
    assert repaired.repaired == ()
    assert "PixelData" not in repaired.dataset and "PixelData" in dx_image
    for keyword in ("PatientName", "StudyDate", "ImagerPixelSpacing", "SOPInstanceUID"):
        assert repaired.dataset[keyword].value == dx_image[keyword].value
    assert repaired.dataset.file_meta.TransferSyntaxUID == dx_image.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientBirthDate", "19800000"),  # legacy "unknown month and day"
        ("StudyDate", "20241399"),
        ("StudyTime", "256161"),
        ("PatientSex", "U"),  # not M, F or O
        ("AccessionNumber", "A" * 30),  # longer than SH's 16
        ("ReferringPhysicianName", "a^b^c^d^e^f"),  # six components
        ("PatientName", "Doe^Jane\x07"),  # a control character
        ("StudyID", "S1\\S2"),  # two values where one is allowed
        ("FrameOfReferenceUID", "1.02.3"),  # not a UID: dropped, not emptied
    ],
)
def test_a_broken_value_is_written_empty_and_named_not_shown(
    dx_image: Dataset, keyword: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    setattr(dx_image, keyword, value)
    before = copy.deepcopy(dx_image)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repaired = repaired_header(dx_image)
    assert repaired.repaired == (keyword,)
    if keyword == "FrameOfReferenceUID":
        assert keyword not in repaired.dataset
    else:
        assert repaired.dataset[keyword].value in ("", None)
    assert dx_image == before, "the caller's dataset is not changed"
    said = caplog.text + " ".join(str(w.message) for w in caught)
    assert value not in said


def test_absent_type_2_attributes_are_added_empty(dx_image: Dataset) -> None:
    for keyword in COPIED_TYPE_2:
        delattr(dx_image, keyword)
    repaired = repaired_header(dx_image)
    assert set(repaired.repaired) == set(COPIED_TYPE_2)
    assert all(repaired.dataset[keyword].value in ("", None) for keyword in COPIED_TYPE_2)


def test_a_one_component_name_gets_its_caret_and_is_not_a_repair(dx_image: Dataset) -> None:
    dx_image.PatientName = "Doe"
    dx_image.ReferringPhysicianName = "Yamada=山田"
    repaired = repaired_header(dx_image)
    assert str(repaired.dataset.PatientName) == "Doe^"
    assert str(repaired.dataset.ReferringPhysicianName) == "Yamada^=山田^"
    assert repaired.repaired == ()
    assert repaired.dataset.SpecificCharacterSet == "ISO_IR 192"  # non-ASCII text: UTF-8


def test_an_unknown_character_set_is_reported(dx_image: Dataset) -> None:
    dx_image.SpecificCharacterSet = "ISO_IR 999"
    repaired = repaired_header(dx_image)
    assert repaired.repaired == ("SpecificCharacterSet",)
    assert "SpecificCharacterSet" not in repaired.dataset  # ASCII only: the default


def test_repair_is_idempotent_and_the_union_is_reported(dx_images: list[Dataset]) -> None:
    dx_images[0].PatientBirthDate = "19800000"
    del dx_images[1].StudyID
    headers, repaired = repaired_headers(dx_images)
    assert repaired == ("PatientBirthDate", "StudyID")
    assert repaired_headers(headers)[1] == ()
