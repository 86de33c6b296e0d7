"""What the triage tasks hand each other: UIDs, paths and numbers in typed values.

Pixel data never travels through Prefect: tensors and heatmaps go through files in
the batch's work directory, and these values name them. Nothing here holds patient
data, so Prefect's state (and its database) holds none either.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from config.domain.findings import FractureType, NotAssessed
from models.runtime.preprocessing import Geometry

Box = tuple[int, int, int, int]  # (row_min, col_min, row_max, col_max), model-input pixels


class TriageStatus(StrEnum):
    """How the triage of one study ended (what the flows return per study)."""

    TRIAGED = "triaged"
    NOT_TRIAGED = "not_triaged"  # nothing in the study a model can read
    UNCHANGED = "unchanged"  # the same model triaged the same instances already
    FAILED = "failed"
    SKIPPED = "skipped"  # not ready, or another process has it


@dataclass(frozen=True)
class SourceView:
    """One triageable instance of a study, as stored."""

    study_instance_uid: str
    sop_instance_uid: str
    sha256: str
    path: str  # absolute path of the stored file


@dataclass(frozen=True)
class UnreadableView:
    """A view whose pixel data could not be turned into a model input."""

    study_instance_uid: str
    sop_instance_uid: str
    reason: str  # the error's type and message, never patient data


@dataclass(frozen=True)
class PreprocessedBatch:
    """The decoded views of a batch: the tensor file and, in its order, views and geometry."""

    inputs_path: str  # (N, 1, S, S) float32 .npy
    views: tuple[SourceView, ...]
    geometries: tuple[Geometry, ...]
    unreadable: tuple[UnreadableView, ...] = ()


@dataclass(frozen=True)
class RegionResult:
    """Stage 1 and the pixel gate on one view: one of the bundle's regions, or (None) why
    the view has none; stage 1's confidence either way."""

    region: str | None
    probability: float
    rejection_reason: str | None = None
    #: Each region's fracture probability from the same pass (a shared-backbone bundle),
    #: so stage 2 needs no pass of its own; None otherwise.
    fracture_probabilities: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if (self.region is None) == (self.rejection_reason is None):
            raise ValueError(
                f"stage 1 named region {self.region!r} with rejection {self.rejection_reason!r}:"
                " a view has exactly one of them"
            )


@dataclass(frozen=True)
class Explanations:
    """Grad-CAM of a batch, in the batch's order: hottest boxes, and the heatmaps' file."""

    boxes: tuple[Box | None, ...]
    cams_path: str  # (N, S, S) float32 .npy, zeros for views not explained


@dataclass(frozen=True)
class FractureResults:
    """Stage 2 for a batch, in the batch's order: probability, hottest box, heatmaps' file,
    and the type head's call where the bundle has one."""

    probabilities: tuple[float | None, ...]
    boxes: tuple[Box | None, ...]
    cams_path: str  # (N, S, S) float32 .npy, zeros for views without a region
    types: tuple[FractureType | None, ...] = ()  # the type head's call on flagged views
    detected: tuple[bool, ...] = ()  # True where the box is the detector's, not Grad-CAM's


@dataclass(frozen=True)
class StudyViews:
    """The views of one study of a batch, with their places in the batch's files.

    A view that could not be decoded has no geometry and no place (index -1).
    """

    study_instance_uid: str
    views: tuple[SourceView, ...]
    geometries: tuple[Geometry | None, ...]
    indices: tuple[int, ...]  # rows of PreprocessedBatch's tensor and FractureResults


@dataclass(frozen=True)
class TriageSummary:
    """What the triage flows return for one study: UIDs, numbers and paths only."""

    study_instance_uid: str
    status: TriageStatus
    run_id: int | None = None
    region: str | None = None
    fracture_probability: float | None = None
    level: str | None = None
    outputs: tuple[str, ...] = ()
    undelivered: int = 0


@dataclass(frozen=True)
class HeaderScreen:
    """The header gate's verdict on one view, before any pixel is read."""

    sop_instance_uid: str
    not_assessed: NotAssessed | None = None  # the header says the view is outside
    regions: tuple[str, ...] = ()  # assessed regions the header names (for conflicts)
