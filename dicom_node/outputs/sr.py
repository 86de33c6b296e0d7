"""The triage result as a DICOM Structured Report (TID 1500 Measurement Report).

:func:`build_triage_sr` turns a :class:`~config.domain.findings.StudyFinding` into
a Comprehensive 3D SR in the source study (new series), following the IHE AI
Results profile: a device observer (the algorithm), the study's result in TID 1500's
"Qualitative Evaluations" container, one measurement group per source image under
"Imaging Measurements", and references to the source images.

The study's result (coded): the "Fracture of bone" finding (present, absent or
undetermined), the finding site (with the laterality its views share), the triage
level, or for a study not assessed the coded reason; then sentences for human readers
(the result with its probability, the operating points, the notices).

A view's group holds the same finding for the view, its fracture probability and
stage 1's probability of the region (NUMs, unit 1), the level, TID 4019 Algorithm
Identification and a sentence; a view not assessed holds "undetermined" and the coded
reason instead. With ``include_rois`` (the default) every view's group is a TID 1410
planar ROI group: a closed POLYLINE around the finding box (the detector's or Grad-CAM's)
on a positive view, around the whole view otherwise, and the probability inferred from
that region (TID 300's INFERRED FROM SCOORD), so viewers such as OHIF draw and list every
group. A re-run's report names the report it supersedes in the Predecessor Documents
Sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from config.domain.findings import (
    AlgorithmIdentity,
    BoundingBox,
    FractureType,
    ImageFinding,
    NotAssessed,
    OperatingPoints,
    StudyFinding,
)
from config.domain.vocabulary import (
    AI_RESULT_DISCLAIMER,
    PRIVATE_CODING_SCHEME,
    PRIVATE_CODING_SCHEME_NAME,
    SYNTHETIC_DATA_WARNING,
    FractureLevel,
)
from dicom_node.outputs.codes import (
    COMMENT,
    DEVICE_OBSERVER_NAME,
    FINDING_SITE,
    FRACTURE_LEVEL,
    FRACTURE_OF_BONE,
    FRACTURE_TYPE,
    FRACTURE_TYPE_PROBABILITY,
    LATERALITY,
    LATERALITY_CONCEPT,
    LEVEL_CODES,
    NO_UNITS,
    NOT_ASSESSED_REASON,
    PLAIN_RADIOGRAPHY,
    PROBABILITY,
    QUALITATIVE_EVALUATIONS,
    REASON_CODES,
    REGION_PROBABILITY,
    UNDETERMINED,
    finding_site,
    fracture_type_code,
    presence,
)
from dicom_node.outputs.equipment import common_laterality, contributing_equipment, laterality
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.sources import check_types, quiet_warnings, study_headers
from dicom_node.outputs.wording import (
    finding_sentence,
    fracture_type_sentence,
    not_assessed_sentence,
    operating_points_sentence,
)
from dicom_node.uids import derived_uid

__all__ = [
    "SR_SERIES_DESCRIPTION",
    "box_polyline",
    "build_triage_sr",
    "device_observer",
    "device_observer_uid",
]

logger = logging.getLogger(__name__)

#: Series Description of the SR series (starts with "AI", as PACS filters expect).
SR_SERIES_DESCRIPTION = "AI fracture triage report"

#: Modalities whose TID 1603 image library descriptors highdicom writes.
_PROJECTION_MODALITIES = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})

Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
)


def device_observer_uid(algorithm: AlgorithmIdentity) -> str:
    """Return the Device Observer UID of an algorithm.

    The UID is derived from the algorithm's name and version (a ``2.25`` UID
    of a name-based UUID), so every report of one model version names the
    same device.
    """
    return derived_uid(DEVICE_OBSERVER_NAME, algorithm.name, algorithm.version)


def build_triage_sr(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    instance: NewInstance,
    *,
    institution_name: str | None = None,
    include_rois: bool = True,
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the triage Structured Report of a study: a Comprehensive 3D SR in a new
    series, same patient and study as the sources, COMPLETE, UNVERIFIED and PRELIMINARY
    (an AI result a reader has not signed).

    ``source_images`` are the study's images (headers suffice; every image of
    ``finding`` among them); ``include_rois`` gives each positive view with a box a
    TID 1410 planar ROI (else plain TID 1501 groups); ``previous_versions`` are earlier
    reports this one supersedes (Predecessor Documents Sequence). Wrong inputs raise
    TypeError or ValueError naming the value.
    """
    sources = study_headers(source_images, finding, algorithm, instance)
    previous = _check_previous_versions(previous_versions, finding.study_instance_uid)
    groups = _view_groups(finding, algorithm, sources, instance, include_rois)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=PLAIN_RADIOGRAPHY,
        imaging_measurements=groups,
        referenced_images=[_library_view(ds) for ds in sources.values()],
    )
    # highdicom's MeasurementReport takes no Qualitative Evaluations container (TID 1500
    # row 12): it is appended to the document's root, its last row.
    report[0].ContentSequence.append(_study_evaluations(finding, algorithm, sources))
    with quiet_warnings("building the triage SR"):
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(sources.values()),
            content=report,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=institution_name,
            previous_versions=previous or None,
            contributing_equipment=contributing_equipment(algorithm, "AI fracture triage report"),
            coding_schemes=[_private_scheme(algorithm)],
            **instance.series_attributes(SR_SERIES_DESCRIPTION),
        )
    logger.info(
        "built triage SR %s (series %s) for study %s from %d image(s): region %s, level %s",
        instance.sop_instance_uid,
        instance.series_instance_uid,
        finding.study_instance_uid,
        len(sources),
        finding.region,
        finding.level,
    )
    return sr


