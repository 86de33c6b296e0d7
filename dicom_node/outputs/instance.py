"""The identity of a new object every builder writes: its series, instance and dates.

Every output builder takes one :class:`NewInstance` instead of its own four or five
arguments, so they are checked once, here, at construction, with errors that name the
bad value; :meth:`NewInstance.check_new_among` checks that the series and instance are
not a source's (a result must never overwrite or join what it describes).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_node.outputs.equipment import AI_SERIES_PREFIX
from dicom_node.uids import check_new_uid, check_positive_number

__all__ = ["NewInstance"]


@dataclass(frozen=True)
class NewInstance:
    """Series Instance UID, SOP Instance UID, Series and Instance Number, series date.

    ``series_created`` is when the series was made (local time, as DICOM dates are);
    every instance of one series shares it (:meth:`next_in_series` keeps it).
    """

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int = 1
    series_created: datetime.datetime = field(default_factory=datetime.datetime.now)

    def __post_init__(self) -> None:
        check_new_uid("series_instance_uid", self.series_instance_uid)
        check_new_uid("sop_instance_uid", self.sop_instance_uid)
        if self.series_instance_uid == self.sop_instance_uid:
            raise ValueError(
                f"sop_instance_uid {self.sop_instance_uid} equals the series_instance_uid"
            )
        check_positive_number("series_number", self.series_number)
        check_positive_number("instance_number", self.instance_number)
        if not isinstance(self.series_created, datetime.datetime):
            raise TypeError(
                f"series_created must be a datetime, got {type(self.series_created).__name__}"
            )

    @classmethod
    def new_series(
        cls, series_number: int, created: datetime.datetime | None = None
    ) -> NewInstance:
        """The first instance of a new series, with fresh UIDs."""
        return cls(
            generate_uid(),
            generate_uid(),
            series_number,
            1,
            created if created is not None else datetime.datetime.now(),
        )

    def next_in_series(self) -> NewInstance:
        """The next instance of the same series: a fresh SOP Instance UID, number + 1."""
        return NewInstance(
            self.series_instance_uid,
            generate_uid(),
            self.series_number,
            self.instance_number + 1,
            self.series_created,
        )

    def check_new_among(self, sources: Iterable[Dataset], what: str = "source") -> None:
        """Raise ValueError if this series or instance is one of ``sources``'."""
        for ds in sources:
            if self.series_instance_uid == ds.get("SeriesInstanceUID"):
                raise ValueError(
                    f"series_instance_uid {self.series_instance_uid} is a {what} series; "
                    "the output needs a new one"
                )
            if self.sop_instance_uid == ds.get("SOPInstanceUID"):
                raise ValueError(
                    f"sop_instance_uid {self.sop_instance_uid} is a {what}'s SOP Instance UID"
                )

    def series_attributes(self, description: str) -> dict[str, Any]:
        """highdicom constructor arguments: the identity, description and series date/time.

        highdicom checks them (positive numbers, the series not dated after its content).
        """
        if not description.startswith(AI_SERIES_PREFIX):
            raise ValueError(
                f"series description {description!r} does not start with {AI_SERIES_PREFIX!r}"
            )
        return {
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "series_number": self.series_number,
            "instance_number": self.instance_number,
            "series_description": description,
            "series_date": self.series_created.date(),
            "series_time": self.series_created.time(),
        }
