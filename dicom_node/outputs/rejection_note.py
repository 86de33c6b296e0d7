"""IHE IOCM rejection note: withdraw superseded AI results the way PACS understand.

When a study is triaged again (a new model version, a deliberate reprocess), the
previous run's SR, Secondary Captures and presentation states are superseded. IHE
Imaging Object Change Management (IOCM) withdraws objects with a Key Object
Selection document whose title is ``(113001, DCM, "Rejected for Quality
Reasons")`` and whose content references every rejected instance; an IOCM-aware
PACS hides or deletes them, any other PACS at least shows the note in the study.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from config.domain.findings import AlgorithmIdentity
from dicom_node.outputs.equipment import AI_SERIES_PREFIX, contributing_equipment
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.sources import check_types, quiet_warnings
from dicom_node.outputs.sr import device_observer

__all__ = [
    "REJECTED_FOR_QUALITY_REASONS",
    "REJECTION_NOTE_SERIES_DESCRIPTION",
    "build_rejection_note",
]

logger = logging.getLogger(__name__)

#: IOCM's document title for objects withdrawn because better ones replace them.
REJECTED_FOR_QUALITY_REASONS: Final = codes.DCM.RejectedForQualityReasons

#: Series Description of rejection notes (starts with "AI", like every series we write).
REJECTION_NOTE_SERIES_DESCRIPTION: Final = f"{AI_SERIES_PREFIX} superseded results withdrawn"


def build_rejection_note(
    rejected: Sequence[Dataset],
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
    *,
    reason: str,
) -> hd.ko.KeyObjectSelectionDocument:
    """Build the IOCM rejection note for superseded AI objects of one study.

    ``rejected`` are the superseded objects (headers suffice), all of one study, our
    own (their headers need no repair); ``instance`` may be none of theirs; ``reason``
    (the Key Object Description) says why, e.g. the new run. The note is titled
    "Rejected for Quality Reasons" and references every rejected object; an empty or
    multi-study ``rejected``, an empty reason or a taken UID raise ValueError.
    """
    check_types(algorithm=(algorithm, AlgorithmIdentity), instance=(instance, NewInstance))
    if isinstance(rejected, Dataset) or not rejected:
        raise ValueError("rejected must be a non-empty sequence of datasets")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"rejected objects span {len(studies)} studies: {sorted(studies)}")
    if not reason or not reason.strip():
        raise ValueError("reason must be a non-empty text")
    instance.check_new_among(rejected, "rejected object")
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=list(rejected),
        observer_device_context=device_observer(algorithm),
        description=reason[:1024],
    )
    with quiet_warnings("building the rejection note"):
        note = hd.ko.KeyObjectSelectionDocument(
            evidence=list(rejected),
            content=content,
            manufacturer=algorithm.manufacturer,
            contributing_equipment=contributing_equipment(
                algorithm, "AI fracture triage: superseded results withdrawn"
            ),
            **instance.series_attributes(REJECTION_NOTE_SERIES_DESCRIPTION),
        )
    logger.info(
        "built rejection note %s for study %s: %d object(s) withdrawn",
        instance.sop_instance_uid,
        next(iter(studies)),
        len(rejected),
    )
    return note
