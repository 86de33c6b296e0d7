"""The OHIF viewer (v3) for the browser tests: its built app from npm, served beside Orthanc.

``make peers`` runs ``python3 -m tests.ohif`` once: ``npm pack`` takes the pinned
``@ohif/app`` tarball from the npm registry (its ``dist/`` is the built viewer), checks its
integrity against the pinned hash and unpacks it under ``var/ohif/``. Nothing is downloaded
while the tests run.

The tests serve that ``dist/`` from one loopback origin with a reverse proxy of
``/dicom-web/`` to a real Orthanc (its DICOMweb plugin): OHIF and its data source on the same
origin, so the browser needs no CORS headers, which Orthanc cannot send. This module's top
level uses the standard library only (``make peers`` runs before the project is installed).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The viewer the tests and docker-compose.yml's ``ohif`` service run (kept equal by a test).
#: Not 3.13.2, the latest release when this was pinned: its image loader keeps only the first
#: letter of VOI LUT Function (0028,1056), so our DX views (LINEAR) stayed black
#: ("Invalid VOI LUT function", upstream issue OHIF/Viewers#6239).
OHIF_VERSION = "3.12.10"
#: The npm registry's integrity of ``@ohif/app@OHIF_VERSION``'s tarball.
OHIF_INTEGRITY = (
    "sha512-0kuF66Mq9c9dMD++bUsTjMrJpXJwaZhz9B4uS244DawAjSkTwIYFU93pxPuRUQixaRi7Q"
    "AHlF3Fe1qudBlZrmA=="
)
REPO = Path(__file__).resolve().parents[1]
OHIF_DIST = REPO / "var" / "ohif" / f"app-{OHIF_VERSION}" / "dist"

#: OHIF's configuration, the one docker-compose.yml's ohif service uses: one DICOMweb data
#: source, Orthanc's plugin at /dicom-web/ on OHIF's own origin.
APP_CONFIG = REPO / "deploy" / "ohif" / "app-config.js"


def install(target: Path = OHIF_DIST) -> Path:
    """Fetch ``@ohif/app@OHIF_VERSION`` with ``npm pack``, check it, unpack its ``dist/``."""
    if (target / "index.html").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: install Node.js with npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        subprocess.run(
            [npm, "pack", "--silent", f"@ohif/app@{OHIF_VERSION}"],
            cwd=scratch,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tarball = Path(scratch) / f"ohif-app-{OHIF_VERSION}.tgz"
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if f"sha512-{digest}" != OHIF_INTEGRITY:
            raise SystemExit(f"{tarball.name}: integrity sha512-{digest}, not {OHIF_INTEGRITY}")
        unpack(tarball, Path(scratch))
        # One rename into place: an interrupted install never leaves half a viewer.
        Path(scratch, "package", "dist").rename(target)
    return target


def unpack(tarball: Path, into: Path) -> None:
    """Unpack the npm tarball: plain files and folders inside ``into``, nothing else."""
    with tarfile.open(tarball) as archive:
        members = archive.getmembers()
        for member in members:
            inside = (into / member.name).resolve().is_relative_to(into.resolve())
            if not (inside and (member.isfile() or member.isdir())):
                raise SystemExit(f"{tarball.name}: unexpected member {member.name!r}")
        # Debian's Python 3.11.2 has no extraction filters; the members are checked above.
        archive.extractall(into, members=members)


# -- serving --------------------------------------------------------------------------------

#: Request headers passed on to Orthanc (DICOMweb negotiates by Accept).
FORWARDED_REQUEST_HEADERS = ("Accept", "Content-Type")
#: Response headers passed back to the browser.
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Content-Length", "ETag", "Last-Modified")


class OhifHandler(http.server.SimpleHTTPRequestHandler):
    """OHIF's files, its configuration, and ``/dicom-web/`` proxied to Orthanc."""

    dist: Path
    orthanc_url: str
    protocol_version = "HTTP/1.1"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, directory=str(self.dist), **kwargs)  # type: ignore[misc]

    def do_GET(self) -> None:
        if self.path.startswith(("/dicom-web/", "/wado")):  # as deploy/ohif/nginx.conf
            self.proxy()
        elif self.path.split("?")[0] == "/app-config.js":
            self.send_bytes(APP_CONFIG.read_bytes(), "application/javascript")
        elif (self.dist / self.path.split("?")[0].lstrip("/")).is_file():
            super().do_GET()
        else:  # OHIF is a single-page app: its routes (/viewer, ...) are index.html
            self.send_bytes((self.dist / "index.html").read_bytes(), "text/html")

    def do_POST(self) -> None:
        self.proxy()

    def send_bytes(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(
            self.orthanc_url + self.path, data=body, method=self.command
        )
        for name in FORWARDED_REQUEST_HEADERS:
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            response = urllib.request.urlopen(request, timeout=120)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            payload = response.read()
            self.send_response(response.status)
            for name in FORWARDED_RESPONSE_HEADERS:
                if name != "Content-Length" and response.headers.get(name):
                    self.send_header(name, response.headers[name])
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: request lines carry study UIDs and patient IDs, kept out of every log."""


@contextmanager
def serve_ohif(orthanc_url: str, dist: Path = OHIF_DIST, port: int = 0) -> Iterator[str]:
    """OHIF on ``http://127.0.0.1:<port>``, its DICOMweb data source the given Orthanc.

    Yields the viewer's base URL.
    """
    handler = type("Handler", (OhifHandler,), {"dist": dist, "orthanc_url": orthanc_url})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="ohif-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


if __name__ == "__main__":
    print(install())
