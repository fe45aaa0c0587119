"""The UDP -> TUN half of the sleeve driver: read datagrams and carry out the forwarding core's
verdict on each (overlay/forwarding.py): write its packets to the TUN, send it on to the next
hop, or nothing (dropped and counted, or taken in by the core).

A GRO read holding one whole super-packet's train is recognised by overlay/train.py with a few
compares and written with one ``writev`` of views of the receive buffer (nothing copied);
anything else takes the general path, datagram by datagram. Every failure is counted and the
loop goes on.

With a keyring (overlay/seal.py) only sealed frames are taken in: one for this node is opened
(authenticated, replay-checked) before the forwarding core sees its plaintext, one for another
node is relayed by its header alone, and a plain one is dropped. No train fast path then (a
sealed super-packet is one datagram). Those refusals are counted by reason like every drop,
and by source host for the driver's periodic summary (Forwarding.refuse), never a line per
datagram.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable

from overlay import frame
from overlay.forwarding import RELAY, SLOW, WRITE, Forwarding
from overlay.frame import (
    CHUNK_OVERHEAD,
    DATA_CHUNK,
    FLAG_AEAD,
    HEADER,
    HEADER_SIZE,
    HOPS_AT,
    MAX_BODY,
    TYPE_AT,
    VERSION,
    Buffer,
    DecodeError,
    MessageType,
)
from overlay.peer import PeerState
from overlay.reassembly import Reassembler
from overlay.seal import AEAD_EXTRA, DESTINATION, DESTINATION_AT, FLAGS_AT, Keyring
from overlay.train import TrainCheck
from overlay.tun import TunDevice
from overlay.udp import SOL_UDP, UDP_GRO, Address, UdpSocket

Send = Callable[[tuple[Buffer, ...], Address, PeerState | None], None]

UDP_BUFFER = 65536 + 4096
CMSG_SPACE = socket.CMSG_SPACE(4)
DRAIN_BUDGET = 128  # datagrams or packets per wake-up before yielding to the other direction
GRO_SIZE = struct.Struct("=i")
DATA = int(MessageType.DATA)


def failure(prefix: str, exc: OSError) -> str:
    """The drop label for a failed call: ``prefix`` + the errno's name."""
    return prefix + errno.errorcode.get(exc.errno or 0, "error")


