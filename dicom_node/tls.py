"""TLS contexts for the SCP and the SCU, built from :class:`config.TlsSettings`.

Pure helpers: they read the PEM files named in the settings and return a
:class:`ssl.SSLContext`; nothing here opens a socket. Both sides require TLS 1.2
or later (BCP 195), and both verify the peer against the CA when one is given.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from config import TlsSettings


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SCP's context: the node's certificate; client certificates required
    (and verified against ``tls.ca_file``) when a CA is configured.

    The SCP handshakes in each connection's own thread, within ARTIM
    (``association_request_timeout_seconds``; dicom_node.receive.fastpath)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings | None, ca_file: Path | None = None) -> ssl.SSLContext:
    """The SCU's context: the peer is always verified, against ``ca_file`` (default:
    ``tls.ca_file``) or the system's trust store; the node's certificate is offered as
    a client certificate when ``tls`` is given."""
    ca = ca_file if ca_file is not None else (tls.ca_file if tls is not None else None)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None:
        context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    return context
