"""C-STORE of produced objects to a destination (the SCU side)."""

from __future__ import annotations

import logging
import ssl
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
    #: True when sending again cannot help (the peer refuses the SOP class or the data set).
    permanent: bool = False


def send_files(
    paths: list[Path],
    destination: Destination,
    calling_ae_title: str,
    timeout: float = 30,
    *,
    tls: ssl.SSLContext | None = None,
) -> list[SendOutcome]:
    """C-STORE ``paths`` to ``destination`` over one association.

    Every file gets an outcome: a refused association or a dropped connection
    is reported per file, never raised, so the caller can record each delivery.
    With ``tls``, the association runs over TLS with that client context; the
    destination's host is the name its certificate is checked against.
    """
    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in sorted(
        {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}
    ):
        ae.add_requested_context(sop_class, syntax)

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=(tls, destination.host) if tls is not None else None,
    )
    if not assoc.is_established:
        reason, permanent = _association_failure(assoc)
        logger.warning("%s by destination %s", reason, destination.name)
        return [
            SendOutcome(ds.SOPInstanceUID, destination.name, False, None, reason, permanent)
            for ds in datasets
        ]

    outcomes = []
    try:
        for ds in datasets:
            outcomes.append(_store_one(assoc, ds, destination))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _association_failure(assoc: Association) -> tuple[str, bool]:
    """Why an association did not come up, and whether trying again could help.

    Final: a rejected-permanent (result 1), or an accepted association in which the
    peer accepted none of our presentation contexts (it refuses the SOP classes).
    Transient: rejected-transient, and a peer that is down or does not answer.
    """
    result = getattr(assoc.acceptor.primitive, "result", None)
    if assoc.is_rejected:
        return "association rejected", result == 0x01
    if result == 0x00:
        return "no presentation context accepted: SOP class refused by the destination", True
    return "association failed (destination unreachable or not answering)", False


def _store_one(assoc: Association, ds: Dataset, destination: Destination) -> SendOutcome:
    uid = str(ds.SOPInstanceUID)
    if not assoc.is_established:
        return SendOutcome(uid, destination.name, False, None, "association lost")
    if not any(cx.abstract_syntax == ds.SOPClassUID for cx in assoc.accepted_contexts):
        return SendOutcome(
            uid, destination.name, False, None, "SOP class refused by the destination", True
        )
    status = assoc.send_c_store(ds)
    code = getattr(status, "Status", None)
    if code is None:
        return SendOutcome(uid, destination.name, False, None, "no response (timeout or abort)")
    category = code_to_category(code)
    if category in ("Success", "Warning"):
        return SendOutcome(uid, destination.name, True, code)
    # 0xA7xx (out of resources) is worth retrying; other failures describe the data set.
    permanent = category == "Failure" and not 0xA700 <= code <= 0xA7FF
    return SendOutcome(
        uid, destination.name, False, code, f"status 0x{code:04X} ({category})", permanent
    )
