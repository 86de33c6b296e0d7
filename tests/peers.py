"""Real peers for the tests: dcmtk, dciodvfy, Orthanc, PostgreSQL.

A missing peer skips its test with a clear reason on a developer's box; under
``CI=true`` it fails instead, so CI can never go green by skipping.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (developer box) or fail (CI) when a peer is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} not found (apt-get install {package})")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, timeout: float = 30, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Until something listens on the port; fails at once if ``process`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited ({process.returncode}) before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (read without waiting: EOF or a reset)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False  # open, nothing to read
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def wait_until(predicate: Callable[[], bool], timeout: float = 30, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def assert_dciodvfy_clean(path: Path | str) -> str:
    """Validate a DICOM file with dicom3tools' ``dciodvfy``; fail on any error.

    Warnings are allowed and returned with the rest of the output.
    """
    binary = require_binary("dciodvfy", "dicom3tools")
    result = subprocess.run(
        [binary, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "Error" in line]
    if errors:
        pytest.fail(f"dciodvfy found {len(errors)} error(s) in {path}:\n{output}")
    return output


def nema_cr(name: str) -> Path:
    """A NEMA CR test image from the pydicom-data package (e.g. RG3_J2KR: JPEG 2000)."""
    import warnings

    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom-data warns that it cannot download extras
        files = get_testdata_files(f"{name}.dcm")
    require(bool(files), f"pydicom-data file {name} is not installed (pip install pydicom-data)")
    return Path(files[0])


# -- Orthanc -----------------------------------------------------------------------------


@dataclass
class Orthanc:
    """A real Orthanc on loopback with its own config and storage."""

    http_port: int
    dicom_port: int
    ae_title: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
        content_type = response.headers.get("Content-Type", "")
        return json.loads(payload) if "json" in content_type else payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> dict[str, Any]:
        return self.request("POST", "/instances", path.read_bytes())

    def study_id(self, study_instance_uid: str) -> str | None:
        found = self.request("POST", "/tools/lookup", study_instance_uid.encode())
        for item in found:
            if item["Type"] == "Study":
                return item["ID"]
        return None

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        study = self.study_id(study_instance_uid)
        return [] if study is None else self.get(f"/studies/{study}/series")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_WEBVIEWER_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so")


@contextmanager
def run_orthanc(
    work_dir: Path,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    *,
    dicomweb: bool = False,
    plugins: tuple[Path, ...] = (),
    http_port: int | None = None,
    dicom_port: int | None = None,
) -> Iterator[Orthanc]:
    """A real Orthanc; ``dicomweb`` loads its DICOMweb plugin (Debian orthanc-dicomweb)."""
    binary = require_binary("Orthanc", "orthanc")
    if dicomweb:
        require(ORTHANC_DICOMWEB_PLUGIN.is_file(), "apt-get install orthanc-dicomweb")
    work_dir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = http_port or free_port(), dicom_port or free_port()
    config: dict[str, Any] = {
        "Name": "fracture-triage-test-pacs",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "TESTPACS",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "DicomModalities": {
            name: [aet, host, port] for name, (aet, host, port) in (modalities or {}).items()
        },
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "Plugins": [str(p) for p in ((ORTHANC_DICOMWEB_PLUGIN,) if dicomweb else ()) + plugins],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    config_path = work_dir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = work_dir / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    orthanc = Orthanc(http_port, dicom_port, "TESTPACS", process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                orthanc.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Orthanc did not start: {log_path.read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield orthanc
    finally:
        orthanc.stop()


# -- Chromium ----------------------------------------------------------------------------

#: Flags for a headless Chromium that reaches nothing but loopback.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: WebGL on the CPU (SwiftShader), which Chromium no longer falls back to by itself:
#: OHIF draws with WebGL. Only for pages of our own loopback servers.
CHROMIUM_WEBGL_FLAGS = ("--enable-unsafe-swiftshader", "--use-angle=swiftshader")


@contextmanager
def run_chromium(
    profile_dir: Path, *flags: str, window: tuple[int, int] = (1400, 1000)
) -> Iterator[Any]:
    """Debian's Chromium driven by Selenium (chromium-driver); never a downloaded browser."""
    chromium = require_binary("chromium", "chromium")
    driver_path = require_binary("chromedriver", "chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "selenium is not installed (pip install -e .[dev])")
        raise
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, *flags, f"--window-size={window[0]},{window[1]}"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


# -- PostgreSQL --------------------------------------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get(
    "FRACTURE_TRIAGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextmanager
def scratch_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except Exception as error:  # pragma: no cover - depends on the box
        require(False, f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {error}")
        raise
    name = f"ft_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