class Receiver:
    """Drains ``sock`` into one preallocated buffer; ``send`` is how a relayed frame goes on,
    ``keyring`` (when there is a secret) opens what is sealed for us."""

    def __init__(
        self,
        forwarding: Forwarding,
        tun: TunDevice,
        sock: UdpSocket,
        send: Send,
        keyring: Keyring | None = None,
    ) -> None:
        self.forwarding = forwarding
        self.tun = tun
        self.sock = sock
        self.send = send
        self.keyring = keyring
        self._buf = bytearray(UDP_BUFFER)
        self._view = memoryview(self._buf)
        self._into = [self._buf]
        flags = 0 if keyring is None else FLAG_AEAD  # the trains taken in
        self.trains = TrainCheck(self._buf, forwarding.local_id, flags)
        self.sealed = Reassembler(drops=forwarding.drops, headroom=HEADER_SIZE)

    def drain(self) -> None:
        """Read until EAGAIN or the budget is spent."""
        view, recv, into, receive = self._view, self.sock.recvmsg_into, self._into, self._receive
        for _ in range(DRAIN_BUDGET):
            try:
                n, ancdata, _, addr = recv(into, CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                self.forwarding.drop(failure("recv_", exc))
                break
            stride = n
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(data) >= GRO_SIZE.size:
                    stride = GRO_SIZE.unpack_from(data)[0] or n
            if stride >= n:
                receive(view[:n], addr)
                continue
            at = 0  # several datagrams coalesced by UDP_GRO, each ``stride`` long
            while at < n:
                if self.keyring is None:
                    done = self._train(at, n, stride, addr[0])
                else:
                    done = self._sealed_train(at, n, stride, addr)
                if done == at:
                    done = min(n, at + stride)
                    receive(view[at:done], addr)
                at = done

    def _train(self, start: int, n: int, stride: int, host: str) -> int:
        """The fast path for a whole train at ``start``: written by one writev. Returns where
        it stopped; ``start`` when the general path must take over."""
        trains = self.trains
        found = trains.intact(start, n, stride)
        if found is None:
            return start
        source, total, count, end = found
        fw = self.forwarding
        verdict = fw.train(self._buf, start + CHUNK_OVERHEAD, total, source, host)
        if verdict == WRITE:
            try:
                self.tun.writev(trains.parts(start, stride, count, end))
            except OSError as exc:
                fw.drop(failure("tun_write_", exc), fw.peer)
        elif verdict == SLOW:
            return start
        return end

    def _sealed_train(self, start: int, n: int, stride: int, addr: Address) -> int:
        """The fast path for a whole sealed train at ``start``: its frame gathered into one
        buffer, opened and taken in. Returns where it stopped; ``start`` when the general path
        must take over."""
        found = self.trains.intact(start, n, stride)
        if found is None:
            return start
        source, total, count, end = found
        if total < AEAD_EXTRA or total > MAX_BODY:
            self.forwarding.refuse("chunk", addr[0])
        elif self._sender(source, addr):
            assert self.keyring is not None
            sealed = b"".join(self.trains.body(start, stride, count, end))
            self.forwarding.paths["sealed_train"] += 1
            try:
                plain = self.keyring.open_train(
                    self._buf[start + HOPS_AT], source, self.forwarding.local_id, sealed
                )
            except DecodeError as exc:
                self.forwarding.refuse(exc.reason, addr[0])
                return end
            self._deliver(plain, addr)
        return end

    def _sender(self, source: int, addr: Address) -> bool:
        """Whether frames of peer ``source`` may come from ``addr`` (refused and counted if
        not), as the forwarding core decides for every plain frame."""
        peer = self.forwarding.peers.get(source)
        if peer is None:
            self.forwarding.refuse("unknown_peer", addr[0])
            return False
        if addr[0] not in peer.accept_from:
            self.forwarding.refuse("endpoint", addr[0], peer)
            return False
        return True

    def expire(self, now: float) -> None:
        """Forget sealed bodies whose chunks stopped coming (counted)."""
        self.sealed.expire(now)

    def _receive(self, data: memoryview, addr: Address) -> None:
        if self.keyring is not None:
            opened = self._open(data, addr)
            if opened is None:
                return
            data = opened
        self._deliver(data, addr)

    def _deliver(self, data: memoryview, addr: Address) -> None:
        """Carry out the forwarding core's verdict on the plain (or relayed sealed) frame
        ``data`` from ``addr``."""
        fw = self.forwarding
        verdict = fw.receive(data, addr, time.monotonic())
        if verdict == WRITE:
            write = self.tun.write
            for packet in fw.packets:
                try:
                    write(packet)
                except OSError as exc:
                    fw.drop(failure("tun_write_", exc), fw.peer)
        elif verdict == RELAY and fw.peer is not None:
            self.send((data,), fw.peer.send_to, fw.peer)

    def _open(self, data: memoryview, addr: Address) -> memoryview | None:
        """The frame the forwarding core may see: a sealed one for another node as it is (to
        relay), one for this node opened; None when rejected (counted)."""
        assert self.keyring is not None
        if (
            len(data) >= HEADER_SIZE
            and DESTINATION.unpack_from(data, DESTINATION_AT)[0] != self.forwarding.local_id
        ):
            if data[FLAGS_AT] & FLAG_AEAD:
                return data
            self.forwarding.refuse("plain", addr[0])
            return None
        try:
            if len(data) > TYPE_AT and data[TYPE_AT] == DATA_CHUNK:
                return self._sealed_chunk(data, addr)
            return self.keyring.open(data)
        except DecodeError as exc:
            self.forwarding.refuse(exc.reason, addr[0])
            return None

    def _sealed_chunk(self, data: memoryview, addr: Address) -> memoryview | None:
        """Take one chunk of a sealed train in; the opened frame once the train is whole.
        DecodeError when it or the whole is refused."""
        assert self.keyring is not None
        header = frame.decode_header(data, len(data))
        if not header.flags & FLAG_AEAD:
            raise DecodeError("plain")
        offset, total = frame.decode_chunk(data, header)
        if not self._sender(header.source, addr):
            return None
        now = time.monotonic()
        whole = self.sealed.add(header.source, offset, total, data[CHUNK_OVERHEAD:], now)
        if whole is None:
            return None
        if len(whole) < HEADER_SIZE + AEAD_EXTRA:
            raise DecodeError("chunk")
        HEADER.pack_into(whole, 0, VERSION, DATA, FLAG_AEAD, header.hops,
                         len(whole) - HEADER_SIZE - AEAD_EXTRA, header.source,
                         header.destination)  # fmt: skip
        self.forwarding.paths["sealed_reassembled"] += 1
        return self.keyring.open(memoryview(whole))
