"""The sleeve's UDP sockets: what the driver needs of one (UdpSocket), and the kernel's, opened
non-blocking with large buffers and kernel fragmentation allowed (open_udp)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from typing import Any, Protocol

Address = tuple[str, int]  # an IPv4 UDP endpoint
Cmsg = tuple[int, int, bytes]  # (level, type, data) of one control message

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOL_UDP = 17
UDP_SEGMENT = 103  # 2-byte cmsg: GSO segment size (Python 3.11's socket module lacks it)
UDP_GRO = 104  # socket option and 4-byte int cmsg: coalesced segment size


class UdpSocket(Protocol):
    """What the sleeve's driver needs of a UDP socket, non-blocking (BlockingIOError when
    nothing waits or the send buffer is full): gathered sends with control messages (the GSO
    segment size), reads into a buffer with theirs (the GRO segment size), and a descriptor to
    wait on. A ``socket.socket`` from open_udp is one, with nothing in between; overlay.fakes
    has an in-memory one."""

    def fileno(self) -> int:
        """The descriptor the event loop waits on for reads."""

    def sendmsg(
        self,
        buffers: Iterable[bytes | bytearray | memoryview],
        ancdata: Iterable[Cmsg] = ...,
        flags: int = ...,
        address: Address | None = ...,
        /,
    ) -> int:
        """Send ``buffers`` gathered as one datagram (or one GSO train) to ``address``, or to
        the connected peer when there is none; the bytes sent."""

    def recvmsg_into(
        self, buffers: Iterable[bytearray | memoryview], ancbufsize: int = ..., flags: int = ..., /
    ) -> tuple[int, list[Cmsg], int, Any]:
        """Read one datagram (or one GRO read) into ``buffers``: (bytes, control messages,
        flags, source address)."""

    def close(self) -> None:
        """Release the socket."""


def open_udp(host: str, port: int, buffer_bytes: int, peer: Address | None = None) -> socket.socket:
    """Bind ``host:port``. The fallback path sends super-packets as one datagram the kernel
    fragments, so the socket must not set DF; UDP_GRO is asked for so GSO chunk trains arrive
    coalesced; buffers are forced large because user-space tunnels lose packets at socket
    queues long before they run out of CPU.

    With ``peer``, the socket is also connected to it: a send-only *link* (bind it to port 0:
    the main socket keeps receiving everything), whose sends need neither an address to parse
    nor a route lookup."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for force, plain in (
            (SO_SNDBUFFORCE, socket.SO_SNDBUF),
            (SO_RCVBUFFORCE, socket.SO_RCVBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, buffer_bytes)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, buffer_bytes)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        with contextlib.suppress(OSError):  # kernels before 5.0: one datagram per read
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        sock.bind((host, port))
        if peer is not None:
            sock.connect(peer)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