def _private_scheme(algorithm: AlgorithmIdentity) -> CodingSchemeIdentificationItem:
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_CODING_SCHEME,
        name=PRIVATE_CODING_SCHEME_NAME,
        responsible_organization=algorithm.manufacturer,
    )


def device_observer(algorithm: AlgorithmIdentity) -> hd.sr.ObserverContext:
    """The algorithm as the device observer of a report or key object selection."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid(algorithm),
        name=DEVICE_OBSERVER_NAME,
        manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}",
    )
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device
    )


def _observation_context(algorithm: AlgorithmIdentity) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(observer_device_context=device_observer(algorithm))


@dataclass(frozen=True)
class _Result:
    """What one group says: assessed (region ... points) or not (why)."""

    region: str | None
    probability: float | None
    level: FractureLevel | None
    points: OperatingPoints | None
    not_assessed: NotAssessed | None
    side: str | None = None
    region_probability: float | None = None
    fracture_type: FractureType | None = None

    @classmethod
    def of_image(cls, image: ImageFinding, source: Dataset) -> _Result:
        return cls(
            image.region,
            image.fracture_probability,
            image.level,
            image.operating_points,
            image.not_assessed,
            laterality(source),
            image.region_probability if image.assessed else None,
            image.fracture_type,
        )

    @classmethod
    def of_study(cls, finding: StudyFinding, sources: Sequence[Dataset]) -> _Result:
        return cls(
            finding.region,
            finding.fracture_probability,
            finding.level,
            finding.operating_points,
            finding.not_assessed,
            common_laterality(sources),
        )


def _view_groups(
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    sources: dict[str, Dataset],
    instance: NewInstance,
    include_rois: bool,
) -> list[Group]:
    """One measurement group per image, in the finding's order."""
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, manufacturer=algorithm.manufacturer
    )
    groups: list[Group] = []
    for index, image in enumerate(finding.images, start=1):
        source = sources[image.sop_instance_uid]
        groups.append(
            _group(
                tracking=hd.sr.TrackingIdentifier(
                    uid=derived_uid(instance.sop_instance_uid, image.sop_instance_uid),
                    identifier=_view_label(index, source),
                ),
                result=_Result.of_image(image, source),
                algorithm_id=algorithm_id,
                images=[source],
                roi=_roi(image, source) if include_rois else None,
            )
        )
    return groups


