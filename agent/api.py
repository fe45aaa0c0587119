"""The local HTTP API, on 127.0.0.1:6784 and the agent's unix socket.

GET    /healthz          liveness: the event loop answers
GET    /status           Weave's status text; 503, led by what is missing, until the node can
                         carry pod traffic (the readiness probe)
GET    /status/{connections,peers,ipam,routes}
GET    /report           the status report (agent/report.py) as JSON
GET    /metrics          Prometheus exposition (also alone on the metrics address)
POST   /ip/<container-id>[?ifname=eth0]   allocate the container's address (the CNI plugin's ADD)
DELETE /ip/<container-id>[?ifname=X]      release its address(es) (the CNI plugin's DEL)
DELETE /peer/<name>      rmpeer: take over the address ranges of a dead peer

The POST/DELETE routes answer JSON: 200 with the action's result, or ``{"error": message}``
(plus ``"details"`` when the refusal has them) with the status code ``STATUS`` maps the
refusal's class to (agent/errors.py); anything else an action raises is a bug: 500, with the
traceback in the log. 404 when the agent has no ``actions`` (no address management) and on the
metrics-only listener. Path parts are percent-decoded; no request body is needed.

A deliberately small HTTP/1.1 server (one request per connection) so the agent needs no web
framework: requests are tiny, local and few.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent import errors, status
from agent.metrics import ReportCollector
from agent.report import Report

log = logging.getLogger("weave-py.api")
MAX_REQUEST = 8192
METHODS = ("GET", "POST", "DELETE")
ACTION_METHODS = {"ip": ("POST", "DELETE"), "peer": ("DELETE",)}
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
    504: "Gateway Timeout",
}

STATUS: dict[type[errors.Refused], int] = {
    errors.Invalid: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InterfaceExists: 409,
    errors.NoAddress: 507,
    errors.TryLater: 503,
    errors.TimedOut: 504,
    errors.KernelRefused: 500,
    errors.StorageFailed: 500,
    errors.Refused: 500,
}  # the most specific class of a refusal decides

Answer = tuple[int, str, str]  # status code, content type, body


class Actions(Protocol):
    """What the agent does on request; each raises an ``errors.Refused`` to refuse."""

    async def allocate(self, container_id: str, ifname: str) -> dict[str, Any]: ...

    async def release(self, container_id: str, ifname: str | None) -> dict[str, Any]: ...

    async def rmpeer(self, name: str) -> dict[str, Any]: ...


class Api:
    """``report``: the node's status now, taken per request and per scrape.
    ``metrics_only``: the public metrics listener serves /metrics and nothing else.
    ``actions``: the address-management calls; without it their routes answer 404.
    ``peer_metrics``: /metrics carries the per-peer series (agent/metrics.py)."""

    def __init__(
        self,
        report: Callable[[], Report],
        metrics_only: bool = False,
        actions: Actions | None = None,
        peer_metrics: bool = True,
    ) -> None:
        self.report = report
        self.metrics_only = metrics_only
        self.actions = actions
        self.registry = CollectorRegistry()
        self.registry.register(ReportCollector(report, peer_metrics))

    def respond(self, method: str, path: str) -> Answer:
        """The answer to one GET request (405 for any other method)."""
        if method != "GET":
            return 405, "text/plain", "only GET\n"
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry).decode()
        if self.metrics_only:
            return 404, "text/plain", "only /metrics here\n"
        if path == "/healthz":
            return 200, "text/plain", "ok\n"
        report = self.report()
        if path == "/report":
            return 200, "application/json", json.dumps(report.to_json(), indent=2) + "\n"
        if path == "/status":
            return readiness(report)
        if path.startswith("/status/") and path[8:] in status.VIEWS:
            return 200, "text/plain", status.VIEWS[path[8:]](report)
        return 404, "text/plain", f"no such endpoint: {path}\n"

    async def dispatch(self, method: str, target: str) -> Answer:
        """The answer to any request: the action routes here, everything else by ``respond``."""
        if method not in METHODS:
            return 405, "text/plain", f"only {', '.join(METHODS)}\n"
        parts = urlsplit(target)
        route = action_route(parts.path)
        if route is None:
            return self.respond(method, target)
        if self.metrics_only:
            return 404, "text/plain", "only /metrics here\n"
        kind, name = route
        if self.actions is None:
            return _json(404, {"error": "address management is not enabled on this agent"})
        if name is None:
            return _json(404, {"error": f"no such endpoint: {parts.path}"})
        if method not in ACTION_METHODS[kind]:
            return _json(405, {"error": f"use {' or '.join(ACTION_METHODS[kind])}"})
        ifname = parse_qs(parts.query).get("ifname", [None])[-1]
        return await self._act(self.actions, method, kind, name, ifname)

    async def _act(
        self, actions: Actions, method: str, kind: str, name: str, ifname: str | None
    ) -> Answer:
        try:
            if kind == "peer":
                result = await actions.rmpeer(name)
            elif method == "POST":
                result = await actions.allocate(name, ifname or "eth0")
            else:
                result = await actions.release(name, ifname)
            return 200, "application/json", json.dumps(result) + "\n"
        except errors.Refused as exc:
            answer = refusal(exc)
            if answer[0] == 500:  # the node failed (kernel, disk): the operator should know
                log.warning("refuse %s /%s/%s: %s", method, kind, name, exc.message)
            return answer
        except Exception:
            log.exception("api %s /%s/%s: failed", method, kind, name)
            return _json(500, {"error": "internal error, see the agent's log"})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, target = await read_request(reader)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            code, ctype, body = 400, "text/plain", "bad request\n"
        else:
            code, ctype, body = await self.dispatch(method, target)
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def action_route(path: str) -> tuple[str, str | None] | None:
    """("ip", container id) or ("peer", name), percent-decoded, for the action routes; the
    name is None when the path has none or more than one part after the route. None for
    every other path."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 2 or parts[0] or parts[1] not in ACTION_METHODS:
        return None
    name = unquote(parts[2]) if len(parts) == 3 and parts[2] else None
    return parts[1], name


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, target) of one request; a body (none is needed) is read and ignored so the
    answer is not lost to a reset."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    if len(head) > MAX_REQUEST:
        raise ValueError("request too large")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            length = int(value)
    if not 0 <= length <= MAX_REQUEST:
        raise ValueError("body too large")
    if length:
        await asyncio.wait_for(reader.readexactly(length), 5)
    return method, target


def readiness(report: Report) -> Answer:
    """The readiness probe's answer: 200 and the status text when the node can carry pod
    traffic, else 503 with what it lacks first."""
    text = status.render_status(report)
    if report.ready:
        return 200, "text/plain", text
    return 503, "text/plain", "".join(f"not ready: {why}\n" for why in report.waiting_for) + text


def refusal(exc: errors.Refused) -> Answer:
    """The answer to a refusal: the status code of its most specific class in ``STATUS``."""
    code = next(STATUS[c] for c in type(exc).__mro__ if c in STATUS)
    body = {"error": exc.message, **({"details": exc.details} if exc.details else {})}
    return _json(code, body)


def _json(code: int, data: dict[str, Any]) -> Answer:
    return code, "application/json", json.dumps(data) + "\n"
