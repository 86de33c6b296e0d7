"""The results in OHIF v3, the web viewer many reading rooms use, in headless Chromium.

A positive study goes through the node; its AI series reach a real Orthanc, which OHIF
reads over DICOMweb (OHIF's built app from npm, tests/ohif.py). The tests check what a
radiologist would see: the study in OHIF's study list, every AI series in the study
browser, the source and annotated views and the summary drawn, the SR's planar ROIs over
their views and listed as measurements (a strict expected failure: OHIF stops on our SR;
a copy changed as OHIF needs shows what it takes). What OHIF cannot show (the GSPS, the
Parametric Map) is checked as such, so docs/ohif.md stays true for the pinned OHIF
version. Pictures go to test-artifacts/ohif/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread

from config import Destination
from dicom_node.outputs.parametric_map import PM_SERIES_DESCRIPTION
from dicom_node.outputs.presentation_state import GSPS_SERIES_DESCRIPTION
from dicom_node.outputs.secondary_capture import (
    ANNOTATED_HEATMAP_SERIES_DESCRIPTION as SC_SERIES_DESCRIPTION,
)
from dicom_node.outputs.sr import SR_SERIES_DESCRIPTION
from dicom_node.outputs.summary import SUMMARY_SERIES_DESCRIPTION
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.conftest import settings_under
from tests.flows.profiles import EVERY_OBJECT
from tests.flows.test_viewer import ai_series, colour_fraction, wait_until
from tests.ohif import OHIF_DIST, OHIF_VERSION, serve_ohif
from tests.peers import CHROMIUM_WEBGL_FLAGS, Orthanc, free_port, require, run_chromium, run_orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ohif"
#: OHIF on a loaded two-core machine: its first page load takes seconds, WebGL runs on the CPU.
PAGE_TIMEOUT = 180.0


class OhifError(AssertionError):
    """OHIF stopped with an error (its error boundary) or did not show an object."""


@dataclass
class TriagedStudy:
    orthanc: Orthanc
    study_uid: str
    accession_number: str
    #: The AI series in Orthanc, by description.
    series: dict[str, dict[str, Any]]
    sr: Dataset
    #: A study without a fracture (the sample hand study), triaged beside it, and its SR.
    negative_study_uid: str
    negative_sr: Dataset


@pytest.fixture(scope="module")
def triaged_study(
    tmp_path_factory: pytest.TempPathFactory, demo_bundle: Path, sample_studies: list[Path]
) -> Iterator[TriagedStudy]:
    """A wrist study with fractures, triaged by the node, its results in Orthanc (DICOMweb)."""
    require((OHIF_DIST / "index.html").is_file(), f"OHIF {OHIF_VERSION} not installed (make peers)")
    work = tmp_path_factory.mktemp("ohif")
    node_port = free_port()
    with run_orthanc(
        work / "orthanc",
        modalities={"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)},
        dicomweb=True,
    ) as orthanc:
        pacs = Destination(
            name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
        )
        settings = settings_under(
            work, demo_bundle, port=node_port, destinations=(pacs,), outputs=EVERY_OBJECT
        )
        files = sorted(sample_studies[0].glob("*.dcm"))
        negative_files = sorted(sample_studies[1].glob("*.dcm"))
        for path in files + negative_files:
            orthanc.upload(path)
        source = dcmread(files[0], stop_before_pixels=True)
        study_uid = str(source.StudyInstanceUID)
        negative_uid = str(dcmread(negative_files[0], stop_before_pixels=True).StudyInstanceUID)
        with TriageService(Runtime.create(settings)):
            for uid in (study_uid, negative_uid):
                orthanc.request(
                    "POST",
                    "/modalities/triage/store",
                    {"Resources": [orthanc.study_id(uid)], "Synchronous": True},
                )

            def all_series_arrived() -> dict[str, dict[str, Any]] | None:
                found = ai_series(orthanc, study_uid)  # SR, summary, annotated, GSPS, map
                return found if len(found) >= 5 and SR_SERIES_DESCRIPTION in found else None

            series = wait_until(all_series_arrived, 300, "the AI series in Orthanc")
            negative_series = wait_until(
                lambda: ai_series(orthanc, negative_uid).get(SR_SERIES_DESCRIPTION),
                300,
                "the negative study's SR in Orthanc",
            )
        sr = _instance(orthanc, series[SR_SERIES_DESCRIPTION])
        negative_sr = _instance(orthanc, negative_series)
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        ARTIFACTS.mkdir(parents=True)
        yield TriagedStudy(
            orthanc, study_uid, str(source.AccessionNumber), series, sr, negative_uid, negative_sr
        )


def _instance(orthanc: Orthanc, series: dict[str, Any]) -> Dataset:
    """The (first) instance of an Orthanc series, read."""
    return dcmread(BytesIO(orthanc.get(f"/instances/{series['Instances'][0]}/file")))


@pytest.fixture(scope="module")
def ohif_url(triaged_study: TriagedStudy) -> Iterator[str]:
    with serve_ohif(triaged_study.orthanc.url) as url:
        yield url


@pytest.fixture
def viewer(tmp_path: Path, ohif_url: str, triaged_study: TriagedStudy) -> Iterator[OhifViewer]:
    with run_chromium(
        tmp_path / "chromium-profile", *CHROMIUM_WEBGL_FLAGS, window=(1600, 1000)
    ) as driver:
        yield OhifViewer(driver, ohif_url, triaged_study.study_uid)


class OhifViewer:
    """OHIF's pages as a person uses them, read through the DOM and the browser's console."""

    def __init__(self, driver: Any, base_url: str, study_uid: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.study_uid = study_uid
        self.errors: list[str] = []

    def open_study(self) -> None:
        """The viewer for the study, its study browser filled and the first view drawn."""
        self.driver.get(f"{self.base_url}/viewer?StudyInstanceUIDs={self.study_uid}")
        self.wait_study_drawn()

    def open_study_from_list(self, accession_number: str) -> None:
        """Find the study in OHIF's study list, open it in the basic viewer."""
        self.driver.get(self.base_url + "/")
        self.wait(lambda: accession_number in self.page_text(), "the study in the study list")
        self.driver.find_element("xpath", f"//*[normalize-space()='{accession_number}']").click()
        self.wait(
            lambda: self.driver.find_elements(
                "css selector", f"[data-cy='mode-viewer-{self.study_uid}']"
            ),
            "the study's viewer button",
        )[0].click()
        self.wait_study_drawn()

    def wait_study_drawn(self) -> None:
        self.wait(lambda: len(self.series()) > 0, "the study browser")
        self.wait(lambda: drawn_fraction(self.viewport_png()) > 0.005, "the first view drawn")

    def series(self) -> dict[str, str]:
        """The study browser's series: description -> modality label."""
        pairs = self.driver.execute_script(
            "return [...document.querySelectorAll('[data-cy=series-description-label]')]"
            ".map(label => [label.textContent, label.closest('[data-series]')"
            "?.querySelector('[data-cy=series-modality-label]')?.textContent ?? ''])"
        )
        return {description.strip(): modality.strip() for description, modality in pairs}

    def thumbnail(self, description: str) -> Any:
        return self.driver.find_element(
            "xpath",
            f"//*[@data-cy='series-description-label' and normalize-space()='{description}']"
            "/ancestor::*[@data-series][1]",
        )

    def open_series(self, description: str) -> None:
        """Double-click a series in the study browser, as a reader does to view it."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).double_click(self.thumbnail(description)).perform()

    def reset_view(self) -> None:
        """Press the toolbar's Reset View, which redraws the viewport and its annotations.

        OHIF's SR viewport sometimes adds its regions after its last drawing and shows
        them only on the next one (a race seen in about half the runs here).
        """
        self.driver.find_element("css selector", "[data-cy=Reset-btn]").click()

    def page_text(self) -> str:
        return self.driver.execute_script("return document.body.innerText")

    def overlay_text(self) -> str:
        return self.driver.execute_script(
            "return [...document.querySelectorAll('[data-cy^=viewport-overlay]')]"
            ".map(e => e.innerText).join(' ')"
        )

    def viewport_png(self) -> bytes:
        return self.driver.find_element("css selector", "[data-cy=viewport-pane]").screenshot_as_png

    def wait_drawn(self, series_description: str) -> None:
        """Until the viewport shows the series (named in its overlay) with pixels drawn."""
        self.wait(
            lambda: series_description in self.overlay_text(), f"{series_description}: overlay"
        )
        self.wait(
            lambda: drawn_fraction(self.viewport_png()) > 0.005, f"{series_description}: drawn"
        )

    def wait(self, predicate: Any, what: str, timeout: float = PAGE_TIMEOUT) -> Any:
        """Wait for a page condition; stop early with OhifError when OHIF reports an error."""

        def done_or_failed() -> Any:
            self.raise_on_error(what)
            return predicate()

        return wait_until(done_or_failed, timeout, f"OHIF: {what}")

    def raise_on_error(self, what: str) -> None:
        """OHIF's error boundary logs 'Error Boundary' and the error to the console."""
        for entry in self.driver.get_log("browser"):
            message = entry.get("message", "")
            if "Error Boundary" in message:
                # The error's first line only: the rest is a stack, no patient data.
                error = message.split("Error Boundary", 1)[1].strip(' "').split("\n")[0]
                self.errors.append(error)
        if self.errors:
            raise OhifError(f"OHIF {OHIF_VERSION} stopped while showing {what}: {self.errors[0]}")

    def save(self, name: str) -> Path:
        path = ARTIFACTS / name
        self.driver.save_screenshot(str(path))
        return path


