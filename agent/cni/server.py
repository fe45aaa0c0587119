"""The unix socket the CNI plugin forwards requests to, with the pod's netns as a descriptor.

Wire format: the plugin's (agent/cni/plugin/main.go; the constants are spec's). One connection
per request; the plugin sends one frame, the agent answers with one frame and closes. A frame
is a 4-byte big-endian length and that many bytes of UTF-8 JSON (an object), at most
``spec.MAX_FRAME_BYTES``. The request may carry one file descriptor (SCM_RIGHTS): the pod's
network namespace. Replies are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code", "msg", "details"}}``.

Why not asyncio streams: they cannot receive descriptors. The listening and the connection
sockets are non-blocking; ``recvmsg`` is tried directly and, when it would block, the
connection waits for readability with ``loop.add_reader`` (asyncio and uvloop alike). That
keeps everything on the event loop -- no thread to start, stop or hand results across -- and a
slow or silent client costs one task until its read timeout. Received descriptors are
close-on-exec and always closed once the request is answered.

Every fault stays with its connection: a malformed frame gets an error reply (code 6), a
``CniError`` from the handler its own reply, any other exception code 100 and a logged
traceback; the server keeps serving.

Trust and bounds: the socket file is mode 0600 (root's), and a caller whose credentials
(SO_PEERCRED) show another uid than ``trusted_uids`` (root) is refused before a byte is read;
at most ``MAX_CONNECTIONS`` requests are served at once (more are refused at once: the
plugin reports "try again later"); a frame is capped by its length prefix before its body is
read, and the whole request by ``READ_TIMEOUT``. Every refused request is counted by reason
in the ``cni request`` tally (agent/refusals.py) and logged, rate-limited, with the caller's
uid and pid.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.cni.spec import LENGTH, MAX_FRAME_BYTES, CniError, Code
from agent.listeners import bind_unix
from agent.refusals import Tallies, Tally

log = logging.getLogger("weave-py.cni")

MAX_FDS = 4  # descriptors one read takes in; a request may carry one, extra ones are refused
READ_TIMEOUT = 5.0  # seconds a client has to send its whole request (and to take the reply)
BACKLOG = 128
MAX_CONNECTIONS = 64  # requests served at once (a node's runtime sends a few in parallel)
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Handle = Callable[[dict[str, Any], int | None], Awaitable[dict[str, Any] | None]]


class FrameError(Exception):
    """A request that is not a well-formed frame; ``reason``: the refusal counter's label."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


def encode_frame(doc: Any) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}", "too-large")
    return LENGTH.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode())
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FrameError("request is not a JSON object")
    return doc


def error_reply(code: int, msg: str, details: str = "") -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "msg": msg, "details": details}}


