"""Sending HL7 v2 messages over MLLP, with the ``hl7`` package's client.

:class:`hl7.client.MLLPClient` frames the message and reads the answer, but it
connects without a timeout and returns what the first ``recv`` gives. The small
subclass below connects with a timeout (which then bounds every send and receive)
and reads on until the acknowledgement's end block, so a slow or silent RIS costs
at most the destination's ``timeout_seconds``. Outcomes: ``AA``/``CA`` delivered,
``AR``/``CR`` refused for good, anything else (no answer, a timeout, ``AE``, a reply
that is not HL7) worth a retry.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hl7
from hl7.client import CR, EB, RECV_BUFFER, SB, MLLPClient

__all__ = ["MllpResult", "TimedMLLPClient", "send_mllp", "send_mllp_files"]

#: The end of an MLLP frame.
_END = EB + CR
#: An acknowledgement longer than this is not one (a misbehaving peer).
_MAX_ACK_BYTES = 1024 * 1024


class TimedMLLPClient(MLLPClient):  # type: ignore[misc]
    """:class:`hl7.client.MLLPClient` whose connection, sends and receives time out.

    The constructor sets the two attributes the parent's methods use (``socket`` and
    ``encoding``; pinned by tests/dicom_node/test_mllp.py), and :meth:`send` sends the
    whole frame (the parent's single ``socket.send`` may send part of it).
    """

    def __init__(self, host: str, port: int, timeout: float, encoding: str = "utf-8") -> None:
        self.socket = socket.create_connection((host, port), timeout=timeout)
        self.encoding = encoding

    def send(self, data: bytes) -> bytes:
        """Send an already framed message whole; return the first bytes of the answer."""
        self.socket.sendall(data)
        return bytes(self.socket.recv(RECV_BUFFER))

    def exchange(self, message: bytes) -> bytes:
        """Send one framed message and return the acknowledgement's frame content."""
        received = self.send_message(message)
        while _END not in received:
            if len(received) > _MAX_ACK_BYTES:
                raise ValueError("acknowledgement too long")
            chunk = self.socket.recv(65536)
            if not chunk:
                break
            received += chunk
        start, end = received.find(SB), received.find(_END)
        if start < 0 or end < 0:
            raise ValueError("no framed acknowledgement")
        return received[start + 1 : end]


@dataclass(frozen=True)
class MllpResult:
    """The outcome of one MLLP exchange."""

    success: bool
    permanent: bool = False
    error: str | None = None
    acknowledgement: str | None = None


def send_mllp(message: str | bytes, host: str, port: int, *, timeout: float = 30.0) -> MllpResult:
    """Send one HL7 message over MLLP and read the acknowledgement.

    Returns
    -------
    MllpResult
        success for ``AA``/``CA``; permanent for ``AR``/``CR``; otherwise a
        transient failure (connection refused, timeout, ``AE``, garbage).
    """
    payload = message.encode("utf-8") if isinstance(message, str) else message
    try:
        with TimedMLLPClient(host, port, timeout) as client:
            framed = client.exchange(payload)
    except (OSError, ValueError) as error:
        return MllpResult(False, error=f"MLLP {host}:{port}: {type(error).__name__}: {error}")
    ack = framed.decode("utf-8", errors="replace")
    try:
        code = str(hl7.parse(ack).segment("MSA")[1])
    except (KeyError, IndexError, ValueError) as error:
        return MllpResult(False, error=f"unreadable acknowledgement: {error}", acknowledgement=ack)
    if code in ("AA", "CA"):
        return MllpResult(True, acknowledgement=ack)
    return MllpResult(
        False,
        permanent=code in ("AR", "CR"),
        error=f"acknowledgement {code}",
        acknowledgement=ack,
    )


def send_mllp_files(
    paths: Sequence[Path], host: str, port: int, *, timeout: float = 30.0
) -> list[MllpResult]:
    """Send message files (one message each) in order, one connection per message."""
    return [send_mllp(path.read_bytes(), host, port, timeout=timeout) for path in paths]
