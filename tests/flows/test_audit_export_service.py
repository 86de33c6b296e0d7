"""The running node exports its audit events to a syslog collector when configured."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from config import Settings, load_settings
from flows.node.service import TriageService
from flows.runtime import Runtime
from tests.dicom_node.test_audit_export import Collector, parse


def test_node_sends_its_audit_events_to_the_collector(
    make_settings: Callable[..., Settings],
) -> None:
    collector = Collector()
    try:
        settings = make_settings(
            audit_syslog={"host": "127.0.0.1", "port": collector.port, "poll_seconds": 0.2}
        )
        service = TriageService(Runtime.create(settings))
        assert service.audit_export is not None
        with service:
            host, port = service.address
            ae = AE(ae_title="ECHOSCU")
            ae.add_requested_context(Verification)
            assoc = ae.associate(host, port, ae_title=settings.ae_title)
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
            messages = collector.wait_for(1)
        assert messages, "no audit message reached the collector"
        accepted = parse(messages[0])
        assert accepted.find("EventIdentification/EventID").get("csd-code") == "110114"
        assert [p.get("UserID") for p in accepted.findall("ActiveParticipant")] == [
            settings.ae_title,
            "ECHOSCU",
        ]
        assert re.fullmatch(
            r"\d+\.\d+\.\d+\.\d+",
            accepted.findall("ActiveParticipant")[1].get("NetworkAccessPointID"),
        )
    finally:
        collector.close()


def test_export_is_off_unless_configured(tmp_path: Path) -> None:
    settings = load_settings(
        port=0,
        store_dir=tmp_path / "store",
        output_dir=tmp_path / "outputs",
        database_url=f"sqlite:///{tmp_path / 'audit.db'}",
    )
    assert TriageService(Runtime.create(settings)).audit_export is None
