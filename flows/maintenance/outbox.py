"""The retry-outbox flow: send every due delivery now."""

from __future__ import annotations

from prefect import flow

from flows.runtime import current_runtime


@flow(name="retry-outbox", persist_result=False)
def retry_outbox() -> dict[str, int]:
    """Send every due delivery now (the node's outbox thread does this continuously)."""
    result = current_runtime().outbox.send_due()
    return {"sent": result.sent, "failed": result.failed, "retrying": result.retrying}
