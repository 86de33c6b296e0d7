"""The embedded node's warm-up: a synthetic study through the real flow, nothing left behind."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless
from sqlalchemy import func, select

from config import Settings
from db.migrate import upgrade
from db.models import AuditEvent, Instance, Study
from flows.node.service import TriageService
from flows.node.startup import NodeStartError
from flows.node.warm_up import _store_phantom_study, warm_up
from flows.runtime import Runtime, current_runtime, install_runtime
from flows.triage.payloads import TriageStatus


def counts(runtime: Runtime) -> tuple[int, int]:
    with runtime.sessions() as session:
        studies = session.scalar(select(func.count()).select_from(Study))
        events = session.scalar(select(func.count()).select_from(AuditEvent))
    return int(studies or 0), int(events or 0)


def test_warm_up_triages_a_phantom_study_and_leaves_the_node_untouched(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    runtime = Runtime.create(settings)
    upgrade(runtime.engine)
    install_runtime(runtime)
    try:
        done = warm_up(runtime)
        assert done is not None
        assert done.status is TriageStatus.TRIAGED and done.outputs >= 1
        assert done.undelivered == 0  # the loopback sink took every object
        assert current_runtime() is runtime  # the node's runtime is back
        assert counts(runtime) == (0, 0)  # no study, no audit event in the node's database
        assert not any(settings.store_dir.rglob("*.dcm"))
        assert not any(settings.output_dir.rglob("*.dcm"))
    finally:
        install_runtime(None)
        runtime.close()


def test_a_failed_warm_up_is_logged_and_the_node_starts_anyway(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture, tmp_path
) -> None:
    runtime = Runtime.create(make_settings(model_bundle_dir=tmp_path / "no-bundle"))
    install_runtime(runtime)
    try:
        assert warm_up(runtime) is None
        assert current_runtime() is runtime
        assert "warm-up failed" in caplog.text
    finally:
        install_runtime(None)
        runtime.close()


def test_the_warm_up_study_takes_the_paths_a_real_one_does(
    make_settings: Callable[..., Settings],
) -> None:
    """Views twice the network's input (resampled both ways), one of them JPEG 2000 coded."""
    runtime = Runtime.create(make_settings())
    upgrade(runtime.engine)
    try:
        _store_phantom_study(runtime)
        with runtime.sessions() as session:
            paths = session.scalars(select(Instance.path)).all()
        views = [dcmread(runtime.store.absolute(path)) for path in paths]
        assert len(views) == 3
        assert {int(view.Rows) for view in views} == {2 * runtime.model().image_size}
        syntaxes = [view.file_meta.TransferSyntaxUID for view in views]
        assert syntaxes.count(JPEG2000Lossless) == 1
    finally:
        runtime.close()


def test_the_node_keeps_its_start_up_objects_from_the_collector_while_it_runs(
    make_settings: Callable[..., Settings],
) -> None:
    runtime = Runtime.create(make_settings(warm_up_at_start=False))
    with TriageService(runtime):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # collectable again: one process may start many nodes


def test_a_node_that_fails_to_start_leaves_nothing_frozen(
    make_settings: Callable[..., Settings],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(warm_up_at_start=False, port=taken.getsockname()[1])
        with pytest.raises(NodeStartError, match="is taken by another program"):
            TriageService(Runtime.create(settings)).start()
    assert gc.get_freeze_count() == 0