def test_study_list_and_every_ai_series_in_the_study_browser(
    viewer: OhifViewer, triaged_study: TriagedStudy
) -> None:
    # From OHIF's study list (its start page, a QIDO-RS query to Orthanc) to the viewer.
    viewer.open_study_from_list(triaged_study.accession_number)
    assert f"StudyInstanceUIDs={triaged_study.study_uid}" in viewer.driver.current_url
    # Every AI series in the study browser, under the modality OHIF gives it.
    listed = viewer.wait(
        lambda: (found := viewer.series()).keys() >= triaged_study.series.keys() and found,
        "every AI series in the study browser",
    )
    assert listed[SR_SERIES_DESCRIPTION] == "SR"
    assert listed[GSPS_SERIES_DESCRIPTION] == "PR"
    assert listed[PM_SERIES_DESCRIPTION] == "PMAP"
    assert listed[SC_SERIES_DESCRIPTION] == listed[SUMMARY_SERIES_DESCRIPTION] == "OT"
    viewer.save("ohif-study.png")

    # The annotated views: drawn in colour (box, heatmap) where the source is grey.
    viewer.open_series(SC_SERIES_DESCRIPTION)
    viewer.wait_drawn(SC_SERIES_DESCRIPTION)
    viewer.wait(lambda: colour_fraction(viewer.viewport_png()) > 0.005, "the view in colour")
    viewer.save("ohif-annotated.png")

    # The summary, drawn in the viewport with its coloured decision text.
    viewer.open_series(SUMMARY_SERIES_DESCRIPTION)
    viewer.wait_drawn(SUMMARY_SERIES_DESCRIPTION)
    viewer.wait(lambda: colour_fraction(viewer.viewport_png()) > 0.0005, "the summary's colours")
    viewer.save("ohif-summary.png")
    assert not viewer.errors


