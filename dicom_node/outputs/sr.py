"""The triage result as a DICOM Structured Report (TID 1500 Measurement Report).

:func:`build_triage_sr` turns a :class:`~config.domain.findings.StudyFinding` into
a Comprehensive 3D SR in the source study (new series), following the IHE AI
Results profile: a device observer (the algorithm), one TID 1501 group for the
study and one per source image, each with the "Fracture of bone" finding
(present/absent), the fracture probability, the finding site, the triage level,
TID 4019 Algorithm Identification and references to the source images.

A view with a positive finding (fracture suspected or likely) and a box gets a
TID 1410 planar ROI group instead: the same finding, probability, site and
level, plus a closed POLYLINE SCOORD around the box on the source image, so
OHIF-style viewers draw it over the original. A re-run's report names the
report it supersedes in the Predecessor Documents Sequence.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from config import FractureLevel
from config.domain.findings import (
    AlgorithmIdentity,
    BoundingBox,
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
)
from dicom_node.outputs.codes import (
    COMMENT,
    DEVICE_OBSERVER_NAME,
    FRACTURE_LEVEL,
    FRACTURE_OF_BONE,
    NO_UNITS,
    PLAIN_RADIOGRAPHY,
    PROBABILITY,
    UNDETERMINED,
    finding_site,
    presence,
)
from dicom_node.outputs.equipment import contributing_equipment, label_ai_series
from dicom_node.uids import check_new_uid, check_positive_number, derived_uid

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


def device_observer_uid(algorithm: AlgorithmIdentity) -> str:
    """Return the Device Observer UID of an algorithm.

    The UID is derived from the algorithm's name and version (a ``2.25`` UID
    of a name-based UUID), so every report of one model version names the
    same device.

    Parameters
    ----------
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced the result.

    Returns
    -------
    str
        The device observer UID.
    """
    return derived_uid(DEVICE_OBSERVER_NAME, algorithm.name, algorithm.version)


def build_triage_sr(
    source_images: Sequence[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    institution_name: str | None = None,
    include_rois: bool = True,
    previous_versions: Sequence[Dataset] = (),
    series_created: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the triage Structured Report of a study.

    Parameters
    ----------
    source_images: Sequence[pydicom.Dataset]
        The source images of the study (their metadata suffices; pixel data is
        not read). Every image of `finding` must be among them; all must belong
        to the study ``finding.study_instance_uid``.
    finding: config.domain.findings.StudyFinding
        Study-level result and the per-image findings behind it.
    algorithm: config.domain.findings.AlgorithmIdentity
        The model that produced `finding`.
    series_instance_uid: str
        Series Instance UID of the new SR series.
    sop_instance_uid: str
        SOP Instance UID of the SR document.
    series_number: int
        Series Number of the SR series (positive).
    instance_number: int
        Instance Number of the SR document (positive).
    institution_name: str | None, optional
        Institution Name written to the SR.
    include_rois: bool, optional
        Give each positive view with a box a TID 1410 planar ROI (default);
        ``False`` keeps every view a plain TID 1501 group.
    previous_versions: Sequence[pydicom.Dataset], optional
        Earlier triage reports of the study that this one supersedes (their
        headers suffice); listed in the Predecessor Documents Sequence.
    series_created: datetime.datetime | None, optional
        When the series was made: its Series Date and Time (default: now).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The SR document: same patient and study as the sources, COMPLETE,
        UNVERIFIED and PRELIMINARY (an AI result a reader has not signed).

    Raises
    ------
    ValueError
        When an input is inconsistent (the message names the bad value).
    TypeError
        When an input has the wrong type.
    """
    if not isinstance(finding, StudyFinding):
        raise TypeError(f"finding must be a StudyFinding, got {type(finding).__name__}")
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError(f"algorithm must be an AlgorithmIdentity, got {type(algorithm).__name__}")
    sources = _check_sources(source_images, finding.study_instance_uid)
    check_new_uid("series_instance_uid", series_instance_uid)
    check_new_uid("sop_instance_uid", sop_instance_uid)
    check_positive_number("series_number", series_number)
    check_positive_number("instance_number", instance_number)
    if series_instance_uid in {str(ds.SeriesInstanceUID) for ds in sources.values()}:
        raise ValueError(
            f"series_instance_uid {series_instance_uid} is a source series; the SR needs a new one"
        )
    if sop_instance_uid in sources:
        raise ValueError(
            f"sop_instance_uid {sop_instance_uid} is a source image's SOP Instance UID"
        )
    for image in finding.images:
        if image.sop_instance_uid not in sources:
            raise ValueError(
                f"image finding {image.sop_instance_uid} has no matching source image; "
                f"sources are {sorted(sources)}"
            )

    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        manufacturer=algorithm.manufacturer,
    )
    groups = [_study_group(finding, algorithm, algorithm_id, sources, sop_instance_uid)]
    groups.extend(
        _image_group(
            index,
            image,
            algorithm_id,
            sources,
            sop_instance_uid,
            include_rois=include_rois,
        )
        for index, image in enumerate(finding.images, start=1)
    )
    previous = _check_previous_versions(previous_versions, finding.study_instance_uid)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=PLAIN_RADIOGRAPHY,
        imaging_measurements=groups,
        referenced_images=[_library_view(ds) for ds in sources.values()],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources.values()),
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=institution_name,
        previous_versions=previous or None,
        contributing_equipment=contributing_equipment(algorithm, "AI fracture triage report"),
    )
    label_ai_series(sr, SR_SERIES_DESCRIPTION, series_created)
    sr.ManufacturerModelName = algorithm.name
    sr.SoftwareVersions = algorithm.version
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_CODING_SCHEME
    scheme.CodingSchemeName = PRIVATE_CODING_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = algorithm.manufacturer
    sr.CodingSchemeIdentificationSequence = [scheme]
    logger.info(
        "built triage SR %s (series %s) for study %s from %d image(s): region %s, level %s",
        sop_instance_uid,
        series_instance_uid,
        finding.study_instance_uid,
        len(sources),
        finding.region,
        finding.level,
    )
    return sr


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


