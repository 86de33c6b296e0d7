"""C-FIND and C-MOVE against a real Orthanc, the study moved into our own SCP."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from config import Destination, load_settings
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import Instance
from dicom_node.receive.scp import StorageSCP
from dicom_node.retrieve.query import QueryError, StudyQuery, find_studies, get_study, move_study
from dicom_node.store import InstanceStore
from tests.dicom_node.conftest import make_dx
from tests.peers import free_port, run_orthanc

pytestmark = pytest.mark.peers

STUDY = "1.2.826.0.1.3680043.10.4.1"


def test_find_by_date_range_then_move_to_our_scp(tmp_path: Path) -> None:
    node_port = free_port()
    settings = load_settings(
        None,
        port=node_port,
        store_dir=tmp_path / "store",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
    )
    with run_orthanc(
        tmp_path / "orthanc", modalities={"triage": (settings.ae_title, "127.0.0.1", node_port)}
    ) as orthanc:
        for index in (1, 2):
            path = tmp_path / f"{index}.dcm"
            make_dx(
                study_instance_uid=STUDY,
                series_instance_uid=f"{STUDY}.1",
                sop_instance_uid=f"{STUDY}.1.{index}",
            ).save_as(path, enforce_file_format=True)
            orthanc.upload(path)
        pacs = Destination(
            name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
        )

        in_range = StudyQuery(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 1, 31))
        matches = find_studies(pacs, settings.ae_title, in_range)
        assert [m.study_instance_uid for m in matches] == [STUDY]
        assert matches[0].study_date == "20240102"
        later = StudyQuery(date_from=dt.date(2025, 1, 1))
        assert find_studies(pacs, settings.ae_title, later) == []

        engine = make_engine(settings.database_url)
        upgrade(engine)
        sessions = make_session_factory(engine)
        scp = StorageSCP(settings, sessions, InstanceStore(settings.store_dir))
        scp.start()
        try:
            result = move_study(pacs, settings.ae_title, STUDY, settings.ae_title)
        finally:
            scp.stop()
        assert (result.completed, result.failed) == (2, 0)
        with sessions() as session:
            stored = sorted(session.scalars(select(Instance.sop_instance_uid)))
        assert stored == [f"{STUDY}.1.1", f"{STUDY}.1.2"]
        engine.dispose()

        with pytest.raises(QueryError, match="C-MOVE"):
            move_study(pacs, settings.ae_title, STUDY, "NOBODY")


def test_unreachable_pacs_raises_a_query_error() -> None:
    pacs = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port())
    with pytest.raises(QueryError, match="no association"):
        find_studies(pacs, "FRACTURE_TRIAGE", StudyQuery(), timeout=5)


def test_c_get_brings_the_study_back_over_our_own_association(tmp_path: Path) -> None:
    settings = load_settings(
        None, port=0, store_dir=tmp_path / "store", database_url=f"sqlite:///{tmp_path / 'a.db'}"
    )
    # Orthanc knows our AE title, but not where we listen: C-GET needs no route back.
    unreachable = ("FRACTURE_TRIAGE", "127.0.0.1", free_port())
    with run_orthanc(tmp_path / "orthanc", modalities={"triage": unreachable}) as orthanc:
        for index in (1, 2, 3):
            path = tmp_path / f"{index}.dcm"
            make_dx(
                study_instance_uid=STUDY,
                series_instance_uid=f"{STUDY}.1",
                sop_instance_uid=f"{STUDY}.1.{index}",
            ).save_as(path, enforce_file_format=True)
            orthanc.upload(path)
        pacs = Destination(
            name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=orthanc.dicom_port
        )
        engine = make_engine(settings.database_url)
        upgrade(engine)
        sessions = make_session_factory(engine)
        scp = StorageSCP(settings, sessions, InstanceStore(settings.store_dir))
        result = get_study(pacs, settings.ae_title, STUDY, scp.handle_store)
        assert (result.completed, result.failed) == (3, 0)
        with sessions() as session:
            stored = sorted(session.scalars(select(Instance.sop_instance_uid)))
        assert stored == [f"{STUDY}.1.{i}" for i in (1, 2, 3)]
        engine.dispose()
