"""IHE AI conventions every output shares: AI series description, series date and time,
one validated new-instance value."""

from __future__ import annotations

import datetime

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.findings import AlgorithmIdentity, StudyFinding
from dicom_node.outputs.instance import NewInstance
from tests.dicom_node.builders import BUILDERS

CREATED = datetime.datetime(2025, 3, 4, 5, 6, 7, 890000)


@pytest.mark.parametrize("name", BUILDERS)
def test_every_output_is_an_ai_series_dated_when_it_was_made(
    name: str,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    new = NewInstance(generate_uid(), generate_uid(), 9000, 3, CREATED)
    made = BUILDERS[name](dx_images, positive_finding, algorithm, new)
    assert made.SeriesDescription.startswith("AI")
    assert (str(made.SeriesDate), str(made.SeriesTime)) == ("20250304", "050607.890000")
    assert str(made.SeriesDate) != dx_images[0].StudyDate
    assert (made.SeriesInstanceUID, made.SOPInstanceUID) == (
        new.series_instance_uid,
        new.sop_instance_uid,
    )
    assert (made.SeriesNumber, made.InstanceNumber) == (9000, 3)


#: A rejection note's sources are our own objects (tested in test_rejection_note.py).
FROM_SOURCES = [name for name in BUILDERS if name != "rejection-note"]


@pytest.mark.parametrize("name", FROM_SOURCES)
def test_no_output_joins_a_source_series_or_takes_a_source_uid(
    name: str,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    source = dx_images[0]
    for new in (
        NewInstance(source.SeriesInstanceUID, generate_uid(), 9000),
        NewInstance(generate_uid(), source.SOPInstanceUID, 9000),
    ):
        with pytest.raises(ValueError, match="is a source"):
            BUILDERS[name](dx_images, positive_finding, algorithm, new)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("not-a-uid", "1.2.3", 1, 1), "series_instance_uid is not a valid UID: 'not-a-uid'"),
        (("1.2.3", "1.2.3.abc", 1, 1), "sop_instance_uid is not a valid UID: '1.2.3.abc'"),
        (("1.2.3", "1.2.4", 0, 1), "series_number must be a positive integer, got 0"),
        (("1.2.3", "1.2.4", 1, True), "instance_number must be a positive integer, got True"),
        (("1.2.3", "1.2.3", 1, 1), "sop_instance_uid 1.2.3 equals the series_instance_uid"),
    ],
)
def test_new_instance_is_checked_at_construction(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        NewInstance(*arguments)


def test_new_instance_numbers_the_instances_of_one_series() -> None:
    first = NewInstance.new_series(9002, CREATED)
    second = first.next_in_series()
    assert second.series_instance_uid == first.series_instance_uid
    assert second.sop_instance_uid != first.sop_instance_uid
    assert (second.instance_number, second.series_created) == (2, CREATED)
    with pytest.raises(ValueError, match="'Fracture report'"):
        first.series_attributes("Fracture report")
