"""The asyncio driver of the mesh core: TCP control connections, handshakes and timers.

It does the I/O the core asks for and nothing else: accepts and dials connections, runs the
handshake, feeds decoded messages to ``Mesh.receive``, writes ``Mesh.outbox()``, dials
``Mesh.dial_targets()``, closes ``Mesh.to_close()``, re-arms one timer at ``Mesh.get_timer()``
and hands mesh events to ``on_event``. ``accept_secrets`` changes the secrets while it runs:
connections that proved a secret no longer accepted are closed, and redialled under a new one.

Failure stays local: malformed input, a refused handshake, a peer too slow to read, and any
exception while serving one connection close only that connection; each refusal is counted by
reason in ``mesh.rejections`` and logged through its rate-limited lines (never one line per
attempt), naming the source. Connections in their handshake are bounded (gossip/admission.py)
and timed out with the reason said (gossip/handshaking.py). Peer-chosen text reaches logs and
status escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from gossip.admission import Admission
from gossip.events import MeshEvent
from gossip.handshake import Accepted, Handshake, Hello
from gossip.handshaking import HANDSHAKE_TIMEOUT as HANDSHAKE_TIMEOUT
from gossip.handshaking import READ_SIZE, HandshakeFailed, admitted_handshake
from gossip.keepalive import FEATURE as KEEPALIVE
from gossip.mesh import Mesh
from gossip.rejections import printable
from gossip.secret import Secrets
from gossip.wire import DecodeError

log = logging.getLogger("weave-py.mesh")

Address = tuple[str, int]
DIAL_TIMEOUT = 5.0
MAX_BUFFERED = 4 * 1024 * 1024  # bytes of unsent messages per connection; a slower peer is closed


class MeshDriver:
    """Runs one ``Mesh`` over real TCP connections: ``run()`` until cancelled.

    It listens on ``listen``, or on ``server_socket`` when one is given (already bound, say to
    an ephemeral port whose number the HELLO must advertise).
    """

    def __init__(
        self,
        mesh: Mesh,
        hello: Hello,
        listen: Address,
        on_event: Callable[[MeshEvent], None] | None = None,
        server_socket: socket.socket | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        self.mesh = mesh
        self.secrets = secrets or Secrets.none()  # what a peer must prove in its handshake
        if KEEPALIVE not in hello.features:  # this driver sends what the feature promises
            hello = dataclasses.replace(hello, features=(*hello.features, KEEPALIVE))
        self.hello = hello
        self.admission = Admission()
        self.listen = listen
        self.server_socket = server_socket
        self.on_event = on_event or (lambda event: None)
        self.writers: dict[Hashable, asyncio.StreamWriter] = {}
        self.seals: dict[Hashable, Callable[[bytes], bytes]] = {}
        self.proved: dict[Hashable, bytes] = {}  # conn id -> the stretched secret it proved
        self.remotes: dict[Hashable, str] = {}  # conn id -> "addr|name(nick)" for logs
        # The host each neighbour was reached at (dialled, or the source of its connection):
        # what its record advertises may be on a segment we cannot reach.
        self.observed: dict[str, str] = {}
        # What `status connections` shows, Weave-style: one entry per dialled address
        # (connecting, retrying, failed, established) and per accepted connection.
        self.outbound: dict[Address, dict[str, str]] = {}
        self.inbound: dict[Hashable, dict[str, str]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.closing = False  # set on shutdown: no new dials
        self.running = False  # dials start with run(): a change published before it only queues
        # Connections ended (Weave's weave_connection_terminations_total): every one that
        # failed its handshake or closed once established; a duplicate closed at once is not.
        self.terminations = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve connections and timers until cancelled; then close every connection."""
        if self.server_socket is not None:
            server = await asyncio.start_server(self._accept, sock=self.server_socket)
        else:
            server = await asyncio.start_server(self._accept, *self.listen, reuse_address=True)
        self.running = True
        try:
            while True:
                self.mesh.handle_timer(time.monotonic())
                self._pump()
                self._wake.clear()
                due = self.mesh.get_timer()
                line_at = self.mesh.rejections.next_line_at()
                if line_at is not None:
                    due = min(due, line_at)
                timeout = max(0.0, due - time.monotonic())
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation
                # that arrives as the wake-up event is set, and run() would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(timeout, 60.0)):
                        await self._wake.wait()
        finally:
            self.closing, self.running = True, False
            server.close()
            for task in list(self._tasks):
                task.cancel()
            for writer in self.writers.values():
                writer.close()

    def flush(self) -> None:
        """Carry out what the core asks for after a change made outside the driver."""
        self._pump()

    def leave(self) -> None:
        """Clean departure: goodbye to every neighbour (sent before the writers close)."""
        self.mesh.leave(time.monotonic())
        self._pump()
        self.closing = True

    def accept_secrets(self, secrets: Secrets) -> int:
        """Take ``secrets`` while running: new handshakes use them (the first to dial, all of
        them to answer); established connections that proved a secret no longer accepted are
        closed (their peers redial under a secret in common), the others stay. Returns how many
        were closed."""
        if self.secrets.enabled != secrets.enabled:
            raise ValueError("secrets can change while running, not be turned on or off")
        self.secrets = secrets
        closing = [conn for conn, key in self.proved.items() if not self._still_accepted(key)]
        for conn in closing:
            self._close_dropped(conn)
        return len(closing)

    def _still_accepted(self, key: bytes | None) -> bool:
        accepted = self.secrets.keys()  # stretched, as ``proved`` holds them
        return key is None or key in accepted

    def _close_dropped(self, conn: Hashable) -> None:
        """Close a connection whose proved secret is no longer accepted."""
        where = self.remotes.get(conn, "?")
        log.info("->[%s] close connection: its secret is no longer accepted (redial)", where)
        writer = self.writers.get(conn)
        if writer is not None:
            writer.close()

    def _set_outbound(self, addr: Address, entry: dict[str, str]) -> None:
        """Record a dial's progress, never hiding an established connection to the address."""
        if self.outbound.get(addr, {}).get("state") != "established":
            self.outbound[addr] = entry

    def connections(self) -> list[dict[str, str]]:
        """Control connections and dial targets, for the status views."""
        out = [
            {"direction": "->", "address": f"{a[0]}:{a[1]}", **entry}
            for a, entry in sorted(self.outbound.items())
        ]
        out += [{"direction": "<-", **entry} for entry in self.inbound.values()]
        return out

    # -- connections --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if peer else "?"
        host = peer[0] if peer else "?"
        refusal = self.admission.enter(host)
        if refusal is not None:
            self.mesh.rejections.add("pending_limit", where, refusal)
            writer.close()
            self._log_rejections()
            return
        log.debug("->[%s] connection accepted", where)
        await self._guarded(self._serve(reader, writer, None, where, host), where, writer)

    async def _guarded(
        self, work: Coroutine[Any, Any, None], where: str, writer: asyncio.StreamWriter | None
    ) -> None:
        """Run one connection's or dial's work; an exception ends only that work."""
        try:
            await work
        except Exception as exc:  # one connection's failure stays local
            self.mesh.rejections.add("internal_error", where, f"{type(exc).__name__}: {exc}")
            log.debug("->[%s] connection failed", where, exc_info=True)
            if writer is not None:
                writer.close()
            self._log_rejections()

    def _spawn_dial(self, addr: Address) -> None:
        where = f"{addr[0]}:{addr[1]}"
        work = self._guarded(self._dial(addr), where, None)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial(self, addr: Address) -> None:
        where = f"{addr[0]}:{addr[1]}"
        log.info("->[%s] attempting connection", where)
        self._set_outbound(addr, {"state": "connecting"})
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                reader, writer = await asyncio.open_connection(*addr)
        except (OSError, TimeoutError) as exc:
            retry = self.mesh.dial_failed(addr, time.monotonic()) - time.monotonic()
            reason = str(exc) or "timeout"
            log.info("->[%s] retrying in %.1fs: %s", where, retry, reason)
            self._set_outbound(addr, {"state": "retrying", "detail": reason})
            self._wake.set()
            return
        try:
            await self._serve(reader, writer, addr, where, addr[0])
        except Exception:
            self.mesh.dial_failed(addr, time.monotonic())
            writer.close()
            raise

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        addr: Address | None,
        where: str,
        host: str | None,
    ) -> None:
        """One connection, dialled (``addr``) or accepted, from the handshake to its close."""
        try:
            result, key = await self._handshake(reader, writer, host, addr is not None)
        except HandshakeFailed as failed:
            self.mesh.rejections.add(failed.reason, where, failed.detail)
            self._not_established(addr, failed, writer)
            return
        remote = result.remote
        conn = next(self._ids)
        where = f"{where}|{remote.name}({printable(remote.nickname, 40)})"
        keepalive = KEEPALIVE in remote.features
        if not self.mesh.connection_up(
            conn, remote.name, addr, time.monotonic(), uid=remote.uid, label=where,
            keepalive=keepalive, host=host,
        ):  # fmt: skip
            log.debug("->[%s] connection deleted: the name is held", where)
            if addr is not None and self.outbound.get(addr, {}).get("state") != "established":
                self.outbound.pop(addr, None)
            writer.close()
            self._pump()
            return
        log.info("->[%s] connection ready; using protocol version %d", where, result.version)
        self._established(conn, result, writer, addr, where, host)
        if key is not None:
            self.proved[conn] = key
            if not self._still_accepted(key):  # the secrets changed during the handshake
                self._close_dropped(conn)
        try:
            for msg_type, fields in result.messages:
                self.mesh.receive(conn, msg_type, fields, time.monotonic(), time.time_ns())
            self._pump()
            await self._read(conn, reader, result)
        except (DecodeError, ValueError) as exc:
            self.mesh.rejections.add("malformed", where, str(exc))
        except OSError as exc:
            log.info("->[%s] connection shutting down due to error: %s", where, exc)
        except Exception as exc:  # one connection's failure stays local
            self.mesh.rejections.add("internal_error", where, f"{type(exc).__name__}: {exc}")
            log.debug("->[%s] connection failed", where, exc_info=True)
        finally:
            self._closed(conn, writer, addr, where)

    def _not_established(
        self, addr: Address | None, failed: HandshakeFailed, writer: asyncio.StreamWriter
    ) -> None:
        if addr is not None:
            self.mesh.dial_failed(addr, time.monotonic())
            self._set_outbound(addr, {"state": "failed", "detail": printable(failed.detail)})
        self.terminations += 1
        writer.close()
        self._log_rejections()
        self._wake.set()

    def _established(
        self,
        conn: int,
        accepted: Accepted,
        writer: asyncio.StreamWriter,
        addr: Address | None,
        where: str,
        host: str | None,
    ) -> None:
        self.writers[conn], self.remotes[conn] = writer, where
        self.seals[conn] = accepted.seal  # what we write goes through it (sealed sessions)
        remote = accepted.remote
        if host is not None:
            self.observed[remote.name] = host
        peer = where.partition("|")[2]  # name(nickname), the nickname escaped
        entry = {"state": "established", "peer": peer, "name": remote.name}
        if remote.control_endpoint != addr:  # connected the other way: no dial of ours pends
            self.outbound.pop(remote.control_endpoint, None)
        if addr is not None:
            self.outbound[addr] = entry
        else:
            self.inbound[conn] = {**entry, "address": where.split("|")[0]}

    def _closed(
        self, conn: int, writer: asyncio.StreamWriter, addr: Address | None, where: str
    ) -> None:
        self.mesh.connection_down(conn, time.monotonic())
        self.inbound.pop(conn, None)
        if addr is not None:
            self.outbound.pop(addr, None)
        self.writers.pop(conn, None)
        self.seals.pop(conn, None)
        self.proved.pop(conn, None)
        name = self.remotes.pop(conn, "").partition("|")[2].partition("(")[0]
        if name not in self.mesh.topology.records:  # a stranger that never sent its record
            self.observed.pop(name, None)
        self.terminations += 1
        writer.close()
        log.info("->[%s] connection deleted", where)
        self._pump()

    async def _handshake(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str | None,
        dialled: bool,
    ) -> tuple[Accepted, bytes | None]:
        """The connection's handshake as this peer (gossip/handshaking.py), and the stretched
        secret the peer proved (None without a secret)."""
        secrets = self.secrets
        shake = Handshake(self.hello, initiator=dialled, secrets=secrets, seal=secrets.enabled)
        accepted = await admitted_handshake(reader, writer, shake, self.admission, host)
        index = accepted.secret_index
        return accepted, None if index is None else secrets.keys()[index]

    async def _read(self, conn: int, reader: asyncio.StreamReader, accepted: Accepted) -> None:
        decoder = accepted.decoder
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            now, wall_ns = time.monotonic(), time.time_ns()
            for msg_type, fields in decoder.feed(data):
                self.mesh.receive(conn, msg_type, fields, now, wall_ns)
            self._pump()

    # -- carrying out what the core asked for --------------------------------------------------

    def _pump(self) -> None:
        for conn, data in self.mesh.outbox():
            writer = self.writers.get(conn)
            if writer is None or writer.is_closing():
                continue
            if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                where = self.remotes.get(conn, "?")
                self.mesh.rejections.add("slow_peer", where, f"over {MAX_BUFFERED} bytes unsent")
                writer.close()
                continue
            seal = self.seals.get(conn)
            writer.write(seal(data) if seal is not None else data)
        for conn in self.mesh.to_close():
            writer = self.writers.get(conn)
            if writer is not None:
                writer.close()
        if self.running and not self.closing:
            for addr in self.mesh.dial_targets(time.monotonic()):
                self._spawn_dial(addr)
        for event in self.mesh.events():
            self.on_event(event)
        self._log_rejections()
        self._wake.set()

    def _log_rejections(self) -> None:
        for line in self.mesh.rejections.lines(time.monotonic()):
            log.warning(line)