def drawn_fraction(png: bytes) -> float:
    """The share of a screenshot's pixels well above black (the viewport's background)."""
    return float((np.asarray(Image.open(BytesIO(png)).convert("L")) > 40).mean())


def test_sr_regions_drawn_over_their_views_and_listed(
    viewer: OhifViewer, triaged_study: TriagedStudy
) -> None:
    viewer.open_study()
    show_sr_regions(viewer, triaged_study.sr, "ohif-sr.png")


def test_a_negative_studys_views_are_outlined_with_their_probability(
    viewer: OhifViewer, triaged_study: TriagedStudy
) -> None:
    """A study without a fracture: each view's region (the whole view) drawn and listed,
    labelled with its probability, so a reader sees the AI looked and found nothing."""
    viewer.study_uid = triaged_study.negative_study_uid
    viewer.open_study()
    show_sr_regions(viewer, triaged_study.negative_sr, "ohif-sr-negative.png")


def show_sr_regions(viewer: OhifViewer, sr: Dataset, picture: str) -> None:
    """Open the SR as a reader does: its regions drawn over their views with their labels;
    then, on a fresh page, its measurements tracked and listed."""
    regions = planar_regions(sr)
    assert regions, "the SR has a planar ROI per view"
    description = str(sr.SeriesDescription)
    viewer.wait(lambda: description in viewer.series(), "the SR in the study browser")
    viewer.open_series(description)
    try:
        # OHIF's SR viewport: a region over the source view it was drawn on, labelled.
        viewer.wait(
            lambda: (
                viewer.driver.find_elements("css selector", "svg.svg-layer polyline")
                or viewer.reset_view()
            ),
            "the SR's regions over their views",
        )
        labels = viewer.driver.execute_script(
            "return [...document.querySelectorAll('svg.svg-layer text')]"
            ".map(t => t.textContent).join(' ')"
        )
        assert "Probability" in labels, labels
        assert all(site in labels for site in finding_sites(sr)), labels
    finally:
        viewer.save(picture)

    # Tracking the SR's measurements (OHIF's offer on opening it) lists every region.
    viewer.open_study()
    viewer.open_series(description)
    viewer.wait(
        lambda: viewer.driver.find_elements("xpath", "//button[normalize-space()='Yes']"),
        "OHIF's offer to track the SR's measurements",
    )[0].click()
    viewer.driver.find_element("css selector", "[data-cy=trackedMeasurements-btn]").click()
    try:
        viewer.wait(
            lambda: f"Measurements ({len(regions)})" in viewer.page_text(),
            "the SR's measurements listed",
            timeout=60,
        )
    except AssertionError as not_listed:
        raise OhifError(f"OHIF {OHIF_VERSION} did not list the SR's regions") from not_listed
    finally:
        viewer.save(picture.replace(".png", "-tracked.png"))
    for site in finding_sites(sr):
        assert viewer.page_text().count(site) >= len(regions), site


