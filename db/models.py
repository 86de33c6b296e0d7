"""SQLAlchemy 2 models of the audit database.

Tables: studies and their instances as received, triage runs with per-image
and per-study results, the output objects a run produced and their
deliveries to each destination, and the append-only ``audit_events``.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from config.domain.vocabulary import OutputKind
from db.statuses import DeliveryStatus, RunStatus, StudyStatus

# One naming convention so that migrations name constraints the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)
AE_TITLE = String(16)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A time-zone-aware timestamp, stored in UTC; SQLite gives it back aware too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be time-zone aware")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


def _enum(cls: type[enum.Enum]) -> Enum:
    # Store the values (readable in SQL) in a VARCHAR with a CHECK constraint on both dialects.
    return Enum(
        cls,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        name=cls.__name__.lower(),
    )


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus), index=True)
    urgent: Mapped[bool] = mapped_column(
        default=False, doc="The site's urgency rule matched an instance: triaged first."
    )
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    ready_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    triage_attempts: Mapped[int] = mapped_column(
        default=0, server_default="0", doc="Failed triage attempts since the study last changed."
    )
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(
        doc="A READY study whose triage failed waits until then (backoff); None: at once."
    )

    instances: Mapped[list[Instance]] = relationship(back_populates="study", order_by="Instance.id")
    runs: Mapped[list[TriageRun]] = relationship(back_populates="study", order_by="TriageRun.id")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    triageable: Mapped[bool] = mapped_column(default=False)
    path: Mapped[str] = mapped_column(String(512), doc="Relative to the store directory.")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="instances")


class TriageRun(Base):
    __tablename__ = "triage_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    input_key: Mapped[str | None] = mapped_column(
        String(64),
        index=True,
        doc="SHA-256 over the model's identity and the source instances (UIDs and contents).",
    )
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text, doc="Reason of a failure; never patient data.")

    study: Mapped[Study] = relationship(back_populates="runs")
    image_results: Mapped[list[ImageResult]] = relationship(
        back_populates="run", order_by="ImageResult.id"
    )
    study_result: Mapped[StudyResult | None] = relationship(back_populates="run")
    outputs: Mapped[list[OutputObject]] = relationship(
        back_populates="run", order_by="OutputObject.id"
    )


class ImageResult(Base):
    __tablename__ = "image_results"
    __table_args__ = (UniqueConstraint("run_id", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("triage_runs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    region: Mapped[str | None] = mapped_column(String(32))
    region_probability: Mapped[float | None] = mapped_column(Float)
    fracture_probability: Mapped[float | None] = mapped_column(Float)
    level: Mapped[str | None] = mapped_column(String(32))
    not_assessed_gate: Mapped[str | None] = mapped_column(
        String(16), doc="What stopped the image: header, pixels, conflict, unreadable."
    )
    not_assessed_reason: Mapped[str | None] = mapped_column(Text)
    fracture_type: Mapped[str | None] = mapped_column(
        String(64), doc="The type head's call on a flagged view (bundles with a type head)."
    )
    fracture_type_probability: Mapped[float | None] = mapped_column(Float)

    run: Mapped[TriageRun] = relationship(back_populates="image_results")


class StudyResult(Base):
    __tablename__ = "study_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("triage_runs.id"), unique=True)
    region: Mapped[str | None] = mapped_column(String(32))
    fracture_probability: Mapped[float | None] = mapped_column(Float)
    level: Mapped[str | None] = mapped_column(String(32))
    threshold_suspected: Mapped[float | None] = mapped_column(Float)
    threshold_likely: Mapped[float | None] = mapped_column(Float)
    not_assessed_gate: Mapped[str | None] = mapped_column(String(16))
    not_assessed_reason: Mapped[str | None] = mapped_column(Text)

    run: Mapped[TriageRun] = relationship(back_populates="study_result")


class OutputObject(Base):
    """An object a triage run produced: a DICOM object of the study, or an HL7 message."""

    __tablename__ = "output_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("triage_runs.id"), index=True)
    kind: Mapped[OutputKind] = mapped_column(
        Enum(
            OutputKind,
            native_enum=False,
            create_constraint=False,
            length=16,
            values_callable=lambda members: [m.value for m in members],
        )
    )
    sop_class_uid: Mapped[str | None] = mapped_column(UID, doc="None for an HL7 message.")
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str | None] = mapped_column(UID, doc="None for an HL7 message.")
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    run: Mapped[TriageRun] = relationship(back_populates="outputs")
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="output", order_by="Delivery.id"
    )


class Delivery(Base):
    """One output object to one destination: the outbox row and its outcome."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("output_id", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("output_objects.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(
        index=True, doc="When the outbox may try again; None: at once."
    )
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None]

    output: Mapped[OutputObject] = relationship(back_populates="deliveries")


class AuditEvent(Base):
    """One thing that happened. Rows are only ever inserted (the database enforces it).

    ``previous_hash`` and ``event_hash`` chain the events (see :mod:`db.audit`);
    ``previous_hash`` is unique, so two events can never follow the same one.
    """

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("previous_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16), doc="'success' or 'failure'.")
    actor: Mapped[str | None] = mapped_column(
        String(64), doc="Calling AE title, user or component."
    )
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    previous_hash: Mapped[str] = mapped_column(
        String(64), doc="event_hash of the event before this one (64 zeros for the first)."
    )
    event_hash: Mapped[str] = mapped_column(
        String(64), doc="SHA-256 (hex) of this event's canonical content and previous_hash."
    )


class AuditExportCursor(Base):
    """How far an exporter (e.g. the syslog/ATNA export) has sent the audit trail."""

    __tablename__ = "audit_export_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
