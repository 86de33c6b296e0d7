"""IHE AI conventions every output shares: AI series description, series date and time."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from config.domain.findings import AlgorithmIdentity, StudyFinding
from dicom_node.outputs.equipment import label_ai_series
from dicom_node.outputs.parametric_map import build_heatmap_parametric_map
from dicom_node.outputs.presentation_state import build_triage_gsps
from dicom_node.outputs.secondary_capture import build_overlay_secondary_capture
from dicom_node.outputs.sr import build_triage_sr
from dicom_node.outputs.summary import build_summary_secondary_capture

CREATED = datetime.datetime(2025, 3, 4, 5, 6, 7, 890000)


def _sr(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, **kw: object
) -> Dataset:
    return build_triage_sr(images, finding, algorithm, **kw)


def _summary(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, **kw: object
) -> Dataset:
    return build_summary_secondary_capture(images, finding, algorithm, **kw)


def _gsps(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, **kw: object
) -> Dataset:
    return build_triage_gsps(images, finding, algorithm, **kw)


def _annotated(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, **kw: object
) -> Dataset:
    source = images[0]
    overlay = np.zeros((source.Rows, source.Columns, 3), np.uint8)
    return build_overlay_secondary_capture(source, overlay, finding.images[0], algorithm, **kw)


def _parametric_map(
    images: list[Dataset], finding: StudyFinding, algorithm: AlgorithmIdentity, **kw: object
) -> Dataset:
    source = images[0]
    heatmap = np.zeros((source.Rows, source.Columns), np.float32)
    return build_heatmap_parametric_map(source, heatmap, finding.images[0], algorithm, **kw)


BUILDERS = {
    "sr": _sr,
    "summary": _summary,
    "gsps": _gsps,
    "annotated": _annotated,
    "parametric-map": _parametric_map,
}


@pytest.mark.parametrize("name", BUILDERS)
def test_every_output_is_an_ai_series_dated_when_it_was_made(
    name: str,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> None:
    arguments = {
        "series_instance_uid": generate_uid(),
        "sop_instance_uid": generate_uid(),
        "series_number": 9000,
        "instance_number": 1,
    }
    dated = BUILDERS[name](
        dx_images, positive_finding, algorithm, series_created=CREATED, **arguments
    )
    assert dated.SeriesDescription.startswith("AI")
    assert (dated.SeriesDate, dated.SeriesTime) == ("20250304", "050607.890000")
    assert dated.SeriesDate != dx_images[0].StudyDate

    # Without a date, the series is dated by the instance's creation.
    arguments["sop_instance_uid"] = generate_uid()
    undated = BUILDERS[name](dx_images, positive_finding, algorithm, **arguments)
    assert undated.SeriesDate == undated.InstanceCreationDate
    assert undated.SeriesTime == undated.InstanceCreationTime


def test_series_description_must_start_with_ai() -> None:
    dataset = Dataset()
    with pytest.raises(ValueError, match="'Fracture report'"):
        label_ai_series(dataset, "Fracture report", CREATED)
    assert "SeriesDescription" not in dataset


def test_series_needs_a_date() -> None:
    with pytest.raises(ValueError, match="Instance Creation"):
        label_ai_series(Dataset(), "AI report")
