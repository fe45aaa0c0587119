"""The local HTTP API, on 127.0.0.1:6784 and the agent's unix socket.

GET /healthz   liveness: the event loop answers
GET /status    Weave's status text; 503 until the node is set up (the readiness probe)
GET /status/{connections,peers,routes}
GET /report    the status snapshot as JSON
GET /metrics   Prometheus exposition (also alone on the metrics address)

A deliberately small HTTP/1.1 server (one request per connection) so the agent needs no web
framework: requests are tiny, local and few.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent import status
from agent.metrics import SnapshotCollector

log = logging.getLogger("weave-py.api")
MAX_REQUEST = 8192
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class Api:
    """``metrics_only``: the public metrics listener serves /metrics and nothing else."""

    def __init__(self, snapshot: Callable[[], status.Snapshot], metrics_only: bool = False) -> None:
        self.snapshot = snapshot
        self.metrics_only = metrics_only
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(snapshot))

    def respond(self, method: str, path: str) -> tuple[int, str, str]:
        """(status code, content type, body) for one request."""
        if method != "GET":
            return 405, "text/plain", "only GET\n"
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry).decode()
        if self.metrics_only:
            return 404, "text/plain", "only /metrics here\n"
        if path == "/healthz":
            return 200, "text/plain", "ok\n"
        snap = self.snapshot()
        if path == "/report":
            return 200, "application/json", json.dumps(snap, indent=2) + "\n"
        if path == "/status":
            return (200 if snap["ready"] else 503), "text/plain", status.render_status(snap)
        if path.startswith("/status/") and path[8:] in status.VIEWS:
            return 200, "text/plain", status.VIEWS[path[8:]](snap)
        return 404, "text/plain", f"no such endpoint: {path}\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if len(head) > MAX_REQUEST:
                raise ValueError("request too large")
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            code, ctype, body = self.respond(method, path)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            code, ctype, body = 400, "text/plain", "bad request\n"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
