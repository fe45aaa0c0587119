"""Where the local API listens and who is on the other end of a connection.

The unix socket is bound under a temporary name, restricted to mode 0600 and renamed into
place, so no one but its owner (root) can connect at any moment; the caller's credentials
(SO_PEERCRED) then name it by uid and pid and decide whether it is trusted. A TCP caller is
named by its address and never trusted: any local user reaches 127.0.0.1. The streams' limit
is the request head's bound (agent/request.py), so a head that does not end stops the read
there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent import request

PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
Handle = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: ``source`` for the log ("uid 0 pid 42", "127.0.0.1:40000"),
    ``trusted``: may ask anything (root on the unix socket), else the GET views only, and
    ``refused``: a reason to refuse every request (a foreign uid on the unix socket)."""

    source: str
    trusted: bool
    refused: str = ""


def identify(writer: asyncio.StreamWriter, trusted_uids: frozenset[int]) -> Caller:
    """The caller on the other end of ``writer``'s socket: by its credentials on a unix
    socket, by its address (never trusted) on TCP."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        return Caller(where, trusted=False)
    try:
        pid, uid, _ = PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
    except OSError:
        return Caller("unix socket", trusted=False, refused="no-credentials")
    source = f"uid {uid} pid {pid}"
    if uid not in trusted_uids:
        return Caller(source, trusted=False, refused="foreign-uid")
    return Caller(source, trusted=True)


def bind_unix(path: str, backlog: int) -> socket.socket:
    """A listening, non-blocking unix socket at ``path``, owned by this process's user with
    mode 0600 before anyone can connect: bound under a temporary name, restricted, listening,
    then renamed into place (which also replaces a stale socket file atomically)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return sock


async def listen_unix(path: str, handle: Handle) -> asyncio.Server:
    """``handle`` serving a unix socket at ``path`` (``bind_unix``)."""
    sock = bind_unix(path, 100)
    try:
        return await asyncio.start_unix_server(handle, sock=sock, limit=request.MAX_HEAD)
    except BaseException:
        sock.close()
        raise


async def listen_tcp(host: str, port: int, handle: Handle) -> asyncio.Server:
    """``handle`` serving TCP ``host:port``."""
    return await asyncio.start_server(
        handle, host, port, reuse_address=True, limit=request.MAX_HEAD
    )
