"""C-STORE of produced objects to a destination (the SCU side)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from config import Destination

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendOutcome:
    sop_instance_uid: str
    destination: str
    success: bool
    status: int | None
    error: str | None = None


def send_files(
    paths: list[Path], destination: Destination, calling_ae_title: str, timeout: float = 30
) -> list[SendOutcome]:
    """C-STORE ``paths`` to ``destination`` over one association.

    Every file gets an outcome: a refused association or a dropped connection
    is reported per file, never raised, so the caller can record each delivery.
    """
    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in sorted(
        {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}
    ):
        ae.add_requested_context(sop_class, syntax)

    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association failed"
        logger.warning("%s by destination %s", reason, destination.name)
        return [
            SendOutcome(ds.SOPInstanceUID, destination.name, False, None, reason) for ds in datasets
        ]

    outcomes = []
    try:
        for ds in datasets:
            outcomes.append(_store_one(assoc, ds, destination))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _store_one(assoc: Association, ds: Dataset, destination: Destination) -> SendOutcome:
    uid = str(ds.SOPInstanceUID)
    if not assoc.is_established:
        return SendOutcome(uid, destination.name, False, None, "association lost")
    status = assoc.send_c_store(ds)
    code = getattr(status, "Status", None)
    if code is None:
        return SendOutcome(uid, destination.name, False, None, "no response (timeout or abort)")
    category = code_to_category(code)
    if category in ("Success", "Warning"):
        return SendOutcome(uid, destination.name, True, code)
    return SendOutcome(uid, destination.name, False, code, f"status 0x{code:04X} ({category})")
