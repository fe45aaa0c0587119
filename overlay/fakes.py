"""In-memory stand-ins for the TUN device and the UDP sockets (overlay/tun.py TunDevice,
overlay/udp.py UdpSocket), so tests drive the sleeve's drivers without a kernel.

- FakeTun: packets the test injects are read one per ``readv``, as from a TUN; what the driver
  writes is kept, one packet per write.
- FakeUdp sockets on a FakeUnderlay: a send reaches the socket bound at the destination (or is
  lost, counted); a GSO send (UDP_SEGMENT) arrives as one coalesced read with its GRO segment
  size, as the kernel delivers it to a socket with UDP_GRO on; reads say where they came from.

Each has a real descriptor (an eventfd) that is readable while something waits to be read, so
the drivers' event-loop readers work with them too. Writes and sends can be made to fail.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from overlay.frame import Buffer
from overlay.udp import SOL_UDP, UDP_GRO, UDP_SEGMENT, Address, Cmsg

GRO_SIZE = struct.Struct("=i")
SEGMENT_SIZE = struct.Struct("=H")
FIRST_EPHEMERAL_PORT = 40000


class _Readable:
    """An eventfd that is readable exactly while its owner has something to read."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def set(self) -> None:
        """Readable from now on."""
        os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        """Not readable any more."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)

    def close(self) -> None:
        """Release the eventfd."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _scatter(data: bytes, buffers: Iterable[bytearray | memoryview]) -> int:
    """Copy ``data`` into ``buffers`` in order, as readv does; the bytes copied."""
    done = 0
    for buf in buffers:
        piece = data[done : done + len(buf)]
        buf[: len(piece)] = piece
        done += len(piece)
        if done == len(data):
            break
    return done


class FakeTun:
    """A TUN device in memory: ``inject`` is a packet the kernel routed into it, ``written``
    holds what the driver wrote (``take`` empties it); ``fail`` makes writes raise."""

    def __init__(self) -> None:
        self.inbox: deque[bytes] = deque()
        self.written: list[bytes] = []
        self.fail: OSError | None = None
        self._readable = _Readable()

    def inject(self, packet: bytes) -> None:
        """A packet the kernel routed into the device: the driver reads it next."""
        self.inbox.append(packet)
        self._readable.set()

    def take(self) -> list[bytes]:
        """The packets written since the last call."""
        out, self.written = self.written, []
        return out

    def fileno(self) -> int:
        """Readable while a packet waits."""
        return self._readable.fd

    def readv(self, buffers: Sequence[bytearray | memoryview], /) -> int:
        """The next injected packet, as a TUN read: BlockingIOError when there is none."""
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "no packet")
        packet = self.inbox.popleft()
        if not self.inbox:
            self._readable.clear()
        return _scatter(packet, buffers)

    def write(self, packet: Buffer, /) -> int:
        """Keep one written packet (or raise ``fail``)."""
        return self.writev((packet,))

    def writev(self, parts: Sequence[Buffer], /) -> int:
        """Keep one written packet gathered from ``parts`` (or raise ``fail``)."""
        if self.fail is not None:
            raise self.fail
        packet = b"".join(parts)
        self.written.append(packet)
        return len(packet)

    def close(self) -> None:
        """Release its descriptor."""
        self._readable.close()


class FakeUnderlay:
    """The network between FakeUdp sockets, keyed by their addresses."""

    def __init__(self) -> None:
        self.bound: dict[Address, FakeUdp] = {}
        self.lost = 0  # datagrams sent to an address nobody holds
        self._next_port = FIRST_EPHEMERAL_PORT

    def socket(self, address: Address, peer: Address | None = None) -> FakeUdp:
        """A socket bound at ``address`` (port 0: an ephemeral one), connected to ``peer``."""
        if address[1] == 0:
            address = (address[0], self._next_port)
            self._next_port += 1
        if address in self.bound:
            raise OSError(errno.EADDRINUSE, f"{address} is in use")
        sock = self.bound[address] = FakeUdp(self, address, peer)
        return sock

    def connector(self, host: str) -> Callable[[Address], FakeUdp]:
        """What a Datapath's ``connect`` does on ``host``: a link from an ephemeral port."""
        return lambda peer: self.socket((host, 0), peer)

    def deliver(self, payload: bytes, segment: int | None, source: Address, to: Address) -> None:
        """Hand a send to the socket bound at ``to``: a GSO send of several segments as one
        GRO read."""
        target = self.bound.get(to)
        if target is None:
            self.lost += 1
            return
        target.queue(payload, segment if segment and len(payload) > segment else None, source)


class FakeUdp:
    """A UDP socket on a FakeUnderlay. ``sent`` logs every send as (payload, GSO segment size,
    destination); ``queue`` puts a read in front of the driver directly; ``fail`` makes sends
    raise."""

    def __init__(self, underlay: FakeUnderlay, address: Address, peer: Address | None) -> None:
        self.underlay = underlay
        self.address = address
        self.peer = peer
        self.sent: list[tuple[bytes, int | None, Address]] = []
        self.inbox: deque[tuple[bytes, int | None, Address]] = deque()
        self.fail: OSError | None = None
        self._readable = _Readable()

    def queue(self, payload: bytes, segment: int | None = None, source: Address = ("", 0)) -> None:
        """A read of ``payload`` (coalesced from ``segment``-long datagrams) from ``source``."""
        self.inbox.append((payload, segment, source))
        self._readable.set()

    def take(self) -> list[tuple[bytes, int | None, Address]]:
        """The sends since the last call."""
        out, self.sent = self.sent, []
        return out

    def fileno(self) -> int:
        """Readable while a datagram waits; -1 once closed."""
        return self._readable.fd

    def sendmsg(
        self,
        buffers: Iterable[bytes | bytearray | memoryview],
        ancdata: Iterable[Cmsg] = (),
        flags: int = 0,
        address: Address | None = None,
        /,
    ) -> int:
        """Send to ``address`` (or the connected peer) over the underlay; UDP_SEGMENT is
        honoured as GSO."""
        if self._readable.fd < 0:
            raise OSError(errno.EBADF, "closed")
        if self.fail is not None:
            raise self.fail
        to = address or self.peer
        if to is None:
            raise OSError(errno.EDESTADDRREQ, "not connected and no address")
        segment = None
        for level, kind, data in ancdata:
            if (level, kind) == (SOL_UDP, UDP_SEGMENT):
                segment = SEGMENT_SIZE.unpack(data)[0]
        payload = b"".join(buffers)
        self.sent.append((payload, segment, to))
        self.underlay.deliver(payload, segment, self.address, to)
        return len(payload)

    def recvmsg_into(
        self, buffers: Iterable[bytearray | memoryview], ancbufsize: int = 0, flags: int = 0, /
    ) -> tuple[int, list[Cmsg], int, Any]:
        """The next read, with its UDP_GRO segment size when coalesced: BlockingIOError when
        there is none."""
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "no datagram")
        payload, segment, source = self.inbox.popleft()
        if not self.inbox:
            self._readable.clear()
        ancdata = [] if segment is None else [(SOL_UDP, UDP_GRO, GRO_SIZE.pack(segment))]
        return _scatter(payload, buffers), ancdata, 0, source

    def close(self) -> None:
        """Close it (``fileno`` is then -1, as a closed socket's); its address is free again."""
        if self.underlay.bound.get(self.address) is self:
            del self.underlay.bound[self.address]
        self._readable.close()
