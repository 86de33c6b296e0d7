"""C-STORE of compressed captures: as written where the peer accepts it, decompressed in the
same association where it does not (Orthanc; dcmtk's storescp accepting uncompressed only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from config import Destination
from config.domain.findings import AlgorithmIdentity, StudyFinding
from dicom_node.delivery.dimse import UNCOMPRESSED, requested_contexts, send_files
from dicom_node.outputs.instance import NewInstance
from dicom_node.outputs.secondary_capture import build_annotated_view
from dicom_node.outputs.sr import build_triage_sr
from tests.dicom_node.builders import blob
from tests.peers import free_port, require_binary, run_orthanc, wait_for_port

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _outputs(
    directory: Path,
    images: list[Dataset],
    finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    syntax: str,
) -> list[Path]:
    """A compressed annotated view and an (uncompressed) SR of one study, as files."""
    source = images[0]
    display = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    sc = build_annotated_view(
        source,
        display,
        finding.images[0],
        algorithm,
        NewInstance.new_series(9002),
        cam=blob(256, 256),
        transfer_syntax_uid=syntax,
    )
    sr = build_triage_sr(images, finding, algorithm, NewInstance.new_series(9001))
    paths = []
    for name, dataset in (("sc.dcm", sc), ("sr.dcm", sr)):
        paths.append(directory / name)
        dataset.save_as(paths[-1], enforce_file_format=True)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    return paths


@pytest.fixture
def outputs(
    tmp_path: Path,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
) -> list[Path]:
    """JPEG-LS: dcmtk's storescp decodes it (it has no JPEG 2000 codec)."""
    return _outputs(tmp_path, dx_images, positive_finding, algorithm, JPEGLSLossless)


@contextlib.contextmanager
def storescp(received: Path, port: int, *options: str) -> Iterator[None]:
    """dcmtk's storescp on ``port`` with its transfer syntax ``options``, Nagle off."""
    binary = require_binary("storescp", "dcmtk")
    received.mkdir()
    process = subprocess.Popen(
        [binary, *options, "-aet", "PACS", "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_for_port(port)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_each_compressed_syntax_is_proposed_alone_and_uncompressed_beside_it(
    outputs: list[Path],
) -> None:
    datasets = [pydicom.dcmread(path) for path in outputs]
    rle = pydicom.dcmread(outputs[0])
    rle.file_meta.TransferSyntaxUID = RLELossless  # only the proposal is looked at
    contexts = requested_contexts([*datasets, rle])
    sc = [syntaxes for sop_class, syntaxes in contexts if sop_class == SECONDARY_CAPTURE]
    assert sorted(sc) == sorted([[JPEGLSLossless], [RLELossless], list(UNCOMPRESSED)])
    assert [ExplicitVRLittleEndian, ImplicitVRLittleEndian] in [s for _, s in contexts]
    assert len(contexts) == 4  # SC: 3, SR: the uncompressed pair only


@pytest.mark.parametrize(
    ("options", "stored_as"),
    [
        ((), ExplicitVRLittleEndian),  # storescp's default: uncompressed only
        (("+xi",), ImplicitVRLittleEndian),  # implicit VR little endian only
        (("+xa",), JPEGLSLossless),  # every syntax it knows: the file as written
    ],
    ids=["uncompressed-only", "implicit-only", "accept-all"],
)
def test_a_peer_gets_the_capture_in_a_syntax_it_accepts_in_one_association(
    tmp_path: Path, outputs: list[Path], options: tuple[str, ...], stored_as: str
) -> None:
    port = free_port()
    received = tmp_path / "received"
    with storescp(received, port, *options):
        pacs = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
        results = send_files(outputs, pacs, "FRACTURE_TRIAGE", timeout=30)
    assert [r.success for r in results] == [True, True], [r.error for r in results]
    sent = pydicom.dcmread(outputs[0])
    (stored,) = [
        ds
        for ds in (pydicom.dcmread(path) for path in received.iterdir())
        if ds.SOPClassUID == SECONDARY_CAPTURE
    ]
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert stored.file_meta.TransferSyntaxUID == stored_as
    np.testing.assert_array_equal(stored.pixel_array, sent.pixel_array)  # lossless


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless], ids=["j2k", "jpeg-ls"])
def test_orthanc_takes_the_compressed_capture_as_written(
    tmp_path: Path,
    dx_images: list[Dataset],
    positive_finding: StudyFinding,
    algorithm: AlgorithmIdentity,
    syntax: str,
) -> None:
    files = _outputs(tmp_path, dx_images, positive_finding, algorithm, syntax)
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        pacs = Destination(
            name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port
        )
        results = send_files(files, pacs, "FRACTURE_TRIAGE", timeout=30)
        assert all(r.success for r in results), [r.error for r in results]
        sop = str(pydicom.dcmread(files[0]).SOPInstanceUID)
        (found,) = orthanc.request("POST", "/tools/lookup", sop.encode())
        stored = orthanc.get(f"/instances/{found['ID']}/metadata/TransferSyntax")
        # What BENCHMARKS.md and the viewer test rely on: Orthanc 1.10 without its GDCM
        # plugin renders JPEG-LS, not JPEG 2000 (which it stores all the same).
        try:
            rendered = bool(orthanc.get(f"/instances/{found['ID']}/preview"))
        except urllib.error.HTTPError as error:
            assert error.code == 415
            rendered = False
    assert stored.decode() == syntax
    assert rendered is (syntax == JPEGLSLossless)
