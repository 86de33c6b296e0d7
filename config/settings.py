"""Typed settings for every fracture-triage entrypoint.

Settings come from, highest priority first: keyword overrides given by the
entrypoint, ``FRACTURE_TRIAGE_*`` environment variables, a TOML file, the
defaults below. They are loaded once per entrypoint with :func:`load_settings`
and passed down; the object is frozen so nobody changes it behind another
component's back.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from config.domain.vocabulary import OutputKind

ENV_PREFIX = "FRACTURE_TRIAGE_"
CONFIG_FILE_ENV = f"{ENV_PREFIX}CONFIG"

#: The largest P-DATA-TF PDU the node announces or accepts, whatever ``max_pdu_bytes`` says:
#: a declared length is checked against the cap before anything is allocated.
PDU_LENGTH_CEILING = 16 * 1024**2

# PS3.5 6.2: an AE title is at most 16 characters of the default repertoire, no backslash,
# no control characters, and not only spaces.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the offending key."""


def validate_ae_title(value: str) -> str:
    """Return ``value`` if it is a valid AE title, else raise ``ValueError`` naming it."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            f"AE title {value!r} must be 1-16 printable ASCII characters, no backslash"
        )
    return value


class TlsSettings(BaseModel):
    """The node's TLS identity: PEM files, checked to exist at load time.

    Only paths are held here; the key is read by :mod:`ssl` when a context is
    built and never enters the settings, a log or a repr.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert_file: Path = Field(description="PEM certificate (chain) of the node.")
    key_file: Path = Field(description="PEM private key of the node, unencrypted.")
    ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle to verify peers; set, the SCP requires client certificates.",
    )

    @field_validator("cert_file", "key_file", "ca_file")
    @classmethod
    def _check_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {str(value)!r} does not exist")
        return value


