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
from dicom_node.outputs.sources import quiet_warnings
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

    Parameters
    ----------
    rejected: Sequence[pydicom.Dataset]
        The superseded objects (headers suffice), all of one study; our own
        objects, so their headers need no repair.
    algorithm: config.domain.findings.AlgorithmIdentity
        The model whose new results supersede them (the note's observer).
    instance: dicom_node.outputs.instance.NewInstance
        The note's series and instance; neither may be a rejected object's.
    reason: str
        Why they are withdrawn (the Key Object Description), e.g. the new run.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        Titled "Rejected for Quality Reasons", referencing every rejected object.

    Raises
    ------
    ValueError
        If `rejected` is empty, spans several studies, or the new series or
        instance is a rejected object's.
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
