"""IHE IOCM rejection note: withdraw superseded AI results the way PACS understand.

When a study is triaged again (a new model version, a deliberate reprocess), the
previous run's SR, Secondary Captures and presentation states are superseded. IHE
Imaging Object Change Management (IOCM) withdraws objects with a Key Object
Selection document whose title is ``(113001, DCM, "Rejected for Quality
Reasons")`` and whose content references every rejected instance; an IOCM-aware
PACS hides or deletes them, any other PACS at least shows the note in the study.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Final

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from config.domain.findings import AlgorithmIdentity
from dicom_node.outputs.equipment import AI_SERIES_PREFIX, contributing_equipment, label_ai_series
from dicom_node.outputs.sr import device_observer
from dicom_node.uids import check_new_uid, check_positive_number

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
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    reason: str,
    series_created: dt.datetime | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    """Build the IOCM rejection note for superseded AI objects of one study.

    Parameters
    ----------
    rejected: Sequence[pydicom.Dataset]
        The superseded objects (headers suffice), all of one study.
    algorithm: config.domain.findings.AlgorithmIdentity
        The model whose new results supersede them (the note's observer).
    series_instance_uid, sop_instance_uid: str
        UIDs of the new series and document; neither may be a rejected object's.
    series_number, instance_number: int
        Positive numbers of the new series and document.
    reason: str
        Why they are withdrawn (the Key Object Description), e.g. the new run.
    series_created: datetime.datetime, optional
        Series Date and Time (local time); the note's creation time when omitted.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        Titled "Rejected for Quality Reasons", referencing every rejected object.

    Raises
    ------
    ValueError
        If `rejected` is empty, spans several studies, or a new UID is not new.
    """
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError(f"algorithm must be an AlgorithmIdentity, got {type(algorithm).__name__}")
    if isinstance(rejected, Dataset) or not rejected:
        raise ValueError("rejected must be a non-empty sequence of datasets")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"rejected objects span {len(studies)} studies: {sorted(studies)}")
    if not reason or not reason.strip():
        raise ValueError("reason must be a non-empty text")
    check_new_uid("series_instance_uid", series_instance_uid)
    check_new_uid("sop_instance_uid", sop_instance_uid)
    check_positive_number("series_number", series_number)
    check_positive_number("instance_number", instance_number)
    taken = {str(ds.SOPInstanceUID) for ds in rejected} | {
        str(ds.SeriesInstanceUID) for ds in rejected
    }
    for name, value in (
        ("series_instance_uid", series_instance_uid),
        ("sop_instance_uid", sop_instance_uid),
    ):
        if value in taken:
            raise ValueError(f"{name} {value} belongs to a rejected object")

    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=list(rejected),
        observer_device_context=device_observer(algorithm),
        description=reason[:1024],
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=list(rejected),
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        contributing_equipment=contributing_equipment(
            algorithm, "AI fracture triage: superseded results withdrawn"
        ),
    )
    label_ai_series(note, REJECTION_NOTE_SERIES_DESCRIPTION, series_created)
    logger.info(
        "built rejection note %s for study %s: %d object(s) withdrawn",
        sop_instance_uid,
        next(iter(studies)),
        len(rejected),
    )
    return note
