"""IHE AI Results conventions shared by every object the node writes.

Each output names the algorithm that produced it in the Contributing Equipment
Sequence (manufacturer, model name = algorithm name, software version), with
the purpose of reference ``(109102, DCM, "Processing Equipment")``: the
algorithm processed the source images to make the result (``109103``
"Modifying Equipment" is for equipment that changed an existing instance, e.g.
a de-identifier, which the node never does). Series descriptions start with
``AI`` so PACS hanging protocols and worklist filters can pick AI series out,
and Series Date and Time say when the node made the series
(:class:`~dicom_node.outputs.instance.NewInstance`).
"""

from __future__ import annotations

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
    "laterality",
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


def laterality(source: Dataset) -> str | None:
    """The side a view shows, ``"L"`` or ``"R"`` (Image Laterality, else Laterality), or None.

    Other values (``"B"``, ``"U"``, empty, absent) name no single side.
    """
    side = str(source.get("ImageLaterality") or source.get("Laterality") or "").strip()
    return side if side in ("L", "R") else None


def common_laterality(source_images: Sequence[Dataset]) -> str | None:
    """The side shared by all views (``"L"`` or ``"R"``), else None.

    Laterality (General Series) is Type 2C for paired body parts: an output
    about several views takes their common side, or leaves it out.
    """
    sides = {laterality(ds) for ds in source_images}
    return sides.pop() if len(sides) == 1 else None
