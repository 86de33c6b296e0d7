"""C-STORE of produced objects to a destination (the SCU side).

Objects written with a lossless compressed transfer syntax (the Secondary
Captures) are offered twice per SOP class: in a presentation context of their
compressed syntax alone, and in one of Explicit and Implicit VR Little Endian. A
peer that accepts the compressed one gets the file as it is; one that accepts only
uncompressed gets it decompressed (the same object, the same SOP Instance UID), in
the same association.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
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
    assoc = associate(
        destination, calling_ae_title, requested_contexts(datasets), timeout=timeout, tls=tls
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


def associate(
    destination: Destination,
    calling_ae_title: str,
    contexts: list[tuple[str, list[str]]],
    *,
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> Association:
    """An association with ``destination`` proposing ``contexts`` (SOP class, syntaxes),
    every timer at ``timeout``; over TLS with ``tls``, the host the name it checks."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=(tls, destination.host) if tls is not None else None,
    )


#: What every peer accepts: an object in another syntax is offered in these too.
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def requested_contexts(datasets: list[Dataset]) -> list[tuple[str, list[str]]]:
    """The presentation contexts to propose: per SOP class, each compressed syntax alone
    (so the peer cannot answer it with an uncompressed one) and the uncompressed pair."""
    contexts: dict[tuple[str, tuple[str, ...]], None] = {}
    for ds in datasets:
        sop_class, syntax = str(ds.SOPClassUID), UID(ds.file_meta.TransferSyntaxUID)
        if syntax not in UNCOMPRESSED:
            contexts[(sop_class, (syntax,))] = None
        contexts[(sop_class, UNCOMPRESSED)] = None
    return [(sop_class, list(syntaxes)) for sop_class, syntaxes in sorted(contexts)]


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
    accepted = {
        UID(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == ds.SOPClassUID
    }
    if not accepted:
        return SendOutcome(
            uid, destination.name, False, None, "SOP class refused by the destination", True
        )
    if UID(ds.file_meta.TransferSyntaxUID) not in accepted | set(UNCOMPRESSED):
        # The peer takes this class uncompressed only: the same object, decompressed.
        ds.decompress(generate_instance_uid=False)  # the same object, not a new one
        logger.info("%s: sent decompressed (compressed syntax not accepted)", destination.name)
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
