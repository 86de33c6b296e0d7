"""Names shared by the models, the DICOM outputs, the database and the CLI, defined once."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

#: Anatomical regions of the demo bundle's fracture models (MURA's seven upper-extremity
#: regions). A bundle names its own regions; this is the default set.
REGIONS: tuple[str, ...] = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")

#: Stage-1 outcome for anything that is none of a bundle's regions.
UNSUPPORTED = "unsupported"


def region_classes(regions: tuple[str, ...]) -> tuple[str, ...]:
    """Stage 1's classes in network output order: a bundle's regions, then unsupported."""
    return (*regions, UNSUPPORTED)


#: Stage-1 classes of the default regions.
REGION_CLASSES: tuple[str, ...] = region_classes(REGIONS)

#: Said by every result object and burned into every picture.
AI_RESULT_DISCLAIMER: Final = "AI result, not for diagnostic use"
#: Said by every result of a model trained on synthetic data.
SYNTHETIC_DATA_WARNING: Final = "TRAINED ON SYNTHETIC DATA - NOT FOR CLINICAL USE"

#: Coding Scheme Designator of this project's private codes (triage levels, reasons).
PRIVATE_CODING_SCHEME: Final = "99FXTRIAGE"
#: Its Coding Scheme Name.
PRIVATE_CODING_SCHEME_NAME: Final = "fracture-triage private codes"


class LabelMeaning(StrEnum):
    """What a positive training label meant, so what a bundle's positive output means."""

    FRACTURE = "fracture"  # fracture labels (FracAtlas, GRAZPEDWRI-DX, a site's own)
    # MURA's labels: any abnormality (fractures, hardware, degenerative disease, lesions).
    ABNORMALITY = "abnormality"

    @property
    def description(self) -> str:
        """One sentence for the model card."""
        if self is LabelMeaning.FRACTURE:
            return "a positive training label meant a fracture."
        return (
            "a positive training label meant any abnormality (fractures, orthopaedic "
            "hardware, degenerative disease, lesions: MURA's labels), not a fracture."
        )


class FractureLevel(StrEnum):
    """Three-level triage result, from the bundle's two operating points."""

    NOT_SUSPECTED = "no fracture suspected"
    SUSPECTED = "fracture suspected"  # at or above the high-sensitivity operating point
    LIKELY = "fracture likely"  # at or above the high-specificity operating point

    @property
    def is_positive(self) -> bool:
        """Suspected or likely: the study goes on the worklist, views get a box."""
        return self is not FractureLevel.NOT_SUSPECTED

    @property
    def code_value(self) -> str:
        """The level's code in :data:`PRIVATE_CODING_SCHEME` (the SR and HL7 both write it)."""
        return _LEVEL_CODE_VALUES[self]


class BoxSource(StrEnum):
    """What drew a flagged view's box: Grad-CAM's hottest region or the bundle's detector."""

    GRAD_CAM = "Grad-CAM"
    DETECTOR = "detector"


_LEVEL_CODE_VALUES = {
    FractureLevel.NOT_SUSPECTED: "FXNOTSUSPECTED",
    FractureLevel.SUSPECTED: "FXSUSPECTED",
    FractureLevel.LIKELY: "FXLIKELY",
}


def is_positive(level: FractureLevel | None) -> bool:
    """Whether ``level`` flags a fracture (None, a view or study not assessed, does not)."""
    return level is not None and level.is_positive


class OutputKind(StrEnum):
    """What a triage run produces; the values are stored in the database."""

    SR = "sr"  # TID 1500 Comprehensive 3D SR
    SUMMARY = "summary"  # the study's summary Secondary Capture
    ANNOTATED = "sc"  # an annotated Secondary Capture of one view
    GSPS = "gsps"  # Grayscale Softcopy Presentation State over the views
    PARAMETRIC_MAP = "pm"  # a view's Grad-CAM heatmap as a Parametric Map
    REJECTION_NOTE = "kos"  # IOCM Key Object Selection withdrawing a previous run's objects
    WORKLIST_FLAG = "hl7"  # HL7 v2 ORU^R01 for a RIS

    @property
    def is_dicom(self) -> bool:
        """A DICOM object of the study (sent to DICOM destinations), not an HL7 message."""
        return self is not OutputKind.WORKLIST_FLAG

    @property
    def is_withdrawable(self) -> bool:
        """A later run's rejection note withdraws it (the note itself and HL7 never)."""
        return self.is_dicom and self is not OutputKind.REJECTION_NOTE
