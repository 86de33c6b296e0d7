"""The readiness checks one by one, on a node's parts that are not all running."""

from __future__ import annotations

from pathlib import Path

from config import load_settings
from db.migrate import upgrade
from dicom_node.receive.scp import StorageSCP
from flows.node.operations import NodeOperations
from flows.runtime import Runtime
from tests.peers import wait_until


def _operations(tmp_path: Path, bundle: Path, **overrides: object) -> NodeOperations:
    settings = load_settings(
        None,
        store_dir=tmp_path / "store",
        output_dir=tmp_path / "outputs",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
        model_bundle_dir=bundle,
        **overrides,
    )
    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    return NodeOperations(runtime, StorageSCP(settings, runtime.sessions, runtime.store))


def _checks(operations: NodeOperations) -> dict[str, tuple[bool, str]]:
    return {check.name: (check.ok, check.detail) for check in operations.readiness()}


def test_each_check_says_what_it_found(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text('{"name": "m", "version": "2.0"}')
    # Server mode: the workers load the model; the node needs the bundle to be there.
    operations = _operations(
        tmp_path, bundle, prefect_api_url="http://127.0.0.1:9/api", min_free_disk_bytes=10**18
    )
    checks = _checks(operations)
    assert checks["model"] == (True, "bundle m 2.0 present (server mode: the workers load it)")
    assert checks["database"][0] and "at revision" in checks["database"][1]
    assert not checks["store"][0] and "below min_free_disk_bytes" in checks["store"][1]
    assert checks["outputs"][0]
    assert checks["receiving"] == (False, "0 of 1 receiving processes running")


def test_a_model_that_cannot_load_keeps_the_node_unready(tmp_path: Path) -> None:
    operations = _operations(tmp_path, tmp_path / "no-bundle", http={"enabled": False})
    operations.start()  # embedded: the model loads in a thread
    try:
        assert wait_until(lambda: "still loading" not in _checks(operations)["model"][1], 120)
        ok, detail = _checks(operations)["model"]
        assert not ok and "BundleError" in detail
    finally:
        operations.stop()
