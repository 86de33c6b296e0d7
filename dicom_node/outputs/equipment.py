"""IHE AI Results conventions shared by every object the node writes.

Each output names the algorithm that produced it in the Contributing Equipment
Sequence (manufacturer, model name = algorithm name, software version), with
the purpose of reference ``(109102, DCM, "Processing Equipment")``: the
algorithm processed the source images to make the result (``109103``
"Modifying Equipment" is for equipment that changed an existing instance, e.g.
a de-identifier, which the node never does). Series descriptions start with
``AI`` so PACS hanging protocols and worklist filters can pick AI series out,
and Series Date and Time say when the node made the series.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Final

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from config.domain.findings import AlgorithmIdentity
from dicom_node.outputs.codes import DEVICE_OBSERVER_NAME

__all__ = [
    "AI_SERIES_PREFIX",
    "PROCESSING_EQUIPMENT",
    "common_laterality",
    "contributing_equipment",
    "label_ai_series",
]

#: Every series the node writes has a description starting with this.
AI_SERIES_PREFIX: Final = "AI"

#: Purpose of reference of the algorithm in the Contributing Equipment Sequence.
PROCESSING_EQUIPMENT: Final = codes.DCM.ProcessingEquipment


def contributing_equipment(
    algorithm: AlgorithmIdentity, description: str
) -> list[hd.ContributingEquipment]:
    """The Contributing Equipment Sequence items of an output made by `algorithm`.

    Parameters
    ----------
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced the output.
    description: str
        Contribution Description, e.g. ``"AI fracture triage: planar ROIs"``.

    Returns
    -------
    list[highdicom.ContributingEquipment]
        One item: the algorithm as processing equipment.
    """
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError(f"algorithm must be an AlgorithmIdentity, got {type(algorithm).__name__}")
    return [
        hd.ContributingEquipment(
            manufacturer=algorithm.manufacturer,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            station_name=DEVICE_OBSERVER_NAME[:16],
            contribution_description=description[:64],
        )
    ]


def common_laterality(source_images: Sequence[Dataset]) -> str:
    """The side shared by all views (``"L"`` or ``"R"``), else ``""``.

    Laterality (General Series) is Type 2C for paired body parts: an output
    about several views takes their common side, or leaves it empty.
    """
    sides = {str(ds.get("ImageLaterality") or ds.get("Laterality") or "") for ds in source_images}
    side = sides.pop() if len(sides) == 1 else ""
    return side if side in ("L", "R") else ""


def label_ai_series(
    dataset: Dataset, description: str, series_created: datetime.datetime | None = None
) -> None:
    """Give an output its AI series description and the series' creation date and time.

    Parameters
    ----------
    dataset: pydicom.Dataset
        The output object; its Series Description, Series Date and Series Time
        are set in place.
    description: str
        Series Description; must start with :data:`AI_SERIES_PREFIX`.
    series_created: datetime.datetime | None, optional
        When the series was made (local time, as DICOM dates and times are).
        All instances of one series must share it, so callers building a
        series of several instances pass one value; ``None``: the instance's
        creation date and time.

    Raises
    ------
    ValueError
        When `description` does not start with ``"AI"``, or `series_created` is
        ``None`` and `dataset` has no Instance Creation Date and Time.
    """
    if not description.startswith(AI_SERIES_PREFIX):
        raise ValueError(
            f"series description {description!r} does not start with {AI_SERIES_PREFIX!r}"
        )
    dataset.SeriesDescription = description
    if series_created is not None:
        dataset.SeriesDate = series_created.strftime("%Y%m%d")
        dataset.SeriesTime = series_created.strftime("%H%M%S.%f")
        return
    if not dataset.get("InstanceCreationDate") or not dataset.get("InstanceCreationTime"):
        raise ValueError("dataset has no Instance Creation Date and Time to date its series by")
    dataset.SeriesDate = dataset.InstanceCreationDate
    dataset.SeriesTime = dataset.InstanceCreationTime
