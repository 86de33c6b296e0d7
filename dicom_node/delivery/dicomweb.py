"""DICOMweb STOW-RS of produced objects (the ``dicomweb-client`` package)."""

from __future__ import annotations

import logging
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from config import DicomWebDestination
from dicom_node.delivery.dimse import SendOutcome

logger = logging.getLogger(__name__)


def stow_files(
    paths: list[Path], destination: DicomWebDestination, timeout: float = 60
) -> list[SendOutcome]:
    """STOW-RS ``paths`` to ``destination`` in one request; one outcome per file.

    Connection errors and 5xx answers are transient (the outbox retries); 4xx
    answers and instances the server lists as failed are permanent.
    """
    datasets = [dcmread(path) for path in paths]
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    session = requests.Session()
    if destination.ca_file is not None:
        session.verify = str(destination.ca_file)
    client = DICOMwebClient(url=destination.url, session=session)
    client.set_http_retry_params(retry=False)
    try:
        response = client.store_instances(datasets)
    except requests.HTTPError as error:
        code = error.response.status_code if error.response is not None else 0
        permanent = 400 <= code < 500
        reason = f"STOW-RS answered HTTP {code}"
        logger.warning("%s by destination %s", reason, destination.name)
        return [SendOutcome(uid, destination.name, False, None, reason, permanent) for uid in uids]
    except (requests.ConnectionError, requests.Timeout) as error:
        reason = f"STOW-RS failed: {type(error).__name__}"
        logger.warning("%s to destination %s", reason, destination.name)
        return [SendOutcome(uid, destination.name, False, None, reason) for uid in uids]
    finally:
        session.close()

    failed = {
        str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0xC000))
        for item in response.get("FailedSOPSequence", [])
    }
    return [
        SendOutcome(uid, destination.name, True, 0)
        if uid not in failed
        else SendOutcome(
            uid, destination.name, False, failed[uid], f"failure reason 0x{failed[uid]:04X}", True
        )
        for uid in uids
    ]
