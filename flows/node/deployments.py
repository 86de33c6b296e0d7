"""Prefect deployments of the flows, served by ``fracture-triage worker``.

In server mode the node only creates flow runs of ``triage-batch/ready``; any
number of workers (this command, on CPU or GPU boxes) execute them. Schedules are
Prefect schedules: admins change or pause them in the Prefect UI or CLI.
"""

from __future__ import annotations

from prefect.deployments.runner import EntrypointType, RunnerDeployment

from flows.maintenance import purge_store, reprocess, retry_outbox
from flows.triage.flow import triage_batch, triage_study

#: The deployment the node creates its flow runs of.
TRIAGE_DEPLOYMENT = "triage-study/node"
TRIAGE_BATCH_DEPLOYMENT = "triage-batch/ready"
REPROCESS_DEPLOYMENT = "reprocess/manual"

#: Models are CPU or GPU bound: one triage at a time per worker (one GPU, one slot).
INFERENCE_SLOTS = 1


def deployments(purge_after_days: int = 30) -> list[RunnerDeployment]:
    """Every deployment with its default schedule; flows are referenced by module path."""
    module = EntrypointType.MODULE_PATH
    return [
        triage_study.to_deployment(
            name="node",
            tags=["triage", "inference"],
            concurrency_limit=INFERENCE_SLOTS,
            entrypoint_type=module,
            description="Triage one study (on demand, e.g. from the Prefect UI).",
        ),
        triage_batch.to_deployment(
            name="ready",
            tags=["triage", "inference"],
            concurrency_limit=INFERENCE_SLOTS,
            entrypoint_type=module,
            description="Triage every READY study (urgent first) in one run, views batched "
            "through the models; the node creates these runs when studies become ready.",
        ),
        reprocess.to_deployment(
            name="manual",
            tags=["maintenance", "inference"],
            entrypoint_type=module,
            description="Reprocess on demand (fracture-triage reprocess in server mode, --at).",
        ),
        reprocess.to_deployment(
            name="nightly-failed",
            cron="0 2 * * *",
            parameters={"statuses": ["failed"], "requested_by": "schedule"},
            tags=["maintenance", "inference"],
            entrypoint_type=module,
            description="Every night at 02:00: triage the failed studies again.",
        ),
        retry_outbox.to_deployment(
            name="hourly",
            cron="15 * * * *",
            tags=["maintenance", "network"],
            entrypoint_type=module,
            description="Every hour: send what the outbox still holds.",
        ),
        purge_store.to_deployment(
            name="nightly",
            cron="30 3 * * *",
            parameters={"older_than_days": purge_after_days, "requested_by": "schedule"},
            tags=["maintenance"],
            entrypoint_type=module,
            description=f"Every night: delete pixel data older than {purge_after_days} days.",
        ),
    ]
