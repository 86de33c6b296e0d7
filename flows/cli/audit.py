"""``fracture-triage audit``: verify the audit chain, tell the whole story of a study."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from flows.cli.options import ConfigOption, JsonOption, console, fail, settings_for

audit_app = typer.Typer(
    help="The audit trail: `audit verify` checks the hash chain, `audit --study UID` tells a "
    "study's story.",
    invoke_without_command=True,
)


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from db.engine import engine_from_settings, make_session_factory

    path = settings.sqlite_path
    if path is not None and not path.exists():
        fail(f"no audit database at {path}")
    return make_session_factory(engine_from_settings(settings))


@audit_app.callback()
def audit(
    ctx: typer.Context,
    study: Annotated[
        str | None, typer.Option("--study", help="Study Instance UID whose events to show.")
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show every audit event of a study (`--study UID`), or run a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    if study is None:
        fail("give --study UID, or a subcommand (audit verify); see fracture-triage audit --help")
    from db.audit import AuditLog
    from db.repositories import StudyRepository

    sessions = _sessions(settings_for(config))
    with sessions() as session:
        events = AuditLog(session).for_study(study)
        found = StudyRepository(session).get(study)
        status = str(found.status) if found else None
        rows = [_as_dict(event) for event in events]
    if as_json:
        typer.echo(json.dumps({"study_instance_uid": study, "status": status, "events": rows}))
        return
    if not rows and status is None:
        fail(f"No study {study} and no audit event for it", 1)
    table = Table(title=f"Audit trail of study {study} ({status or 'no study row'})")
    for column in ("id", "occurred (UTC)", "event", "outcome", "actor", "SOP instance", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["occurred_at"],
            row["event_type"],
            row["outcome"],
            row["actor"] or "-",
            row["sop_instance_uid"] or "-",
            ", ".join(f"{key}={value}" for key, value in sorted(row["detail"].items())) or "-",
        )
    console.print(table)


@audit_app.command("verify")
def verify(config: ConfigOption = None) -> None:
    """Walk the hash chain from the first event; name the first broken one (exit status 1)."""
    from db.audit import verify_chain

    sessions = _sessions(settings_for(config))
    with sessions() as session:
        report = verify_chain(session)
    if report.broken is not None:
        fail(
            f"Audit chain broken at event {report.broken.id}: {report.broken.reason}. "
            f"{report.checked} event(s) before it verified.",
            1,
        )
    console.print(
        f"[green]Audit chain intact[/green]: {report.checked} event(s), "
        f"head hash {report.head_hash}"
    )


def _as_dict(event: Any) -> dict[str, Any]:
    from db.audit import canonical_timestamp

    return {
        "id": event.id,
        "occurred_at": canonical_timestamp(event.occurred_at),
        "event_type": event.event_type,
        "outcome": event.outcome,
        "actor": event.actor,
        "study_instance_uid": event.study_instance_uid,
        "sop_instance_uid": event.sop_instance_uid,
        "detail": event.detail,
        "previous_hash": event.previous_hash,
        "event_hash": event.event_hash,
    }
