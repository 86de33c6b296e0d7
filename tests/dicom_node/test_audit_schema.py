"""Every exported audit message is valid against DICOM's own Audit Message Schema.

PS3.15 A.5.1.1 gives the schema in RELAX NG compact syntax; a copy is committed in
``dicom_node/schemas/audit-message.rnc``. lxml validates RELAX NG's XML syntax, so the
test converts the compact text with rnc2rng (a dev dependency). The copy's ``##``
documentation comments trail the patterns they describe, which the compact grammar
does not allow, so they are read as plain ``#`` comments: documentation carries no
constraint, the schema is unchanged.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import rnc2rng
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from sqlalchemy.orm import Session, sessionmaker

from db.audit import AuditEventType, AuditLog, Outcome
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.models import AuditEvent
from dicom_node.atna.export import audit_message

SCHEMA = Path(__file__).resolve().parents[2] / "dicom_node" / "schemas" / "audit-message.rnc"
STUDY = "1.2.826.0.1.3680043.8.498.9"
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    compact = SCHEMA.read_text(encoding="utf-8").replace("##", "#")
    return etree.RelaxNG(etree.fromstring(rnc2rng.dumps(rnc2rng.loads(compact)).encode()))


def assert_valid(schema: etree.RelaxNG, message: str) -> None:
    document = etree.fromstring(message.encode("utf-8"))
    assert schema.validate(document), f"{schema.error_log}\n{message}"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def test_the_schema_rejects_what_it_should(schema: etree.RelaxNG) -> None:
    """The converted schema constrains: a message without participants fails."""
    bare = (
        '<AuditMessage><EventIdentification EventDateTime="2026-01-01T00:00:00Z" '
        'EventOutcomeIndicator="0"><EventID csd-code="110100" codeSystemName="DCM" '
        'originalText="Application Activity"/></EventIdentification>'
        '<AuditSourceIdentification AuditSourceID="X"/></AuditMessage>'
    )
    assert not schema.validate(etree.fromstring(bare))


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_event_type_exports_a_valid_message(
    schema: etree.RelaxNG, sessions: sessionmaker[Session], outcome: Outcome
) -> None:
    """Each event type, with a study and SOP Instance, with a study only, and without
    (the node is then the participant object), as the node records them."""
    with sessions.begin() as session:
        audit = AuditLog(session)
        for kind in AuditEventType:
            audit.record(
                kind,
                outcome,
                actor="MODALITY",
                study_instance_uid=STUDY,
                sop_instance_uid=f"{STUDY}.1.1",
                sop_class_uid=SOP_CLASS,
                address="127.0.0.1",
                reason="refused <because> & more",
            )
            audit.record(kind, outcome, actor="triage", study_instance_uid=STUDY)
            audit.record(kind, outcome, sop_instance_uid=f"{STUDY}.1.2", reason="bad")
    with sessions() as session:
        events = list(session.query(AuditEvent).order_by(AuditEvent.id))
    assert len(events) == 3 * len(AuditEventType)
    for event in events:
        assert_valid(schema, audit_message(event, ae_title="FRACTURE_TRIAGE", host="node-1"))


def _event(actor: str, reason: str, sop_class_uid: str) -> AuditEvent:
    return AuditEvent(
        id=7,
        occurred_at=dt.datetime(2026, 11, 22, 10, 0, 0, 1, tzinfo=dt.UTC),
        event_type="instance_refused",
        outcome="failure",
        actor=actor,
        study_instance_uid=STUDY,
        sop_instance_uid=f"{STUDY}.1.1",
        detail={"reason": reason, "sop_class_uid": sop_class_uid, "address": "10.0.0.1"},
        previous_hash="0" * 64,
        event_hash="a" * 64,
    )


@settings(max_examples=150, deadline=None)
@given(actor=st.text(min_size=1), reason=st.text(), sop_class_uid=st.text())
def test_any_text_from_a_peer_keeps_the_message_valid(
    schema: etree.RelaxNG, actor: str, reason: str, sop_class_uid: str
) -> None:
    """A hostile calling AE title or an exception message with control characters,
    surrogates or markup cannot break the XML or the schema."""
    message = audit_message(_event(actor, reason, sop_class_uid), ae_title="NODE", host="h")
    assert_valid(schema, message)
    described = ET.fromstring(message).find("EventIdentification/EventOutcomeDescription")
    assert (described is not None) == bool(reason)