class CniServer:
    """``await start()`` listens on ``path``; ``close()`` + ``await wait_closed()`` (or
    ``async with``) stops, cancelling requests in flight. Refusals are counted in
    ``tallies`` (a tally of its own when none is given)."""

    def __init__(
        self,
        path: str,
        handle: Handle,
        read_timeout: float = READ_TIMEOUT,
        tallies: Tallies | None = None,
        trusted_uids: frozenset[int] = frozenset({0}),
    ) -> None:
        self.path = path
        self.handle = handle
        self.read_timeout = read_timeout
        self.trusted_uids = trusted_uids
        self.refusals: Tally = (tallies or Tallies()).add("cni request", log)
        self._sock: socket.socket | None = None
        self._inode = 0
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on ``path`` (mode 0600; a stale socket file replaced atomically)."""
        sock = bind_unix(self.path, BACKLOG)
        self._sock = sock
        self._inode = os.stat(self.path).st_ino
        self._accepting = asyncio.create_task(self._accept_loop(sock), name="cni-accept")
        log.info("listen cni: %s", self.path)

    def close(self) -> None:
        """Stop accepting (the path goes at once), cancel requests in flight."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:  # still ours: a new agent's stays
                os.unlink(self.path)
        for task in self._connections:
            task.cancel()
        if self._accepting is None:
            sock.close()
        else:  # the listener closes once the loop no longer polls it
            self._accepting.cancel()
            self._accepting.add_done_callback(lambda _: sock.close())

    @property
    def serving(self) -> bool:
        """Accepting connections (false once closed or if the accept loop died)."""
        return (
            self._sock is not None and self._accepting is not None and (not self._accepting.done())
        )

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._accepting, *self._connections) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> CniServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- connections --------------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                log.warning("accept cni connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self._serve(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        fds: list[int] = []
        try:
            with conn:
                try:
                    reply = await self._checked(conn, fds)
                finally:
                    while fds:
                        os.close(fds.pop())
                try:
                    frame = encode_frame(reply)
                except (FrameError, TypeError, ValueError) as exc:
                    log.error("answer cni request: unencodable reply: %s", exc)
                    frame = encode_frame(error_reply(Code.INTERNAL, f"unencodable reply: {exc}"))
                async with asyncio.timeout(self.read_timeout):
                    await loop.sock_sendall(conn, frame)
        except (OSError, TimeoutError) as exc:
            log.debug("answer cni request: %s", exc)

    async def _checked(self, conn: socket.socket, fds: list[int]) -> dict[str, Any]:
        """The reply to the caller on ``conn``: refused (and counted) when it is not trusted
        or one too many, else its request's answer."""
        source, trusted = caller(conn, self.trusted_uids)
        if not trusted:
            return self._refuse("foreign-uid", source, Code.IO_FAILURE, "the socket is root's")
        if len(self._connections) > MAX_CONNECTIONS:
            return self._refuse("too-many-connections", source, Code.TRY_AGAIN_LATER,
                                "weave-py agent is busy: try again later")  # fmt: skip
        return await self._answer(conn, fds, source)

    def _refuse(self, reason: str, source: str, code: int, msg: str) -> dict[str, Any]:
        self.refusals.note(reason, source, time.monotonic(), msg)
        return error_reply(code, msg)

    async def _answer(self, conn: socket.socket, fds: list[int], source: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.read_timeout):
                request = await read_request(conn, fds)
        except TimeoutError:
            msg = f"no whole request within {self.read_timeout:g}s"
            return self._refuse("timeout", source, Code.DECODE, msg)
        except FrameError as exc:
            return self._refuse(exc.reason, source, Code.DECODE, str(exc))
        if len(fds) > 1:
            msg = f"request carries {len(fds)} descriptors, not one"
            return self._refuse("descriptors", source, Code.DECODE, msg)
        try:
            result = await self.handle(request, fds[0] if fds else None)
        except CniError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except Exception as exc:
            log.exception("handle cni %s: unexpected failure", request.get("command"))
            return error_reply(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        return {"ok": True, "result": result}


async def read_request(conn: socket.socket, fds: list[int]) -> dict[str, Any]:
    """One frame from ``conn``; descriptors that came with it are appended to ``fds``."""
    header = await _read_exactly(conn, LENGTH.size, fds)
    (length,) = LENGTH.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"request of {length} bytes exceeds {MAX_FRAME_BYTES}", "too-large")
    return decode_body(await _read_exactly(conn, length, fds))


async def _read_exactly(conn: socket.socket, size: int, fds: list[int]) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await _recv(conn, size - len(data), fds)
        if not chunk:
            raise FrameError(f"connection closed after {len(data)} of {size} bytes", "incomplete")
        data += chunk
    return bytes(data)


async def _recv(conn: socket.socket, size: int, fds: list[int]) -> bytes:
    """Some bytes (b"" at end of stream), collecting descriptors (close-on-exec)."""
    ancillary = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    while True:
        try:
            data, cmsgs, flags, _ = conn.recvmsg(size, ancillary, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            await _readable(conn)
            continue
        for level, kind, payload in cmsgs:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if flags & socket.MSG_CTRUNC:
            raise FrameError(f"request carries more than {MAX_FDS} descriptors", "descriptors")
        return data


async def _readable(conn: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())


def caller(conn: socket.socket, trusted_uids: frozenset[int]) -> tuple[str, bool]:
    """("uid U pid P", whether U is trusted) of the process on the other end of ``conn``."""
    try:
        pid, uid, _ = PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
    except OSError:
        return "unknown caller", False
    return f"uid {uid} pid {pid}", uid in trusted_uids


async def serve(path: str, handle: Handle, tallies: Tallies | None = None) -> CniServer:
    """A started server (stop it with ``close()`` and ``await wait_closed()``)."""
    server = CniServer(path, handle, tallies=tallies)
    await server.start()
    return server
