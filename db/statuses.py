"""The life-cycle states stored in the database: a study's, a triage run's, a delivery's.

Apart from the tables so that readers (reports, repositories, the CLI) name a state
without pulling in the mapped classes.
"""

from __future__ import annotations

import enum


class StudyStatus(enum.StrEnum):
    RECEIVING = "receiving"  # instances arriving, not quiet long enough yet
    READY = "ready"  # quiet period over, waiting for a triage run
    TRIAGING = "triaging"
    TRIAGED = "triaged"
    FAILED = "failed"
    NOT_TRIAGED = "not_triaged"  # nothing in the study a model can read (e.g. only SRs)


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