def _study_evaluations(
    finding: StudyFinding, algorithm: AlgorithmIdentity, sources: dict[str, Dataset]
) -> hd.sr.ContainerContentItem:
    """The study's result: TID 1500's Qualitative Evaluations, coded items then sentences."""
    assessed_views = [
        sources[image.sop_instance_uid]
        for image in finding.images
        if image.assessed and image.region == finding.region
    ]
    result = _Result.of_study(finding, assessed_views)
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = []
    if result.not_assessed is not None:
        items.append(hd.sr.CodeContentItem(FRACTURE_OF_BONE, UNDETERMINED, contains))
        reason = REASON_CODES[result.not_assessed.gate]
        items.append(hd.sr.CodeContentItem(NOT_ASSESSED_REASON, reason, contains))
    else:
        assert result.region and result.level
        items.append(hd.sr.CodeContentItem(FRACTURE_OF_BONE, presence(result.level), contains))
        site = hd.sr.CodeContentItem(FINDING_SITE, finding_site(result.region), contains)
        side = LATERALITY.get(result.side or "")
        if side is not None:
            site.ContentSequence = [
                hd.sr.CodeContentItem(
                    LATERALITY_CONCEPT, side, hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD
                )
            ]
        items.append(site)
        items.append(hd.sr.CodeContentItem(FRACTURE_LEVEL, LEVEL_CODES[result.level], contains))
    notices = [AI_RESULT_DISCLAIMER]
    if algorithm.trained_on_synthetic_data:
        notices.append(SYNTHETIC_DATA_WARNING)
    for sentence in [f"Study: {_sentence(result)}", *_points(result), *notices]:
        items.append(
            hd.sr.TextContentItem(name=COMMENT, value=sentence, relationship_type=contains)
        )
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=contains)
    container.ContentSequence = items
    return container


def _view_label(index: int, source: Dataset) -> str:
    """The tracking identifier of a view's group, e.g. ``"view 1 (PA)"``."""
    position = str(source.get("ViewPosition") or "").strip()
    return f"view {index} ({position})" if position else f"view {index}"


def box_polyline(box: BoundingBox, rows: int, columns: int) -> np.ndarray:
    """The closed POLYLINE (column, row) of a box, for SCOORD and GSPS graphics.

    The box holds 0-based inclusive pixel indices; DICOM image coordinates put
    (0, 0) at the top left corner of the top left pixel, so the outline runs
    along the outer pixel edges: from (col_min, row_min) to (col_max + 1,
    row_max + 1), clipped to the image. Five points, the last equal to the first.
    """
    check_types(box=(box, BoundingBox))
    left = min(float(box.col_min), columns - 1.0)
    top = min(float(box.row_min), rows - 1.0)
    right = min(float(box.col_max) + 1.0, float(columns))
    bottom = min(float(box.row_max) + 1.0, float(rows))
    return np.array(
        [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]],
        dtype=np.float32,
    )


def _roi(image: ImageFinding, source: Dataset) -> hd.sr.ImageRegion | None:
    """The planar ROI of a view: its box where positive with one, else the whole view
    (None where the source does not say its size)."""
    if not (source.get("Rows") and source.get("Columns")):
        return None
    rows, columns = int(source.Rows), int(source.Columns)
    box = image.box if image.is_positive and image.box else None
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(box or BoundingBox(0, 0, rows - 1, columns - 1), rows, columns),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )


def _group(
    *,
    tracking: hd.sr.TrackingIdentifier,
    result: _Result,
    algorithm_id: hd.sr.AlgorithmIdentification,
    images: Sequence[Dataset],
    notices: Sequence[str] = (),
    roi: hd.sr.ImageRegion | None = None,
) -> Group:
    """One group: the fracture finding of a study or of one image.

    TID 1501 with references to its source images, or, with `roi`, TID 1410
    whose image region both outlines the finding and names its source image.
    """
    content = {
        "tracking_identifier": tracking,
        "finding_type": FRACTURE_OF_BONE,
        "algorithm_id": algorithm_id,
        **(_not_assessed(result.not_assessed) if result.not_assessed else _assessed(result)),
    }
    if roi is not None:
        group: Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=roi, **content
        )
        _infer_first_number_from_region(group)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=ds.SOPClassUID,
                    referenced_sop_instance_uid=ds.SOPInstanceUID,
                )
                for ds in images
            ],
            **content,
        )
    sentences = [_sentence(result), *(_points(result)), *notices]
    # highdicom's TID 1501 groups take no TEXT items: the sentences are appended as
    # CONTAINS TEXT "Comment" items, which TID 1501's qualitative evaluations allow.
    for sentence in sentences:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=COMMENT,
                value=sentence,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _infer_first_number_from_region(group: Group) -> None:
    """TID 300's pattern: the first NUM (the fracture probability) INFERRED FROM the
    group's image region. Viewers list a planar ROI group by its first NUM's region
    (OHIF, docs/ohif.md); highdicom's Measurement takes no region, so it is added here."""
    items = group[0].ContentSequence
    region = next(item for item in items if item.ValueType == "SCOORD")
    number = next((item for item in items if item.ValueType == "NUM"), None)
    if number is None:  # a view not assessed has no probability
        return
    inferred = deepcopy(region)
    inferred.RelationshipType = hd.sr.RelationshipTypeValues.INFERRED_FROM.value
    number.ContentSequence = [*number.get("ContentSequence", []), inferred]