class Destination(BaseModel):
    """A DICOM peer that receives the results by C-STORE (DIMSE)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["dimse"] = "dimse"
    name: str = Field(min_length=1, description="Human name used in logs and the DB.")
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: bool = Field(
        default=False,
        description="Send over TLS, with the node's certificate and CA when `tls` is set.",
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return validate_ae_title(value)


class DicomWebDestination(BaseModel):
    """A PACS that receives the results by DICOMweb STOW-RS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["dicomweb"]
    name: str = Field(min_length=1, description="Human name used in logs and the DB.")
    url: str = Field(description="DICOMweb base URL, e.g. https://pacs.example.org/dicom-web.")
    ca_file: Path | None = Field(default=None, description="CA bundle to verify an https peer.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"DICOMweb URL must be http(s)://host/..., got {value!r}")
        return value.rstrip("/")


class Hl7Destination(BaseModel):
    """A RIS that receives the worklist flag (HL7 v2 ORU^R01) over MLLP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hl7"]
    name: str = Field(min_length=1, description="Human name used in logs and the DB.")
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    sending_facility: str = Field(default="", description="MSH-4.")
    receiving_application: str = Field(default="RIS", description="MSH-5.")
    receiving_facility: str = Field(default="", description="MSH-6.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Connect and ACK timeout.")


def _destination_kind(value: Any) -> str:
    # DIMSE is the default: existing configs name no kind.
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind or "dimse"


AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")]
    | Annotated[DicomWebDestination, Tag("dicomweb")]
    | Annotated[Hl7Destination, Tag("hl7")],
    Discriminator(_destination_kind),
]


class PrioritySettings(BaseModel):
    """Which studies go first, and when the backlog may be reprocessed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    urgent_calling_ae_titles: tuple[str, ...] = Field(
        default=(),
        description="Studies sent by these AEs (e.g. the emergency department's CR) are "
        "urgent: triaged before any other ready study.",
    )
    urgent_modalities: tuple[str, ...] = Field(
        default=(), description="Studies with an instance of these modalities are urgent."
    )
    reprocess_hours: tuple[int, int] | None = Field(
        default=None,
        description="Off-peak window [start, end) in local hours, e.g. [22, 6]: reprocessing "
        "only triages studies inside it and defers the rest to its next run. None: any time.",
    )

    @field_validator("urgent_calling_ae_titles")
    @classmethod
    def _check_ae_titles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(validate_ae_title(v) for v in value)

    @field_validator("reprocess_hours")
    @classmethod
    def _check_hours(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(0 <= hour <= 23 for hour in value):
            raise ValueError(f"reprocess_hours must be two hours 0-23, got {list(value)}")
        if value is not None and value[0] == value[1]:
            raise ValueError(f"reprocess_hours {list(value)} is an empty window")
        return value

    def is_urgent(self, calling_ae_title: str | None, modality: str | None) -> bool:
        """The site's urgency rule for one received instance."""
        return (calling_ae_title or "").strip() in self.urgent_calling_ae_titles or (
            modality is not None and modality in self.urgent_modalities
        )

    def may_reprocess_at(self, hour: int) -> bool:
        """Whether reprocessing may run at local ``hour`` (0-23)."""
        if self.reprocess_hours is None:
            return True
        start, end = self.reprocess_hours
        return start <= hour < end if start < end else hour >= start or hour < end


StudyCondition = Literal["all", "assessed", "positive"]


class OutputRoute(BaseModel):
    """One rule of the output profile: these kinds of object go to these destinations
    for the studies the conditions select. A kind is made for a study when any route
    selecting the study names it (even with no destination: it is written to
    ``output_dir``); it goes to every destination of every such route."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kinds: tuple[OutputKind, ...] = Field(
        min_length=1,
        description="DICOM objects: sr, summary, sc (annotated views), gsps, pm (heatmap "
        "Parametric Map). The rejection note follows the objects it withdraws, the HL7 "
        "worklist flag goes to every HL7 destination for positive studies.",
    )
    destinations: tuple[str, ...] = Field(
        default=(), description="DICOM destination names; empty: every DICOM destination."
    )
    studies: StudyCondition = Field(
        default="all",
        description="all studies; 'assessed' (not those outside the intended use); "
        "'positive' (fracture suspected or likely).",
    )
    calling_ae_titles: tuple[str, ...] = Field(
        default=(), description="Only studies sent by these AEs (empty: any)."
    )
    modalities: tuple[str, ...] = Field(
        default=(), description="Only studies with a view of these modalities (empty: any)."
    )

    @field_validator("kinds")
    @classmethod
    def _routable(cls, value: tuple[OutputKind, ...]) -> tuple[OutputKind, ...]:
        fixed = {OutputKind.REJECTION_NOTE, OutputKind.WORKLIST_FLAG}
        if fixed & set(value):
            raise ValueError(
                f"kinds {sorted(fixed & set(value))} are not routed: the rejection note "
                "follows what it withdraws, the HL7 flag goes to HL7 destinations"
            )
        return value

    @field_validator("calling_ae_titles")
    @classmethod
    def _check_ae_titles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(validate_ae_title(v) for v in value)

    def selects(
        self, *, assessed: bool, positive: bool, calling_ae_title: str | None, modalities: set[str]
    ) -> bool:
        """Whether this route applies to a study with these properties."""
        if (self.studies == "assessed" and not assessed) or (
            self.studies == "positive" and not positive
        ):
            return False
        if (
            self.calling_ae_titles
            and (calling_ae_title or "").strip() not in self.calling_ae_titles
        ):
            return False
        return not self.modalities or bool(modalities & set(self.modalities))


#: The profile for a typical PACS: the SR for every study; the summary and the annotated
#: positive views for studies that were assessed. GSPS and Parametric Map are opt-in.
DEFAULT_ROUTES = (
    OutputRoute(kinds=(OutputKind.SR,)),
    OutputRoute(kinds=(OutputKind.SUMMARY, OutputKind.ANNOTATED), studies="assessed"),
)


class OutputSettings(BaseModel):
    """Which result objects a triage run makes, how they look, and where they go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Switches: a kind switched off is never made, whatever the routes say (e.g. from the
    # environment, FRACTURE_TRIAGE_OUTPUTS__GSPS=false); switched on, the routes decide.
    sr: bool = Field(default=True, description="The TID 1500 SR (where a route names it).")
    summary: bool = Field(default=True, description="The summary Secondary Capture.")
    annotated: bool = Field(default=True, description="Annotated copies of the views.")
    gsps: bool = Field(default=True, description="The GSPS (routed by sites that want it).")
    parametric_map: bool = Field(
        default=True, description="The heatmap Parametric Maps (routed by sites that want them)."
    )
    sr_rois: bool = Field(
        default=True, description="Planar ROIs (SCOORD) in the SR, drawn by OHIF-style viewers."
    )
    heatmap: bool = Field(
        default=True,
        description="Grad-CAM heatmap on the annotated positive views (absolute scale); "
        "off: box and result only.",
    )
    negative_views: Literal["none", "plain"] = Field(
        default="none",
        description="Annotated copies of views with no fracture suspected: none, or a plain "
        "copy under a 'no fracture suspected' band.",
    )
    compression: Literal["jpeg-2000", "jpeg-ls", "rle", "none"] = Field(
        default="jpeg-2000",
        description="Lossless transfer syntax of the Secondary Captures (annotated views, "
        "summary); the sender falls back to uncompressed where a peer does not accept it. "
        "'jpeg-ls' for viewers that cannot decode JPEG 2000 (about 2.5x the bytes).",
    )
    routes: tuple[OutputRoute, ...] = Field(
        default=DEFAULT_ROUTES,
        description="The output profile: which objects go to which destinations, when.",
    )

    def switched_on(self, kind: OutputKind) -> bool:
        """Whether ``kind`` may be made at all (its switch)."""
        switch = {
            OutputKind.SR: self.sr,
            OutputKind.SUMMARY: self.summary,
            OutputKind.ANNOTATED: self.annotated,
            OutputKind.GSPS: self.gsps,
            OutputKind.PARAMETRIC_MAP: self.parametric_map,
        }
        return switch.get(kind, True)


class AuditSyslogSettings(BaseModel):
    """Export of the audit trail as DICOM audit messages (PS3.15 A.5) to a syslog collector.

    RFC 5424 messages over TCP with octet-counting framing (RFC 6587; RFC 5425 with
    ``tls``), facility authpriv, MSGID ``IHE+RFC-3881``, as IHE ATNA's audit record
    repository expects.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=6514, ge=1, le=65535, description="6514: syslog over TLS.")
    tls: bool = Field(
        default=False,
        description="TLS, verifying the collector against tls.ca_file (or the system CAs).",
    )
    app_name: str = Field(default="fracture-triage", min_length=1, max_length=48)
    poll_seconds: float = Field(default=2.0, gt=0, description="How often new events are sent.")


class HttpSettings(BaseModel):
    """The node's HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus).

    Loopback by default: it tells anyone who can reach it the node's study counts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="Serve the endpoint beside the node.")
    bind_address: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9112, ge=0, le=65535, description="0: any free port.")


class DriftSettings(BaseModel):
    """When the node warns that what it sees no longer looks like the bundle's validation.

    Per region, the share of triaged studies flagged positive over the last
    ``window_hours`` is compared with the share the bundle's own evaluation flagged
    (its metadata); a ratio beyond ``factor`` either way is drift. The share of views
    not assessed has no reference in a bundle: above ``max_not_assessed_rate`` is drift.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_hours: float = Field(default=168.0, gt=0, description="The sliding window.")
    min_studies: int = Field(
        default=30, ge=1, description="Fewer studies of a region in the window: no verdict."
    )
    factor: float = Field(
        default=2.0, gt=1, description="Observed / reference rate beyond this (or 1/this)."
    )
    max_not_assessed_rate: float = Field(default=0.25, ge=0, le=1)
    check_seconds: float = Field(
        default=300.0, gt=0, description="How often the node checks (and audits a change)."
    )


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """All settings of the node, the flows and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # FRACTURE_TRIAGE_OUTPUTS__SR=false sets outputs.sr (one key of a table).
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # DICOM node
    ae_title: str = "FRACTURE_TRIAGE"
    bind_address: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535, description="0: any free port.")
    allowed_calling_ae_titles: tuple[str, ...] = Field(
        default=(),
        description="Calling AE titles allowed to associate; empty accepts any caller.",
    )
    allowed_calling_hosts: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Optional host check: calling AE title -> the IP addresses it may call from.",
    )
    destinations: tuple[AnyDestination, ...] = ()
    tls: TlsSettings | None = Field(
        default=None, description="TLS for the SCP (and the identity used by TLS destinations)."
    )
    study_stable_seconds: float = Field(
        default=30.0, gt=0, description="Quiet period after which a study is ready."
    )
    study_max_age_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A study still receiving this long after its first instance is triaged anyway.",
    )

    scp_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes receiving on the SCP's port, taking its connections in turn: "
        "each has its own interpreter, so concurrent associations are received on several "
        "cores.",
    )

    # Limits: what is over a limit is refused with a failure status and audited.
    max_associations: int = Field(
        default=10, ge=1, description="Concurrent associations (per receiving process)."
    )
    max_pdu_bytes: int = Field(
        default=262_144,
        ge=0,
        le=PDU_LENGTH_CEILING,
        description="Largest P-DATA-TF PDU announced (Maximum Length) and accepted; "
        "0: the 16 MiB ceiling.",
    )
    max_instance_bytes: int = Field(default=512 * 1024**2, gt=0)
    max_image_pixels: int = Field(
        default=100_000_000, gt=0, description="Rows x Columns above which an image is refused."
    )
    min_free_disk_bytes: int = Field(
        default=1024**3, ge=0, description="Instances are refused when the store has less free."
    )

    # Receiving: the time and memory a peer may take. Over a limit the connection is closed
    # or the association aborted (A-ABORT), and audited (docs/security.md).
    association_request_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="ARTIM: from a TCP connection to its complete A-ASSOCIATE-RQ (TLS "
        "handshake included); also the wait for a peer to close after a release or abort.",
    )
    idle_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="An established association: the next PDU must arrive in full within "
        "this, or the association is aborted.",
    )
    max_pending_connections: int = Field(
        default=200,
        ge=1,
        description="Connections waiting for their A-ASSOCIATE-RQ (per receiving process); "
        "more are closed at once.",
    )
    receive_budget_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Bytes all associations of a receiving process may hold while receiving.",
    )
    receive_connection_budget_bytes: int = Field(
        default=640 * 1024**2,
        gt=0,
        description="Bytes one association may hold while receiving: the PDU being read and "
        "the DIMSE message being assembled.",
    )

    # Outbox: transient send failures are retried with exponential backoff up to a cap.
    outbox_retry_base_seconds: float = Field(default=5.0, gt=0)
    outbox_retry_cap_seconds: float = Field(default=300.0, gt=0)
    outbox_poll_seconds: float = Field(default=2.0, gt=0)

    # Storage and outputs
    store_dir: Path = Path("var/store")
    output_dir: Path = Field(
        default=Path("var/outputs"),
        description="Local folder destination: every produced object is written here first.",
    )
    outputs: OutputSettings = Field(
        default_factory=OutputSettings, description="Which result objects are produced."
    )

    # Audit database
    database_url: str = Field(
        default="sqlite:///var/fracture_triage.db",
        repr=False,  # a password may still be in it: never in a repr, a log or an error
        description="sqlite:///file or postgresql://user@host/db; give the password in "
        "database_password or database_password_file rather than in the URL.",
    )
    database_password: SecretStr | None = Field(
        default=None,
        description="The database user's password (FRACTURE_TRIAGE_DATABASE_PASSWORD); "
        "shown as ********** everywhere.",
    )
    database_password_file: Path | None = Field(
        default=None,
        description="A file holding the password (a Docker or Kubernetes secret), read at load.",
    )
    database_auto_migrate: bool | None = Field(
        default=None,
        description="Migrate the database at start. None: yes for SQLite (the embedded "
        "default), no for PostgreSQL, where the owner runs `fracture-triage db upgrade` and "
        "a node on an older schema refuses to start.",
    )
    audit_syslog: AuditSyslogSettings | None = Field(
        default=None,
        description="Send every audit event to this syslog collector (ATNA); None: off.",
    )

    # Models
    model_bundle_dir: Path = Path("var/bundles/demo")
    fracture_suspected_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Overrides the bundle's high-sensitivity operating point.",
    )
    fracture_likely_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Overrides the bundle's high-specificity operating point.",
    )
    torch_threads: int = Field(default=0, ge=0, description="0 leaves torch's default.")
    inference_max_batch: int | None = Field(
        default=None,
        ge=1,
        description="Images per forward pass; larger batches are split. None: 4 on the "
        "CPU (cheapest per image there), 64 on a GPU.",
    )
    model_device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where the models run: 'auto' (the GPU when torch sees one, else the "
        "CPU), 'cpu', 'cuda' or 'cuda:N'.",
    )

    # Orchestration
    prefect_api_url: str | None = Field(
        default=None,
        description="A Prefect server's API (server mode): the node creates flow runs of the "
        "triage deployment and workers execute them. None: flows run in the node (embedded).",
    )
    triage_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A study claimed longer ago without a result is triaged again "
        "(its worker was killed or lost).",
    )
    triage_max_attempts: int = Field(
        default=3,
        ge=1,
        description="A study whose triage fails is tried this often in all, with backoff, "
        "before it is FAILED (reprocess --status failed tries again).",
    )
    triage_retry_base_seconds: float = Field(
        default=30.0, gt=0, description="First wait before a failed triage is tried again."
    )
    triage_retry_cap_seconds: float = Field(
        default=600.0, gt=0, description="Longest wait between attempts (the wait doubles)."
    )
    batch_max_studies: int = Field(
        default=16,
        ge=1,
        description="triage_batch takes at most this many ready studies into one run.",
    )
    priority: PrioritySettings = Field(
        default_factory=PrioritySettings, description="Urgent studies and off-peak reprocessing."
    )
    retention_days: int = Field(
        default=30, ge=0, description="The nightly purge deletes pixel data older than this."
    )
    prefect_flow_heartbeat: bool | None = Field(
        default=None,
        description="Prefect's flow-run heartbeat: how a Prefect server tells a crashed flow "
        "run from a slow one; a synchronous run waits for it at its end (up to ~1 s). None: "
        "on in server mode (prefect_api_url set), off embedded, where the node's own claim "
        "timeout (triage_timeout_seconds) triages a study again whose run died.",
    )
    warm_up_at_start: bool = Field(
        default=True,
        description="Embedded: triage one synthetic study in a throwaway database before "
        "listening, so the first real study does not pay for first use (flows/node/warm_up.py).",
    )

    # Operations
    log_level: LogLevel = Field(default="INFO", description="The node's own log records.")
    log_format: Literal["auto", "plain", "json"] = Field(
        default="auto",
        description="auto: Rich on a terminal, plain one-line records elsewhere; json: one "
        "JSON object a line.",
    )
    third_party_log_level: LogLevel = Field(
        default="WARNING",
        description="Libraries' records (pynetdicom, highdicom, Prefect, httpx...).",
    )
    http: HttpSettings = Field(
        default_factory=HttpSettings, description="/healthz, /readyz and /metrics."
    )
    drift: DriftSettings = Field(
        default_factory=DriftSettings, description="Warnings when the case mix drifts."
    )

    @field_validator("log_level", "third_party_log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ae_title")
    @classmethod
    def _check_own_ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_calling_ae_titles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(validate_ae_title(v) for v in value)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError(
                f"database URL must be sqlite:// or postgresql://, got {mask_url_password(value)!r}"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_password_file(cls, data: Any) -> Any:
        # A secret file is read once, here; its content is then a SecretStr like the variable.
        if not isinstance(data, dict) or not data.get("database_password_file"):
            return data
        if data.get("database_password"):
            raise ValueError("set database_password or database_password_file, not both")
        path = Path(data["database_password_file"])
        try:
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            raise ValueError(
                f"database_password_file {str(path)!r} cannot be read: {error.strerror}"
            ) from None
        if not password:
            raise ValueError(f"database_password_file {str(path)!r} is empty")
        return {**data, "database_password": password}

    @model_validator(mode="after")
    def _check_study_timing(self) -> Settings:
        if self.study_max_age_seconds < self.study_stable_seconds:
            raise ValueError(
                f"study_max_age_seconds ({self.study_max_age_seconds}) must not be below "
                f"study_stable_seconds ({self.study_stable_seconds})"
            )
        return self

    @model_validator(mode="after")
    def _check_receive_budgets(self) -> Settings:
        if self.receive_connection_budget_bytes > self.receive_budget_bytes:
            raise ValueError(
                f"receive_connection_budget_bytes ({self.receive_connection_budget_bytes}) "
                f"must not exceed receive_budget_bytes ({self.receive_budget_bytes})"
            )
        smallest = self.pdu_length_announced + 6
        if self.receive_connection_budget_bytes < smallest:
            raise ValueError(
                f"receive_connection_budget_bytes ({self.receive_connection_budget_bytes}) "
                f"must hold at least one whole PDU ({smallest} bytes with max_pdu_bytes "
                f"{self.max_pdu_bytes})"
            )
        return self

    @model_validator(mode="after")
    def _check_triage_retry(self) -> Settings:
        if self.triage_retry_cap_seconds < self.triage_retry_base_seconds:
            raise ValueError(
                f"triage_retry_cap_seconds ({self.triage_retry_cap_seconds}) must not be below "
                f"triage_retry_base_seconds ({self.triage_retry_base_seconds})"
            )
        return self

    @property
    def migrates_at_start(self) -> bool:
        """Whether the node brings the database to the head revision itself at start."""
        if self.database_auto_migrate is not None:
            return self.database_auto_migrate
        return self.sqlite_path is not None or self.database_url.startswith("sqlite")

    @model_validator(mode="after")
    def _check_output_routes(self) -> Settings:
        dicom = {d.name for d in self.destinations if not isinstance(d, Hl7Destination)}
        for route in self.outputs.routes:
            unknown = sorted(set(route.destinations) - dicom)
            if unknown:
                raise ValueError(
                    f"outputs.routes names {unknown}, not DICOM destinations "
                    f"(those are {sorted(dicom)})"
                )
        return self

    @model_validator(mode="after")
    def _check_thresholds(self) -> Settings:
        suspected, likely = self.fracture_suspected_threshold, self.fracture_likely_threshold
        if suspected is not None and likely is not None and likely < suspected:
            raise ValueError(
                f"fracture_likely_threshold ({likely}) must not be below "
                f"fracture_suspected_threshold ({suspected})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        sources.append(file_secret_settings)
        return tuple(sources)

    @property
    def flow_heartbeat(self) -> bool:
        """Whether the node's own flow runs send Prefect's heartbeat (see the field)."""
        if self.prefect_flow_heartbeat is not None:
            return self.prefect_flow_heartbeat
        return self.prefect_api_url is not None

    @property
    def pdu_length_announced(self) -> int:
        """The P-DATA-TF length the SCP announces and accepts (``max_pdu_bytes``, 0: the
        ceiling, announced rather than "unlimited" so that what is announced is enforced)."""
        return self.max_pdu_bytes or PDU_LENGTH_CEILING

    @property
    def sqlite_path(self) -> Path | None:
        """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
        match = re.match(r"^sqlite(\+\w+)?:///(.+)$", self.database_url)
        if not match or match.group(2) == ":memory:":
            return None
        return Path(match.group(2))


_DESTINATION_KINDS = ("dimse", "dicomweb")


def mask_url_password(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***``."""
    return re.sub(r"^([^:/]+(?:\+\w+)?://[^:/@]*):[^@]*@", r"\1:***@", url)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        # Leave out the destination-kind tags pydantic puts in union locations: the key a
        # user wrote is destinations.0.ae_title, not destinations.0.dimse.ae_title.
        parts = [str(p) for p in item["loc"] if p not in _DESTINATION_KINDS]
        key = ".".join(parts) or "<settings>"
        lines.append(f"setting {key!r}: {item['msg']}")
    return "; ".join(lines)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load the settings for one entrypoint.

    Parameters
    ----------
    config_file:
        A TOML file. Defaults to ``$FRACTURE_TRIAGE_CONFIG`` when that is set.
    **overrides:
        Values that win over the environment and the file (CLI options, tests).

    Raises
    ------
    SettingsError
        When a value is invalid or a key unknown; the message names the key.
    """
    path = config_file if config_file is not None else os.environ.get(CONFIG_FILE_ENV)
    if path is not None and not Path(path).is_file():
        raise SettingsError(f"config file {str(path)!r} does not exist")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=Path(path) if path else None)

    try:
        return _FileSettings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {str(path)!r} is not valid TOML: {error}") from None
