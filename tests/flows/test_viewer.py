"""Checked as a person would: the AI results in Orthanc's web UI, in headless Chromium.

The screenshots are kept under test-artifacts/ (the README's pictures come from them):
the study's AI series, the summary, an annotated view in the web viewer, the SR as
dcmtk's dsr2html renders it, the GSPS applied to its view and the heatmap Parametric
Map (the last two drawn from the objects' own content: no browser viewer shows them).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from config import Destination, Settings
from dicom_node.outputs.parametric_map import PM_SERIES_DESCRIPTION
from dicom_node.outputs.presentation_state import GSPS_SERIES_DESCRIPTION
from dicom_node.outputs.secondary_capture import ANNOTATED_HEATMAP_SERIES_DESCRIPTION
from dicom_node.outputs.sr import SR_SERIES_DESCRIPTION
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.flows.pictures import render_gsps, render_parametric_map
from tests.flows.profiles import EVERY_OBJECT
from tests.peers import (
    ORTHANC_WEBVIEWER_PLUGIN,
    Orthanc,
    free_port,
    require,
    require_binary,
    run_chromium,
    run_orthanc,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    with run_chromium(tmp_path / "chromium-profile", "--disable-gpu") as driver:
        yield driver


def ai_series(orthanc: Orthanc, study_uid: str) -> dict[str, dict]:
    return {
        s["MainDicomTags"].get("SeriesDescription", ""): s
        for s in orthanc.series_of_study(study_uid)
        if s["MainDicomTags"].get("SeriesDescription", "").startswith("AI")
    }


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_ai_series_are_listed_and_the_summary_renders_in_the_browser(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    demo_bundle: Path,
    sample_studies: list[Path],
    browser: object,
) -> None:
    """The README's pictures: the demo model (trained on phantoms) on the wrist study."""
    require(ORTHANC_WEBVIEWER_PLUGIN.is_file(), "apt-get install orthanc-webviewer")
    # No picture left by an earlier run may pass for this run's (test_ohif keeps its own
    # pictures in the ohif/ folder below).
    ARTIFACTS.mkdir(exist_ok=True)
    for stale in ARTIFACTS.iterdir():
        if stale.is_file():
            stale.unlink()
    node_port = free_port()
    with run_orthanc(
        tmp_path / "orthanc",
        modalities={"triage": ("FRACTURE_TRIAGE", "127.0.0.1", node_port)},
        plugins=(ORTHANC_WEBVIEWER_PLUGIN,),
    ) as orthanc:
        pacs = Destination(
            name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
        )
        # Orthanc 1.10 without its GDCM plugin stores JPEG 2000 but cannot render it.
        viewable = EVERY_OBJECT.model_copy(update={"compression": "jpeg-ls"})
        settings = make_settings(
            port=node_port, destinations=(pacs,), outputs=viewable, model_bundle_dir=demo_bundle
        )
        files = sorted(sample_studies[0].glob("*.dcm"))
        for path in files:
            orthanc.upload(path)
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        study_id = orthanc.study_id(study_uid)
        with TriageService(Runtime.create(settings)):
            orthanc.request(
                "POST", "/modalities/triage/store", {"Resources": [study_id], "Synchronous": True}
            )

            def all_series_arrived() -> dict[str, dict] | None:
                found = ai_series(orthanc, study_uid)  # SR, summary, annotated, GSPS, map
                complete = len(found) >= 5 and ANNOTATED_HEATMAP_SERIES_DESCRIPTION in found
                return found if complete else None

            series = wait_until(all_series_arrived, 300, "the AI series in Orthanc")

        # The study page of Orthanc Explorer lists the AI series by description.
        browser.get(f"{orthanc.url}/app/explorer.html#study?uuid={study_id}")
        wait_until(lambda: "AI fracture" in browser.page_source, 60, "the series list")
        for description in series:
            assert description in browser.page_source
        browser.save_screenshot(str(ARTIFACTS / "orthanc-study.png"))

        # The summary image renders (Orthanc decodes our DICOM to PNG for the browser).
        summary = next(s for d, s in series.items() if "summary" in d.lower())
        browser.get(f"{orthanc.url}/instances/{summary['Instances'][0]}/preview")
        width = wait_until(
            lambda: browser.execute_script(
                "const i = document.querySelector('img'); return i && i.complete && i.naturalWidth;"
            ),
            60,
            "the summary image",
        )
        assert width >= 1024
        browser.save_screenshot(str(ARTIFACTS / "summary-in-browser.png"))

        # The annotated views open in the Orthanc web viewer.
        annotated = series[ANNOTATED_HEATMAP_SERIES_DESCRIPTION]
        browser.get(f"{orthanc.url}/web-viewer/app/viewer.html?series={annotated['ID']}")
        wait_until(
            lambda: browser.execute_script("return document.querySelectorAll('canvas').length"),
            60,
            "the web viewer's canvas",
        )
        # Drawn, not just a canvas: the heatmap and the box are in colour, the page is grey.
        wait_until(
            lambda: colour_fraction(browser.get_screenshot_as_png()) > 0.005,
            60,
            "the annotated view drawn in the web viewer",
        )
        browser.save_screenshot(str(ARTIFACTS / "web-viewer-annotated.png"))

        # The SR as dcmtk renders it: the tree with the planar ROI's coordinates.
        sr_path = fetch(orthanc, series[SR_SERIES_DESCRIPTION], tmp_path / "sr.dcm")
        tree = subprocess.run(
            [require_binary("dsrdump", "dcmtk"), str(sr_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "SCOORD" in tree and "POLYLINE" in tree
        (ARTIFACTS / "sr-dsrdump.txt").write_text(tree)
        html = tmp_path / "sr.html"
        subprocess.run([require_binary("dsr2html", "dcmtk"), str(sr_path), str(html)], check=True)
        browser.get(html.as_uri())
        wait_until(lambda: "Fracture" in browser.page_source, 30, "the rendered SR")
        browser.execute_script(  # show the measurements (the ROIs), not the header
            "const h = [...document.querySelectorAll('h1, h2')]"
            ".find(e => e.textContent.includes('Imaging Measurements'));"
            "if (h) h.scrollIntoView();"
        )
        browser.save_screenshot(str(ARTIFACTS / "sr-dsr2html.png"))

        # The GSPS applied to a positive view, and the heatmap Parametric Map of that view.
        gsps = dcmread(fetch(orthanc, series[GSPS_SERIES_DESCRIPTION], tmp_path / "pr.dcm"))
        boxed = next(
            a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            for a in gsps.GraphicAnnotationSequence
            if "GraphicObjectSequence" in a
        )
        source = next(ds for ds in map(dcmread, files) if ds.SOPInstanceUID == boxed)
        render_gsps(source, gsps).save(ARTIFACTS / "gsps-applied.png")
        maps = series[PM_SERIES_DESCRIPTION]["Instances"]
        for number, instance_id in enumerate(maps):
            pm = dcmread(fetch_instance(orthanc, instance_id, tmp_path / f"pm{number}.dcm"))
            referenced = pm.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
            if referenced.ReferencedSOPInstanceUID == boxed:
                render_parametric_map(source, pm, ARTIFACTS / "parametric-map.png")
        pictures = (
            "orthanc-study.png",
            "summary-in-browser.png",
            "web-viewer-annotated.png",
            "sr-dsr2html.png",
            "gsps-applied.png",
            "parametric-map.png",
        )
        for name in pictures:
            assert (ARTIFACTS / name).stat().st_size > 10_000  # a real picture, not a blank page
        shutil.copy(tmp_path / "orthanc" / "orthanc.log", ARTIFACTS / "orthanc-viewer-test.log")


def colour_fraction(png: bytes) -> float:
    """The share of a screenshot's pixels that are clearly coloured (not grey)."""
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int16)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float((spread > 60).mean())


def fetch(orthanc: Orthanc, series: dict, path: Path) -> Path:
    """The first instance of an Orthanc series, written to `path`."""
    return fetch_instance(orthanc, series["Instances"][0], path)


def fetch_instance(orthanc: Orthanc, instance_id: str, path: Path) -> Path:
    path.write_bytes(orthanc.get(f"/instances/{instance_id}/file"))
    return path