def _study_group(
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    algorithm_id: hd.sr.AlgorithmIdentification,
    sources: dict[str, Dataset],
    sop_instance_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    comments = [AI_RESULT_DISCLAIMER]
    if algorithm.trained_on_synthetic_data:
        comments.append(SYNTHETIC_DATA_WARNING)
    return _group(
        tracking_label="fracture triage: study",
        tracking_uid=derived_uid(sop_instance_uid, "study"),
        region=finding.region,
        probability=finding.fracture_probability,
        level=finding.level,
        points=finding.operating_points,
        not_assessed=finding.not_assessed,
        algorithm_id=algorithm_id,
        images=list(sources.values()),
        comments=comments,
    )


def box_polyline(box: BoundingBox, rows: int, columns: int) -> np.ndarray:
    """The closed POLYLINE (column, row) of a box, for SCOORD and GSPS graphics.

    The box holds 0-based inclusive pixel indices; DICOM image coordinates put
    (0, 0) at the top left corner of the top left pixel, so the outline runs
    along the outer pixel edges: from (col_min, row_min) to (col_max + 1,
    row_max + 1), clipped to the image. Five points, the last equal to the first.
    """
    if not isinstance(box, BoundingBox):
        raise TypeError(f"box must be a BoundingBox, got {type(box).__name__}")
    left = min(float(box.col_min), columns - 1.0)
    top = min(float(box.row_min), rows - 1.0)
    right = min(float(box.col_max) + 1.0, float(columns))
    bottom = min(float(box.row_max) + 1.0, float(rows))
    return np.array(
        [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]],
        dtype=np.float32,
    )


def _image_group(
    index: int,
    image: ImageFinding,
    algorithm_id: hd.sr.AlgorithmIdentification,
    sources: dict[str, Dataset],
    sop_instance_uid: str,
    *,
    include_rois: bool,
) -> (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
):
    source = sources[image.sop_instance_uid]
    roi = None
    if (
        include_rois
        and image.is_positive
        and image.box is not None
        and source.get("Rows")
        and source.get("Columns")
    ):
        roi = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(image.box, int(source.Rows), int(source.Columns)),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            ),
        )
    return _group(
        tracking_label=f"fracture triage: image {index}",
        tracking_uid=derived_uid(sop_instance_uid, image.sop_instance_uid),
        region=image.region,
        probability=image.fracture_probability,
        level=image.level,
        points=image.operating_points,
        not_assessed=image.not_assessed,
        algorithm_id=algorithm_id,
        images=[source],
        comments=[],
        roi=roi,
    )


