"""The asyncio driver of the mesh core: TCP control connections, handshakes and timers.

It does the I/O the core asks for and nothing else: accepts and dials connections, runs the
handshake, feeds decoded messages to ``Mesh.receive``, writes ``Mesh.outbox()``, dials
``Mesh.dial_targets()``, closes ``Mesh.to_close()``, re-arms one timer at ``Mesh.get_timer()``
and hands mesh events to ``on_event``. Malformed input closes only that connection, with a log
line naming the peer and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Callable, Hashable

from gossip.events import MeshEvent
from gossip.handshake import Accepted, Handshake, Hello, Refused
from gossip.mesh import Mesh
from gossip.secret import Secrets
from gossip.wire import DecodeError

log = logging.getLogger("weave-py.mesh")

Address = tuple[str, int]
HANDSHAKE_TIMEOUT = 10.0
DIAL_TIMEOUT = 5.0
READ_SIZE = 65536
MAX_BUFFERED = 16 * 1024 * 1024  # a peer that lets this much pile up is closed


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
        self.hello = hello
        self.listen = listen
        self.server_socket = server_socket
        self.on_event = on_event or (lambda event: None)
        self.writers: dict[Hashable, asyncio.StreamWriter] = {}
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
                timeout = max(0.0, self.mesh.get_timer() - time.monotonic())
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
        log.info("->[%s] connection accepted", where)
        await self._serve(reader, writer, None, where, peer[0] if peer else None)

    def _spawn_dial(self, addr: Address) -> None:
        task = asyncio.get_running_loop().create_task(self._dial(addr))
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
        await self._serve(reader, writer, addr, where, addr[0])

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
            result = await self._handshake(reader, writer, where, addr is not None)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            reason = str(exc) or "timeout"
            log.info("->[%s] connection shutting down due to error: %s", where, reason)
            result = None
        if not isinstance(result, Accepted):
            self._not_established(addr, result, writer)
            return
        conn = next(self._ids)
        where = f"{where}|{result.remote}"
        if not self.mesh.connection_up(conn, result.remote.name, addr, time.monotonic()):
            log.info("->[%s] connection deleted: already connected", where)
            if addr is not None and self.outbound.get(addr, {}).get("state") != "established":
                self.outbound.pop(addr, None)
            writer.close()
            return
        log.info("->[%s] connection ready; using protocol version %d", where, result.version)
        self._established(conn, result.remote, writer, addr, where, host)
        try:
            for msg_type, fields in result.messages:
                self.mesh.receive(conn, msg_type, fields, time.monotonic())
            self._pump()
            await self._read(conn, reader, result)
        except (DecodeError, ValueError) as exc:
            log.warning("->[%s] connection shutting down due to error: %s", where, exc)
        except OSError as exc:
            log.info("->[%s] connection shutting down due to error: %s", where, exc)
        finally:
            self._closed(conn, writer, addr, where)

    def _not_established(
        self, addr: Address | None, result: Refused | None, writer: asyncio.StreamWriter
    ) -> None:
        if addr is not None:
            self.mesh.dial_failed(addr, time.monotonic())
            reason = result.reason if result is not None else "handshake failed"
            self._set_outbound(addr, {"state": "failed", "detail": reason})
        self.terminations += 1
        writer.close()
        self._wake.set()

    def _established(
        self,
        conn: int,
        remote: Hello,
        writer: asyncio.StreamWriter,
        addr: Address | None,
        where: str,
        host: str | None,
    ) -> None:
        self.writers[conn], self.remotes[conn] = writer, where
        if host is not None:
            self.observed[remote.name] = host
        entry = {"state": "established", "peer": str(remote), "name": remote.name}
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
        self.remotes.pop(conn, None)
        self.terminations += 1
        writer.close()
        log.info("->[%s] connection deleted", where)
        self._pump()

    async def _handshake(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        where: str,
        dialled: bool,
    ) -> Accepted | Refused | None:
        shake = Handshake(self.hello, initiator=dialled, secrets=self.secrets)
        writer.write(shake.start())
        result = None
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            while result is None:
                data = await reader.read(READ_SIZE)
                if not data:
                    log.info("->[%s] connection shutting down due to error: closed by peer", where)
                    return None
                result = shake.receive(data)
                writer.write(shake.data_to_send())  # a CONFIRM, or a REFUSE
        if isinstance(result, Refused):
            log.warning("->[%s] connection shutting down due to error: %s", where, result.reason)
        return result

    async def _read(self, conn: int, reader: asyncio.StreamReader, accepted: Accepted) -> None:
        decoder = accepted.decoder
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            now = time.monotonic()
            for msg_type, fields in decoder.feed(data):
                self.mesh.receive(conn, msg_type, fields, now)
            self._pump()

    # -- carrying out what the core asked for --------------------------------------------------

    def _pump(self) -> None:
        for conn, data in self.mesh.outbox():
            writer = self.writers.get(conn)
            if writer is None or writer.is_closing():
                continue
            if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                log.warning("->[%s] connection shutting down due to error: peer too slow",
                            self.remotes.get(conn))  # fmt: skip
                writer.close()
                continue
            writer.write(data)
        for conn in self.mesh.to_close():
            writer = self.writers.get(conn)
            if writer is not None:
                writer.close()
        if self.running and not self.closing:
            for addr in self.mesh.dial_targets(time.monotonic()):
                self._spawn_dial(addr)
        for event in self.mesh.events():
            self.on_event(event)
        self._wake.set()
