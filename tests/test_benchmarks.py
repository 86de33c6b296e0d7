"""The benchmark commands run (smoke size): their figures go in BENCHMARKS.md, not here.

No timing is asserted: only that each command runs end to end against its reference
and writes the JSON the document is built from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import require, require_binary

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _run(module: str, *options: str, timeout: float = 600) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_ingest_benchmark_runs_against_storescp_and_orthanc(tmp_path: Path) -> None:
    require_binary("storescp", "dcmtk")
    require_binary("Orthanc", "orthanc")
    out = tmp_path / "ingest.json"
    _run("benchmarks.ingest", "--quick", "--rounds", "1", "--stock-receive", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    # Two sets x (1, 4) associations x (one process, two, pynetdicom's socket reads).
    assert len(rows) == 12
    assert {row["node"] for row in rows} == {"node", "node-2p", "node-pynetdicom-recv"}
    assert all(
        row["ratio_node_to_storescp"] > 0 and row["ratio_node_to_orthanc"] > 0 for row in rows
    )


@pytest.mark.parametrize("form", [(), ("--shared-backbone",)], ids=["two-networks", "shared"])
def test_gpu_benchmark_runs_on_whatever_device_there_is(
    demo_bundle: Path, tmp_path: Path, form: tuple[str, ...]
) -> None:
    out = tmp_path / "gpu.json"
    _run(
        "benchmarks.gpu",
        "--bundle", str(demo_bundle),
        "--architecture", "densenet-small", "--image-size", "64",
        "--batch-sizes", "1,4", "--seconds", "0.2", *form,
        "--json", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert [row["batch"] for row in result["rows"]] == [1, 4]
    assert result["shared_backbone"] == bool(form)
    assert result["device_name"] and isinstance(result["goal_met"], bool)


def test_training_speed_benchmark_projects_mura_hours(tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    _run(
        "benchmarks.training_speed",
        "--preset", "phantom", "--patients", "3", "--size", "64", "--image-size", "32",
        "--json", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["bundle_written"] and result["preset_image_epochs"] == 16
    assert result["projected_hours_mura_whole_run_rate"] > 0
    assert result["projected_hours_mura_bare_step_rate"] > 0


def test_output_size_benchmark_runs_the_default_profile(tmp_path: Path) -> None:
    out = tmp_path / "output_size.json"
    _run("benchmarks.output_size", "--quick", "--json", str(out))
    result = json.loads(out.read_text())
    studies = [row["study"] for row in result["rows"]]
    assert len(studies) == 6 and result["real_sized"] == [1200, 1000]
    assert all(row["source_bytes"] > 0 and row["ai_bytes"] > 0 for row in result["rows"])
    not_assessed = next(row for row in result["rows"] if "chest" in row["study"])
    assert set(not_assessed["ai_bytes_by_kind"]) == {"sr"}  # the default profile: SR only


def test_peer_benchmark_runs_the_monai_deploy_app_and_the_node(tmp_path: Path) -> None:
    from benchmarks.peer_monai_deploy import (
        DEFAULT_PEER_VENV,
        PeerUnavailableError,
        ensure_peer_venv,
    )

    try:  # the first run on a machine installs the SDK's virtualenv from PyPI
        ensure_peer_venv(DEFAULT_PEER_VENV)
    except PeerUnavailableError as error:
        require(False, f"monai-deploy-app-sdk cannot be installed here: {error}")
    out = tmp_path / "peer.json"
    _run(
        "benchmarks.peer_monai_deploy",
        "--studies", "2", "--rows", "256",
        "--architecture", "densenet-small", "--image-size", "64",
        "--profile", "--json", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    summaries = report["summaries"]
    sides = [
        "node-sr-only",
        "node-default-outputs",
        "node-sr-only-shared",
        "node-default-outputs-shared",
        "node-sr-only-heartbeat",
    ]
    assert list(summaries) == ["peer", *sides]
    assert all(row["warm_studies"] == 1 and row["median_seconds"] > 0 for row in summaries.values())
    assert report["peer_versions"]["monai-deploy-app-sdk"] == "4.0.0"
    assert list(report["ratios_to_peer"]) == sides
    assert set(report["bare_forward_seconds"][0]) == {"torchscript", "eager"}
    steps = report["profiles"]["node-default-outputs"]["ms_per_study"]
    assert steps["stage 2: fracture network"] > 0 and steps["outputs: build and write"] > 0
    # The shared backbone's stage 1 gave stage 2's probabilities: no pass of its own.
    shared = report["profiles"]["node-default-outputs-shared"]["ms_per_study"]
    assert (
        shared["stage 2: fracture network"] == 0
        and shared["stage 1: region network, pixel gate"] > 0
    )


def test_cold_start_benchmark_starts_serve_with_and_without_the_warm_up(
    test_bundle: Path, tmp_path: Path
) -> None:
    require_binary("Orthanc", "orthanc")
    out = tmp_path / "cold.json"
    options = ("--bundle", str(test_bundle), "--studies", "2", "--rounds", "1")
    _run("benchmarks.cold_start", *options, "--json", str(out), timeout=900)
    results = json.loads(out.read_text())["results"]
    assert [row["variant"] for row in results] == [
        "warm-up at start (shipped)",
        "no warm-up (reference)",
    ]
    assert all(row["first_to_later"] > 0 and row["start_to_ready_s"] > 0 for row in results)
