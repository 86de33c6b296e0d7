"""Synthetic DX sources and triage results for the DICOM output builders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from config.domain.decision import ViewResult, decide
from config.domain.findings import (
    AlgorithmIdentity,
    BoundingBox,
    Gate,
    ImageFinding,
    NotAssessed,
    OperatingPoints,
    StudyFinding,
)
from tests.peers import assert_dciodvfy_clean

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042"
THRESHOLDS = OperatingPoints(suspected=0.3, likely=0.7)
#: Not one of the bundle's regions (stage 1's verdict), for not-assessed views.
OUTSIDE = NotAssessed(Gate.PIXELS, "stage 1 recognises none of the regions this model assesses")


def assessed(
    uid: str,
    region: str,
    probability: float,
    box: BoundingBox | None = None,
    *,
    points: OperatingPoints = THRESHOLDS,
    region_probability: float = 0.9,
) -> ImageFinding:
    """An assessed view's finding, its level from ``points``."""
    return ImageFinding(
        uid,
        region=region,
        region_probability=region_probability,
        fracture_probability=probability,
        level=points.level(probability),
        box=box,
        operating_points=points,
    )


def not_assessed(
    uid: str, why: NotAssessed = OUTSIDE, region_probability: float = 0.8
) -> ImageFinding:
    return ImageFinding(uid, region_probability=region_probability, not_assessed=why)


def study_finding(
    study_uid: str,
    views: list[ViewResult],
    points: OperatingPoints = THRESHOLDS,
    aggregation: str = "max",
) -> StudyFinding:
    """The study finding the domain decides from ``views`` (every region with ``points``)."""
    regions = {view.region for view in views if view.region}
    return decide(study_uid, views, {region: points for region in regions}, aggregation)


@pytest.fixture
def dciodvfy_clean() -> Callable[[Path], str]:
    """``assert_dciodvfy_clean(path)``: dciodvfy must report no error."""
    return assert_dciodvfy_clean


def make_dx(
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    rows: int = 256,
    columns: int = 256,
    seed: int = 0,
) -> Dataset:
    """A small but complete DX Image Storage - For Presentation dataset (12-bit MONOCHROME2)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    # Patient
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19310417"  # distinctive: tests/phi.py looks for it
    ds.PatientSex = "F"
    # Study
    ds.StudyInstanceUID = study_instance_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC123"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR WRIST 2 VIEWS"
    # Series
    ds.Modality = "DX"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 1
    ds.Laterality = ""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "WRIST"
    # Equipment
    ds.Manufacturer = "Synthetic"
    ds.DetectorType = "SCINTILLATOR"
    # Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["A", "F"]
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    ds.BurnedInAnnotation = "NO"
    ds.ImageLaterality = "L"
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.KVP = 55
    ds.ExposureTime = 10
    ds.XRayTubeCurrent = 100
    ds.DistanceSourceToDetector = 1000
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.LossyImageCompression = "00"
    # Image pixel: 12-bit MONOCHROME2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = np.random.default_rng(seed).integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


@pytest.fixture
def study_uid() -> str:
    return generate_uid()


@pytest.fixture
def dx_images(study_uid: str) -> list[Dataset]:
    """Two DX images of one study and series."""
    series = generate_uid()
    images = []
    for number in (1, 2):
        ds = make_dx(
            study_instance_uid=study_uid,
            series_instance_uid=series,
            sop_instance_uid=generate_uid(),
            seed=number,
        )
        ds.InstanceNumber = number
        images.append(ds)
    return images


@pytest.fixture
def dx_image(dx_images: list[Dataset]) -> Dataset:
    return dx_images[0]


@pytest.fixture
def algorithm() -> AlgorithmIdentity:
    return AlgorithmIdentity(name="fracture-wrist-densenet", version="1.2.0")


@pytest.fixture
def synthetic_algorithm() -> AlgorithmIdentity:
    return AlgorithmIdentity(
        name="fracture-wrist-densenet", version="0.0.1-synthetic", trained_on_synthetic_data=True
    )


@pytest.fixture
def positive_finding(study_uid: str, dx_images: list[Dataset]) -> StudyFinding:
    first, second = dx_images
    return study_finding(
        study_uid,
        [
            ViewResult(first.SOPInstanceUID, "wrist", 0.97, 0.83),
            ViewResult(second.SOPInstanceUID, region_probability=0.88, not_assessed=OUTSIDE),
        ],
    )


@pytest.fixture
def negative_finding(study_uid: str, dx_images: list[Dataset]) -> StudyFinding:
    return study_finding(
        study_uid,
        [
            ViewResult(ds.SOPInstanceUID, "elbow", 0.9, p)
            for ds, p in zip(dx_images, (0.12, 0.05), strict=True)
        ],
    )