def _assessed(result: _Result) -> dict[str, object]:
    """The content of an assessed group: site, probabilities, presence and coded level."""
    assert result.region and result.level and result.probability is not None
    side = LATERALITY.get(result.side or "")
    measurements = [_number(PROBABILITY, result.probability)]
    if result.region_probability is not None:
        measurements.append(_number(REGION_PROBABILITY, result.region_probability))
    evaluations = [
        hd.sr.QualitativeEvaluation(name=FRACTURE_OF_BONE, value=presence(result.level)),
        hd.sr.QualitativeEvaluation(name=FRACTURE_LEVEL, value=LEVEL_CODES[result.level]),
    ]
    kind = result.fracture_type
    if kind is not None:  # only ever on a flagged view (ImageFinding checks it)
        measurements.append(_number(FRACTURE_TYPE_PROBABILITY, kind.probability))
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=FRACTURE_TYPE, value=fracture_type_code(kind.name))
        )
    return {
        "finding_sites": [
            hd.sr.FindingSite(anatomic_location=finding_site(result.region), laterality=side)
        ],
        "measurements": measurements,
        "qualitative_evaluations": evaluations,
    }


def _not_assessed(why: NotAssessed) -> dict[str, object]:
    """The content of a group not assessed: undetermined, and the coded reason."""
    return {
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(name=FRACTURE_OF_BONE, value=UNDETERMINED),
            hd.sr.QualitativeEvaluation(name=NOT_ASSESSED_REASON, value=REASON_CODES[why.gate]),
        ]
    }


def _number(name: Code, value: float) -> hd.sr.Measurement:
    # Three decimals: finer than the operating points (two decimals), short to read.
    return hd.sr.Measurement(name=name, value=round(float(value), 3), unit=NO_UNITS)


def _sentence(result: _Result) -> str:
    if result.not_assessed is not None:
        return not_assessed_sentence(result.not_assessed)
    assert result.region and result.level and result.probability is not None
    return finding_sentence(result.region, result.level, result.probability, result.side)


def _points(result: _Result) -> list[str]:
    """The operating points, and a flagged view's fracture type, as sentences."""
    sentences = [operating_points_sentence(result.points)] if result.points is not None else []
    if result.fracture_type is not None:
        sentences.append(fracture_type_sentence(result.fracture_type))
    return sentences


def _library_view(ds: Dataset) -> Dataset:
    """The attributes of a source image that the TID 1600 Image Library describes.

    highdicom writes the TID 1603 projection radiography descriptors from
    Patient Orientation and Imager Pixel Spacing, which radiographs often lack
    (both are Type 2 or 3 for CR). Those descriptors are optional, so an image
    without them is described by modality, rows and columns only.
    """
    view = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    modality = str(ds.get("Modality", "OT"))
    if modality in _PROJECTION_MODALITIES:
        orientation = ds.get("PatientOrientation")
        spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
        if _has_two_values(orientation) and _has_two_values(spacing):
            view.PatientOrientation = orientation
            view.ImagerPixelSpacing = spacing
        else:
            modality = "OT"  # only steers highdicom's descriptor choice
    else:
        modality = "OT"  # no cross-sectional descriptors in a radiograph report
    view.Modality = modality
    return view


def _has_two_values(value: object) -> bool:
    try:
        return len(value) == 2 and all(str(v) for v in value)  # type: ignore[arg-type]
    except TypeError:
        return False


def _check_previous_versions(
    previous_versions: Sequence[Dataset], study_instance_uid: str
) -> list[Dataset]:
    if isinstance(previous_versions, Dataset) or not isinstance(previous_versions, Sequence):
        raise TypeError(
            "previous_versions must be a sequence of datasets, "
            f"got {type(previous_versions).__name__}"
        )
    for position, ds in enumerate(previous_versions):
        if not isinstance(ds, Dataset):
            raise TypeError(f"previous_versions[{position}] is a {type(ds).__name__}")
        if ds.get("StudyInstanceUID") != study_instance_uid:
            raise ValueError(
                f"previous report {ds.get('SOPInstanceUID')} belongs to study "
                f"{ds.get('StudyInstanceUID')}, not to {study_instance_uid}"
            )
    return list(previous_versions)