def planar_regions(sr: Dataset) -> list[Dataset]:
    """The SCOORD content items of the SR's measurement groups (one per view)."""
    return [
        item
        for group in measurement_groups(sr)
        for item in group.ContentSequence
        if item.ValueType == "SCOORD"
    ]


def finding_sites(sr: Dataset) -> set[str]:
    return {
        str(item.ConceptCodeSequence[0].CodeMeaning)
        for group in measurement_groups(sr)
        for item in group.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Finding Site"
    }


def measurement_groups(sr: Dataset) -> list[Dataset]:
    return [
        group
        for container in sr.ContentSequence
        if container.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"
        for group in container.ContentSequence
    ]


def test_gsps_is_listed_but_not_applied(viewer: OhifViewer) -> None:
    """OHIF lists the presentation state and says it does not support its SOP class."""
    viewer.open_study()
    from selenium.webdriver.common.action_chains import ActionChains

    def hover_over_the_warning() -> bool:
        # Found and hovered anew each time: the study browser redraws while series load.
        warning = viewer.thumbnail(GSPS_SERIES_DESCRIPTION).find_element(
            "css selector", "button[id^=display-set-tooltip]"
        )
        ActionChains(viewer.driver).move_to_element(warning).perform()
        return "SOP Class UID is not supported" in viewer.page_text()

    viewer.wait(hover_over_the_warning, "the GSPS's message")
    viewer.save("ohif-gsps.png")


def test_parametric_map_is_listed_but_stops_the_viewer(viewer: OhifViewer) -> None:
    """OHIF loads our map as an overlay of a volume and stops: a radiograph is no volume."""
    viewer.open_study()
    viewer.open_series(PM_SERIES_DESCRIPTION)
    with pytest.raises(OhifError, match="Parametric maps oblique to the acquisition plane"):
        viewer.wait(lambda: False, "the Parametric Map")
    viewer.save("ohif-parametric-map.png")
    # The reader reloads the page: the study is back.
    viewer.errors.clear()
    viewer.open_study()
