"""A storage SCP that answers Success and keeps nothing: the warm-up's destination.

The node's warm-up (flows/node/warm_up.py) sends its synthetic study's results here, so
the first real study does not pay for the first association either. Loopback only, an
ephemeral port, for as long as the ``with`` block lasts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from config import Destination

SINK_AE_TITLE = "WARMUP_SINK"


def _discard(event: evt.Event) -> int:
    return 0x0000  # Success; the data set is dropped with the event


@contextmanager
def discarding_destination() -> Iterator[Destination]:
    """A destination on 127.0.0.1 that accepts every storage SOP class and transfer syntax."""
    ae = AE(ae_title=SINK_AE_TITLE)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, _discard)]
    )
    try:
        port = int(server.server_address[1])
        yield Destination(name="warm-up-sink", ae_title=SINK_AE_TITLE, host="127.0.0.1", port=port)
    finally:
        server.shutdown()
