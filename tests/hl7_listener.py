"""A real MLLP listener on loopback (the ``hl7`` package's asyncio MLLP server) for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import hl7
import hl7.mllp


@dataclass
class MllpListener:
    """Collects every message it receives and answers with ``ack_code`` (AA, AE or AR)."""

    port: int = 0
    ack_code: str = "AA"
    messages: list[str] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 60) -> list[str]:
        import time

        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return list(self.messages)


@contextmanager
def run_mllp_listener(ack_code: str = "AA", port: int = 0) -> Iterator[MllpListener]:
    """A listener on loopback, on ``port`` (0: any free port; ``listener.port`` tells)."""
    listener = MllpListener(ack_code=ack_code)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    server_box: dict[str, asyncio.AbstractServer] = {}

    async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                listener.messages.append(str(message))
                writer.writemessage(message.create_ack(ack_code=listener.ack_code))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start() -> None:
        server = await hl7.mllp.start_hl7_server(handle, host="127.0.0.1", port=port)
        server_box["server"] = server
        listener.port = server.sockets[0].getsockname()[1]
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="mllp-listener", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the MLLP listener did not start")
    try:
        yield listener
    finally:

        async def stop() -> None:
            server = server_box["server"]
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