def _group(
    *,
    tracking_label: str,
    tracking_uid: str,
    region: str | None,
    probability: float | None,
    level: FractureLevel | None,
    points: OperatingPoints | None,
    not_assessed: NotAssessed | None,
    algorithm_id: hd.sr.AlgorithmIdentification,
    images: Sequence[Dataset],
    comments: list[str],
    roi: hd.sr.ImageRegion | None = None,
) -> (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
):
    """One group: the fracture finding of a study or of one image.

    TID 1501 with references to its source images, or, with `roi`, TID 1410
    whose image region both outlines the finding and names its source image.
    """
    source_refs = [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
        )
        for ds in images
    ]
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_label)
    texts: list[tuple[Code, str]] = []
    if region is None or probability is None:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=FRACTURE_OF_BONE,
            algorithm_id=algorithm_id,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(name=FRACTURE_OF_BONE, value=UNDETERMINED)
            ],
            source_images=source_refs,
        )
        why = not_assessed.reason if not_assessed is not None else "no result"
        texts.append((COMMENT, f"Not assessed for fracture: {why}"))
    else:
        assert level is not None and points is not None  # an assessed finding has both
        site = hd.sr.FindingSite(anatomic_location=finding_site(region))
        content: dict[str, object] = {
            "tracking_identifier": tracking,
            "finding_type": FRACTURE_OF_BONE,
            "algorithm_id": algorithm_id,
            "finding_sites": [site],
            "measurements": [
                hd.sr.Measurement(
                    name=PROBABILITY,
                    value=round(float(probability), 6),
                    unit=NO_UNITS,
                    algorithm_id=algorithm_id,
                )
            ],
            "qualitative_evaluations": [
                hd.sr.QualitativeEvaluation(name=FRACTURE_OF_BONE, value=presence(level))
            ],
        }
        if roi is not None:
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_region=roi, **content
            )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=source_refs, **content
            )
        texts.append((FRACTURE_LEVEL, level.value))
        texts.append(
            (
                COMMENT,
                f"Operating points: fracture suspected at p >= {points.suspected:.3f}, "
                f"likely at p >= {points.likely:.3f}",
            )
        )
    texts.extend((COMMENT, text) for text in comments)
    container = group[0]
    for name, value in texts:
        container.ContentSequence.append(
            hd.sr.TextContentItem(
                name=name,
                value=value,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


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
            logger.debug(
                "image %s lacks Patient Orientation or pixel spacing: no TID 1603 descriptors",
                ds.SOPInstanceUID,
            )
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


def _check_sources(source_images: Sequence[Dataset], study_instance_uid: str) -> dict[str, Dataset]:
    """Check the source images and index them by SOP Instance UID."""
    if isinstance(source_images, Dataset) or not isinstance(source_images, Sequence):
        raise TypeError(
            f"source_images must be a sequence of datasets, got {type(source_images).__name__}"
        )
    if not source_images:
        raise ValueError(f"study {study_instance_uid}: source_images is empty")
    sources: dict[str, Dataset] = {}
    for position, ds in enumerate(source_images):
        if not isinstance(ds, Dataset):
            raise TypeError(f"source_images[{position}] is a {type(ds).__name__}, not a Dataset")
        missing = [
            keyword
            for keyword in (
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
            )
            if not ds.get(keyword)
        ]
        if missing:
            raise ValueError(f"source_images[{position}] lacks {', '.join(missing)}")
        uid = str(ds.SOPInstanceUID)
        if ds.StudyInstanceUID != study_instance_uid:
            raise ValueError(
                f"source image {uid} belongs to study {ds.StudyInstanceUID}, "
                f"not to the finding's study {study_instance_uid}"
            )
        if uid in sources:
            raise ValueError(f"source image {uid} is given twice")
        sources[uid] = ds
    return sources


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
