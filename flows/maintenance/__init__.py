"""Admin flows: reprocess studies, retry the outbox, purge old pixel data."""

from flows.maintenance.outbox import retry_outbox
from flows.maintenance.purge import PurgePlan, purge_plan, purge_store
from flows.maintenance.reprocess import ReprocessCriteria, reprocess, select_studies

__all__ = [
    "PurgePlan",
    "ReprocessCriteria",
    "purge_plan",
    "purge_store",
    "reprocess",
    "retry_outbox",
    "select_studies",
]
