"""The local HTTP API: read views on 127.0.0.1:6784, everything on the root-only unix socket.

GET    /healthz          liveness: 200 while every long-running task of the agent runs; 500
                         naming each task that ended with an exception
GET    /status           Weave's status text; 503, led by what is missing, until the node can
                         carry pod traffic (the readiness probe)
GET    /status/{connections,peers,ipam,routes}
GET    /report           the status report (agent/report.py) as JSON
GET    /metrics          Prometheus exposition (also alone on the metrics address)
POST   /ip/<container-id>[?ifname=eth0]   allocate the container's address
DELETE /ip/<container-id>[?ifname=X]      release its address(es)
DELETE /peer/<name>      rmpeer: take over the address ranges of a dead peer

Who may ask what. The mutating routes (POST/DELETE) answer only on the unix socket, whose
file is root's with mode 0600, and only to a caller whose credentials (SO_PEERCRED) show one
of ``trusted_uids`` (root); a caller with another uid is refused every route there. A TCP
listener serves the GET views only: any local user reaches 127.0.0.1, so a mutating call on
it is refused (403) without acting. Every refusal of outside input (a malformed
or oversized request, a timeout, a foreign uid, a mutation over TCP, too many connections at
once) is counted by reason in the ``api request`` tally (agent/refusals.py: the metric
``weave_py_refusals_total``) and logged, rate-limited, with its source. Bounds: the request
(agent/request.py), ``MAX_CONNECTIONS`` open connections per listener (more are answered 503
at once), and the read timeout. Where it listens and how a caller is named and trusted:
agent/listeners.py.

The POST/DELETE routes answer JSON: 200 with the action's result, or ``{"error": message}``
(plus ``"details"`` when the refusal has them) with the status code ``STATUS`` maps the
refusal's class to (agent/errors.py); anything else an action raises is a bug: 500, with the
traceback in the log. 404 when the agent has no ``actions`` (no address management) and on the
metrics-only listener. Path parts are percent-decoded; no request body is needed.

A deliberately small HTTP/1.1 server (one request per connection) so the agent needs no web
framework: requests are tiny, local and few. Nothing the API answers carries a secret: the
report has no configuration in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent import errors, request, status
from agent.listeners import Caller, identify
from agent.metrics import ReportCollector
from agent.refusals import Tallies, TallyCollector
from agent.report import Report

log = logging.getLogger("weave-py.api")
MAX_REQUEST = request.MAX_HEAD
MAX_CONNECTIONS = 32  # open connections per listener; the views are fast, the callers few
METHODS = ("GET", "POST", "DELETE")
ACTION_METHODS = {"ip": ("POST", "DELETE"), "peer": ("DELETE",)}
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
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
    ``peer_metrics``: /metrics carries the per-peer series (agent/metrics.py).
    ``tallies``: the node's refusal counters (one ``api request`` tally is added when absent;
    /metrics renders them all). ``dead``: the long-running tasks that ended with an
    exception, as lines (/healthz answers 500 with them). ``trusted_uids``: who may call on
    the unix socket."""

    def __init__(
        self,
        report: Callable[[], Report],
        metrics_only: bool = False,
        actions: Actions | None = None,
        peer_metrics: bool = True,
        tallies: Tallies | None = None,
        dead: Callable[[], Sequence[str]] = tuple,
        trusted_uids: frozenset[int] = frozenset({0}),
    ) -> None:
        self.report = report
        self.metrics_only = metrics_only
        self.actions = actions
        self.dead = dead
        self.trusted_uids = trusted_uids
        self.tallies = tallies if tallies is not None else Tallies()
        self.refusals = self.tallies.kinds.get("api request") or self.tallies.add(
            "api request", log
        )
        self.open = 0  # connections being served
        self.registry = CollectorRegistry()
        self.registry.register(ReportCollector(report, peer_metrics))
        self.registry.register(TallyCollector(self.tallies))

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
            return healthz(self.dead())
        report = self.report()
        if path == "/report":
            return 200, "application/json", json.dumps(report.to_json(), indent=2) + "\n"
        if path == "/status":
            return readiness(report)
        if path.startswith("/status/") and path[8:] in status.VIEWS:
            return 200, "text/plain", status.VIEWS[path[8:]](report)
        return 404, "text/plain", f"no such endpoint: {path}\n"

    async def dispatch(self, method: str, target: str) -> Answer:
        """The answer to any request from a trusted caller: the action routes here,
        everything else by ``respond``."""
        try:
            req = request.parse_head(f"{method} {target} HTTP/1.1\r\n\r\n".encode("latin-1"))
        except (request.BadRequest, UnicodeEncodeError):
            return 400, "text/plain", "bad request\n"
        return await self._dispatch(req, Caller("local", trusted=True))

    async def _dispatch(self, req: request.Request, caller: Caller) -> Answer:
        if req.method not in METHODS:
            return 405, "text/plain", f"only {', '.join(METHODS)}\n"
        route = action_route(req.path)
        if route is None:
            return self.respond(req.method, req.path)
        if self.metrics_only:
            return 404, "text/plain", "only /metrics here\n"
        if not caller.trusted:
            self.refusals.note("read-only-listener", caller.source, time.monotonic(),
                               f"{req.method} {req.path}")  # fmt: skip
            return _json(403, {"error": "address calls go through the agent's unix socket"})
        kind, name = route
        if self.actions is None:
            return _json(404, {"error": "address management is not enabled on this agent"})
        if name is None:
            return _json(404, {"error": f"no such endpoint: {req.path}"})
        if req.method not in ACTION_METHODS[kind]:
            return _json(405, {"error": f"use {' or '.join(ACTION_METHODS[kind])}"})
        ifname = req.query.get("ifname")
        return await self._act(self.actions, req.method, kind, name, ifname)

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
        """Serve one connection: one request, one answer."""
        self.open += 1
        try:
            code, ctype, body = await self._answer(reader, writer)
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(request.READ_TIMEOUT):
                    await writer.drain()
        finally:
            self.open -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Answer:
        caller = identify(writer, self.trusted_uids)
        now = time.monotonic()
        if self.open > MAX_CONNECTIONS:
            self.refusals.note("too-many-connections", caller.source, now)
            return 503, "text/plain", "too many connections\n"
        try:
            req = await request.read(reader)
        except request.BadRequest as exc:
            self.refusals.note(exc.reason, caller.source, time.monotonic(), str(exc))
            return 400, "text/plain", "bad request\n"
        if caller.refused:  # refused once read, so the answer is not lost to a reset
            self.refusals.note(caller.refused, caller.source, now, f"{req.method} {req.path}")
            return 403, "text/plain", "the agent's socket is root's\n"
        return await self._dispatch(req, caller)


def action_route(path: str) -> tuple[str, str | None] | None:
    """("ip", container id) or ("peer", name), percent-decoded, for the action routes; the
    name is None when the path has none or more than one part after the route. None for
    every other path."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 2 or parts[0] or parts[1] not in ACTION_METHODS:
        return None
    name = unquote(parts[2]) if len(parts) == 3 and parts[2] else None
    return parts[1], name


def healthz(dead: Sequence[str]) -> Answer:
    """The liveness probe's answer: 200 while no task has died, else 500 naming them."""
    if not dead:
        return 200, "text/plain", "ok\n"
    return 500, "text/plain", "".join(f"dead task: {line}\n" for line in dead)


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
