"""The node's operations side: ``/healthz``, ``/readyz``, ``/metrics`` and the drift check.

A small threaded ``http.server`` beside the node (loopback by default, ``[http]``):

- ``/healthz``: 200 while the process serves HTTP at all (liveness);
- ``/readyz``: 200 when every readiness check passes, else 503; the body is JSON, one
  entry per check with what it found (the compose healthcheck and load balancers);
- ``/metrics``: Prometheus text format (flows.node.metrics).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dicom_node.receive.scp import StorageSCP
from flows.node.bundle_facts import BundleFacts, BundleUnreadableError, read_bundle_facts
from flows.node.drift import DriftMonitor
from flows.node.health import (
    CheckFailedError,
    CheckResult,
    check_database,
    check_writable_folder,
    error_text,
    run_check,
)
from flows.node.metrics import NodeMetrics
from flows.runtime import Runtime

logger = logging.getLogger(__name__)


class _ModelWarmUp:
    """Loads the model in a thread at start (embedded mode), so the first study does not
    wait for it and ``/readyz`` can say whether it loaded."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._done = threading.Event()
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="model-warm-up", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            self._runtime.model()
        except Exception as error:
            self._error = error_text(error)
            logger.error("the model could not be loaded: %s", self._error)
        finally:
            self._done.set()

    def wait(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def check(self) -> str:
        if not self._done.is_set():
            raise CheckFailedError("still loading")
        if self._error is not None:
            raise CheckFailedError(self._error)
        return f"{self._runtime.algorithm().name} {self._runtime.algorithm().version} loaded"


class NodeOperations:
    """What the node adds for its operators: the HTTP endpoint and the drift check."""

    def __init__(self, runtime: Runtime, scp: StorageSCP) -> None:
        self.runtime = runtime
        self.scp = scp
        settings = runtime.settings
        self.drift = DriftMonitor(runtime.sessions, settings.drift, settings.model_bundle_dir)
        # Server mode: the workers load the model; the node only checks the bundle is there.
        self._warm_up = None if settings.prefect_api_url else _ModelWarmUp(runtime)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            NodeMetrics(
                runtime.sessions,
                lambda: scp.connection_probes,
                self._bundle_facts,
                lambda: self.drift.last_report,
            )
        )
        self._server: ThreadingHTTPServer | None = None
        self.address: tuple[str, int] | None = None

    def start(self) -> None:
        """Start the endpoint, the model's loading and the drift check; an address the
        endpoint cannot bind to is an error that stops the node's start (OSError), before
        any thread of its own has started."""
        http = self.runtime.settings.http
        if http.enabled:
            try:
                server = ThreadingHTTPServer((http.bind_address, http.port), _Handler)
            except OSError as error:
                raise OSError(
                    f"cannot serve HTTP on {http.bind_address}:{http.port}: {error.strerror}"
                ) from None
            server.daemon_threads = True
            server.operations = self  # type: ignore[attr-defined]
            self._server = server
            self.address = (str(server.server_address[0]), int(server.server_address[1]))
        if self._warm_up is not None:
            self._warm_up.start()
        self.drift.start()
        if self._server is not None and self.address is not None:
            threading.Thread(target=self._server.serve_forever, name="http", daemon=True).start()
            logger.info("health and metrics on http://%s:%d/", *self.address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.drift.stop()
        if self._warm_up is not None:
            # A process that exits while torch loads in a thread can abort in C++.
            self._warm_up.wait(timeout=120)

    def readiness(self) -> list[CheckResult]:
        settings = self.runtime.settings
        return [
            run_check("model", self._check_model),
            run_check("database", lambda: check_database(self.runtime.engine)),
            run_check(
                "store",
                lambda: check_writable_folder(settings.store_dir, settings.min_free_disk_bytes),
            ),
            run_check("outputs", lambda: check_writable_folder(settings.output_dir)),
            run_check("receiving", self._check_receiving),
        ]

    def _check_model(self) -> str:
        if self._warm_up is not None:
            return self._warm_up.check()
        facts = read_bundle_facts(self.runtime.settings.model_bundle_dir)
        return f"bundle {facts.identity} present (server mode: the workers load it)"

    def _check_receiving(self) -> str:
        alive, expected = self.scp.receiving
        if alive < expected:
            raise CheckFailedError(f"{alive} of {expected} receiving processes running")
        return f"{alive} of {expected} receiving processes running"

    def _bundle_facts(self) -> BundleFacts | None:
        try:
            return read_bundle_facts(self.runtime.settings.model_bundle_dir)
        except BundleUnreadableError:
            return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "fracture-triage"
    sys_version = ""

    def do_GET(self) -> None:
        operations: NodeOperations = self.server.operations  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            checks = operations.readiness()
            ready = all(check.ok for check in checks)
            body: dict[str, Any] = {"ready": ready, "checks": [asdict(c) for c in checks]}
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, json.dumps(body).encode() + b"\n", "application/json")
        elif path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(operations.registry), CONTENT_TYPE_LATEST)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)
