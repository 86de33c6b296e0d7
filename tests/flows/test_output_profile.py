"""The output profile: which objects a study gets and where each goes; assembling them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from config.domain.decision import ViewResult
from config.domain.findings import AlgorithmIdentity, BoundingBox, Gate, NotAssessed, StudyFinding
from config.domain.vocabulary import OutputKind
from config.settings import Settings, SettingsError, load_settings
from dicom_node.outputs.secondary_capture import (
    ANNOTATED_HEATMAP_SERIES_DESCRIPTION,
    ANNOTATED_SERIES_DESCRIPTION,
)
from flows.triage.assemble import StudyRun, ViewPixels, assemble, output_plan
from models.runtime.preprocessing import Geometry
from tests.dicom_node.builders import blob
from tests.dicom_node.conftest import make_dx, study_finding
from tests.peers import assert_dciodvfy_clean

ALGORITHM = AlgorithmIdentity("fracture-demo", "0.1.0", trained_on_synthetic_data=True)
PACS = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
VIEWER = {"name": "viewer", "ae_title": "VIEWER", "host": "127.0.0.1", "port": 105}
RIS = {"kind": "hl7", "name": "ris", "host": "127.0.0.1", "port": 2575}
UNREADABLE = NotAssessed(Gate.UNREADABLE, "the pixel data could not be decoded")


def _settings(tmp_path: Path, **outputs: object) -> Settings:
    return load_settings(
        None, output_dir=tmp_path / "outputs", destinations=[PACS, VIEWER, RIS], outputs=outputs
    )


@pytest.fixture
def sources() -> list[Dataset]:
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    views = [
        make_dx(
            study_instance_uid=study, series_instance_uid=series, sop_instance_uid=generate_uid()
        )
        for _ in range(3)
    ]
    for number, ds in enumerate(views, start=1):
        ds.InstanceNumber = number
    return views


def _finding(sources: list[Dataset], outcome: str) -> StudyFinding:
    first, second, third = (str(ds.SOPInstanceUID) for ds in sources)
    if outcome == "not-assessed":
        views = [ViewResult(uid, not_assessed=UNREADABLE) for uid in (first, second, third)]
    else:
        views = [
            ViewResult(first, "wrist", 0.95, 0.9 if outcome == "positive" else 0.1,
                       BoundingBox(100, 100, 150, 160)),
            ViewResult(second, "wrist", 0.93, 0.05),
            ViewResult(third, not_assessed=UNREADABLE),
        ]  # fmt: skip
    return study_finding(sources[0].StudyInstanceUID, views)


def _run(tmp_path: Path, sources: list[Dataset], outcome: str, **kw: object) -> StudyRun:
    finding = _finding(sources, outcome)
    return StudyRun(
        7,
        finding,
        tuple(sources),
        ALGORITHM,
        tmp_path / "outputs" / finding.study_instance_uid,
        **kw,  # type: ignore[arg-type]
    )


def _pixels(sources: list[Dataset]) -> dict[str, ViewPixels]:
    """Each readable view fitted into a 64-pixel model input, with a Grad-CAM blob."""
    geometry = Geometry(256, 256, 64, 0.25, 0, 0)
    return {str(ds.SOPInstanceUID): ViewPixels(geometry, blob(64, 64)) for ds in sources[:2]}


def test_the_default_profile_sends_sr_summary_and_positive_views_and_sr_only_otherwise(
    tmp_path: Path, sources: list[Dataset]
) -> None:
    settings = _settings(tmp_path)
    everywhere = ("pacs", "viewer")
    assert output_plan(_run(tmp_path, sources, "positive"), settings) == {
        OutputKind.SR: everywhere,
        OutputKind.SUMMARY: everywhere,
        OutputKind.ANNOTATED: everywhere,
    }
    assert output_plan(_run(tmp_path, sources, "not-assessed"), settings) == {
        OutputKind.SR: everywhere
    }


def test_a_switched_off_kind_is_never_made_whatever_the_routes_say(
    tmp_path: Path, sources: list[Dataset]
) -> None:
    settings = _settings(tmp_path, summary=False, annotated=False)
    assert output_plan(_run(tmp_path, sources, "positive"), settings) == {
        OutputKind.SR: ("pacs", "viewer")
    }


def test_routes_select_by_kind_destination_outcome_calling_ae_and_modality(
    tmp_path: Path, sources: list[Dataset]
) -> None:
    settings = _settings(
        tmp_path,
        routes=[
            {"kinds": ["sr"], "destinations": ["pacs"]},
            {"kinds": ["gsps", "pm"], "destinations": ["viewer"], "studies": "positive"},
            {"kinds": ["summary"], "calling_ae_titles": ["ED_CR"], "destinations": ["pacs"]},
            {"kinds": ["sc"], "modalities": ["CR"]},
        ],
    )
    plan = output_plan(_run(tmp_path, sources, "positive", calling_ae_title="ED_CR"), settings)
    assert plan == {
        OutputKind.SR: ("pacs",),
        OutputKind.GSPS: ("viewer",),
        OutputKind.PARAMETRIC_MAP: ("viewer",),
        OutputKind.SUMMARY: ("pacs",),
    }  # the sources are DX: no annotated views
    negative = output_plan(_run(tmp_path, sources, "negative", calling_ae_title="OTHER"), settings)
    assert negative == {OutputKind.SR: ("pacs",)}


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([{"kinds": ["sr"], "destinations": ["nowhere"]}], "not DICOM destinations"),
        ([{"kinds": ["sr"], "destinations": ["ris"]}], "not DICOM destinations"),
        ([{"kinds": ["kos"]}], "not routed"),
        ([{"kinds": []}], "kinds"),
        ([{"kinds": ["sr"], "studies": "some"}], "studies"),
    ],
)
def test_a_wrong_route_is_refused_with_its_setting_named(
    tmp_path: Path, routes: list[dict], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        _settings(tmp_path, routes=routes)


def test_assemble_writes_what_the_profile_says_and_names_repaired_attributes(
    tmp_path: Path, sources: list[Dataset]
) -> None:
    sources[0].PatientBirthDate = "19800000"
    del sources[1].StudyID
    run = _run(tmp_path, sources, "positive", intended_use="Triage of wrist radiographs.")
    done = assemble(run, _pixels(sources), _settings(tmp_path), None, ())
    assert done.repaired_attributes == ("PatientBirthDate", "StudyID")
    kinds = sorted(str(output.kind) for output in done.outputs)
    assert kinds == ["hl7", "sc", "sr", "summary"], "one annotated view: the positive one"
    for output in done.outputs:
        expected = ("ris",) if output.kind is OutputKind.WORKLIST_FLAG else ("pacs", "viewer")
        assert output.destinations == expected
        if output.kind is not OutputKind.WORKLIST_FLAG:
            assert_dciodvfy_clean(tmp_path / "outputs" / output.path)
    (sc,) = [o for o in done.outputs if o.kind is OutputKind.ANNOTATED]
    annotated = pydicom.dcmread(tmp_path / "outputs" / sc.path)
    assert annotated.SeriesDescription == ANNOTATED_HEATMAP_SERIES_DESCRIPTION
    assert annotated.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
    assert str(annotated.PatientBirthDate) == ""


def test_plain_negative_views_heatmaps_off_and_opt_in_maps(
    tmp_path: Path, sources: list[Dataset]
) -> None:
    settings = _settings(
        tmp_path,
        negative_views="plain",
        heatmap=False,
        routes=[{"kinds": ["sc", "pm", "gsps"]}],
    )
    done = assemble(_run(tmp_path, sources, "positive"), _pixels(sources), settings, None, ())
    by_kind: dict[OutputKind, list[Dataset]] = {}
    for output in done.outputs:
        if output.kind is not OutputKind.WORKLIST_FLAG:
            by_kind.setdefault(output.kind, []).append(
                pydicom.dcmread(tmp_path / "outputs" / output.path)
            )
    # Both assessed views get a copy, neither a heatmap; the unreadable view nothing.
    captures = by_kind[OutputKind.ANNOTATED]
    assert [ds.SeriesDescription for ds in captures] == [ANNOTATED_SERIES_DESCRIPTION] * 2
    assert len({ds.SeriesInstanceUID for ds in captures}) == 1
    assert [ds.InstanceNumber for ds in captures] == [1, 2]
    # The map: the positive view only.
    (heatmap,) = by_kind[OutputKind.PARAMETRIC_MAP]
    referenced = heatmap.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
    assert len(by_kind[OutputKind.GSPS]) == 1
    assert np.asarray(captures[0].pixel_array).shape[1] == 256
