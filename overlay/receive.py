"""The UDP -> TUN half of the sleeve driver: read datagrams, deliver what is ours to the TUN,
relay what is for another peer, hand control frames to the core.

A GRO read holding one whole super-packet's train is checked with a few compares and written
with one ``writev`` of cached slices of the receive buffer (nothing copied); anything else
takes the general path, frame by frame, chunks through the reassembler. Every failure is
counted and the loop goes on.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import time
from collections.abc import Callable

from overlay import frame
from overlay.frame import (
    CHUNK,
    CHUNK_FRAME,
    CHUNK_OVERHEAD,
    HEADER_SIZE,
    RECORD_SIZE,
    VNET_HEADER_SIZE,
    Buffer,
    MessageType,
)
from overlay.sleeve import Address, PeerState, Sleeve
from overlay.udp import SOL_UDP, UDP_GRO

Send = Callable[[tuple[Buffer, ...], Address, PeerState | None], None]

UDP_BUFFER = 65536 + 4096
CMSG_SPACE = socket.CMSG_SPACE(4)
DRAIN_BUDGET = 128  # datagrams or packets per wake-up before yielding to the other direction
IPV4_DST = struct.Struct("!I")
GRO_SIZE = struct.Struct("=i")
TRAIN_LENGTH = struct.Struct("!I")
DATA_CHUNK = int(MessageType.DATA_CHUNK)  # a plain int: hot path
VNET = RECORD_SIZE  # where a record's virtio-net header starts
IP = VNET + VNET_HEADER_SIZE  # where its IP packet starts


def failure(prefix: str, exc: OSError) -> str:
    """The drop label for a failed call: ``prefix`` + the errno's name."""
    return prefix + errno.errorcode.get(exc.errno or 0, "error")


class Receiver:
    def __init__(self, sleeve: Sleeve, tun_fd: int, sock: socket.socket, send: Send) -> None:
        self.sleeve = sleeve
        self.tun_fd = tun_fd
        self.sock = sock
        self.send = send  # how a relayed frame goes on to its next hop
        self._udp_buf = bytearray(UDP_BUFFER)
        self._udp_view = memoryview(self._udp_buf)
        self._udp_into = [self._udp_buf]
        self._udp_words = self._udp_view.cast("Q")  # 8-byte words, for train header checks
        self._slices: dict[int, list[memoryview]] = {}
        self._offsets: dict[int, memoryview] = {}  # per chunk data size
        self._columns: dict[int, tuple[memoryview, memoryview]] = {}  # per first header word
        self._relay_source: Address | None = None

    def drain(self) -> None:
        """Read until EAGAIN or the budget is spent."""
        view, recv, into = self._udp_view, self.sock.recvmsg_into, self._udp_into
        for _ in range(DRAIN_BUDGET):
            try:
                n, ancdata, _, addr = recv(into, CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                self.sleeve.drop(failure("recv_", exc))
                break
            stride = n
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                    stride = GRO_SIZE.unpack_from(data)[0] or n
            if stride >= n:
                self._receive(view[:n], addr)
                continue
            at = 0  # several datagrams coalesced by UDP_GRO, each ``stride`` long
            while at < n:
                done = self._receive_train(at, n, stride)
                if done == at:
                    done = min(n, at + stride)
                    self._receive(view[at:done], addr)
                at = done

    def _receive_train(self, start: int, n: int, stride: int) -> int:
        """Fast path for a whole train (one super-packet's chunks, in order) within one GRO
        read: checked by ``_intact``, written to the TUN by one writev of cached slices of the
        receive buffer, nothing copied. Returns where it stopped; ``start`` when the general
        path must take over (which also handles strides not a multiple of 8)."""
        found = self._intact(start, n, stride)
        if found is None:
            return start
        source, total, count, end = found
        buf, sleeve = self._udp_buf, self.sleeve
        peer = sleeve.peers.get(source)
        body = start + CHUNK_OVERHEAD  # the record: length, virtio-net header, IP packet
        if (
            peer is None
            or (buf[body] << 8 | buf[body + 1]) != total - RECORD_SIZE - VNET_HEADER_SIZE
        ):
            return start  # not a single record from a known peer: the general path decides
        if (
            total < RECORD_SIZE + VNET_HEADER_SIZE + 20
            or buf[body + IP] >> 4 != 4
            or not sleeve.is_local(IPV4_DST.unpack_from(buf, body + IP + 16)[0])
        ):
            sleeve.drop("not_local", peer)
            return end
        at, last = start // stride, start + (count - 1) * stride  # first chunk, last chunk
        parts = (self._slices.get(stride) or self._slices_of(stride))[at : at + count]
        parts[-1] = self._udp_view[last + CHUNK_OVERHEAD : end]
        parts[0] = self._udp_view[body + RECORD_SIZE : min(end, start + stride)]
        sleeve.paths["gro_train"] += 1
        try:
            os.writev(self.tun_fd, parts)
        except OSError as exc:
            sleeve.drop(failure("tun_write_", exc), peer)
        else:
            peer.counters.rx_packets += 1
            peer.counters.rx_bytes += total - RECORD_SIZE - VNET_HEADER_SIZE
        return end

    def _intact(self, start: int, n: int, stride: int) -> tuple[int, int, int, int] | None:
        """(source, total, chunk count, end) of the train at ``start`` if its chunk headers
        say it is whole and in order within this read, else None. Datagrams coalesced by GRO
        share one 5-tuple, so after a full check of the first header the others need only show
        the same first 8 bytes (version, type, flags, hops, length; the last chunk's length is
        its own) and the next offset with no total: two compares of 8-byte columns."""
        buf = self._udp_buf
        if buf[start + 1] != DATA_CHUNK or stride & 7 or n - start <= CHUNK_OVERHEAD:
            return None
        version, _kind, flags, _, length, source, dest, offset, total = CHUNK_FRAME.unpack_from(
            buf, start
        )
        if (
            version != frame.VERSION or flags or offset or dest != self.sleeve.local_id
            or length != stride - HEADER_SIZE or total <= 0
        ):  # fmt: skip
            return None
        step = stride - CHUNK_OVERHEAD
        count = -(-total // step)
        stop = start + (count - 1) * stride  # where the last chunk starts
        end = stop + CHUNK_OVERHEAD + total - (count - 1) * step
        if end > n or (end < n and end != stop + stride):
            return None  # continues in a later read, or a short chunk inside a read
        words, width, first = self._udp_words, stride >> 3, start >> 3
        same, offsets = self._columns.get(words[first]) or self._columns_of(words[first], step)
        if (
            count > 2
            and words[first + width : first + (count - 1) * width : width] != same[: count - 2]
        ):
            return None
        if (
            words[first + width + 3 : first + count * width : width] != offsets[1:count]
            or buf[stop : stop + 4] != buf[start : start + 4]
            or TRAIN_LENGTH.unpack_from(buf, stop + 4)[0] != end - stop - HEADER_SIZE
        ):
            return None
        return source, total, count, end

    def _slices_of(self, stride: int) -> list[memoryview]:
        """The data part of every ``stride``-long datagram in the receive buffer."""
        found = self._slices.get(stride)
        if found is None:
            view = self._udp_view
            found = [view[at + CHUNK_OVERHEAD : at + stride]
                     for at in range(0, UDP_BUFFER - stride + 1, stride)]  # fmt: skip
            self._slices[stride] = found
        return found

    def _columns_of(self, first: int, step: int) -> tuple[memoryview, memoryview]:
        """What the chunk headers of a train must hold, as 8-byte words (compared as words
        with the received ones, no bytes copied): the first word of chunks 1.. (the same as
        chunk 0's ``first``) and the offset/total word of chunk k at [k]."""
        count = -(-frame.MAX_BODY // step) + 1
        offsets = self._offsets.get(step)
        if offsets is None:
            packed = b"".join(CHUNK.pack(k * step, 0) for k in range(count))
            offsets = self._offsets[step] = memoryview(packed).cast("Q")
        same = memoryview(array.array("Q", [first]) * count)
        if len(self._columns) >= 64:  # one per first word seen (hops, stride): a few
            self._columns.clear()
        self._columns[first] = (same, offsets)
        return same, offsets

    def _receive(self, data: memoryview, addr: tuple[str, int]) -> None:
        sleeve = self.sleeve
        self._relay_source = addr
        try:
            header = frame.decode_header(data, len(data))
        except frame.DecodeError as exc:
            sleeve.drop(exc.reason)
            return
        if header.destination != sleeve.local_id:
            self._relay(data, header)
            return
        if header.type not in (MessageType.DATA, MessageType.DATA_CHUNK):
            sleeve.receive_control(data, header, addr, time.monotonic())
            return
        peer = sleeve.peers.get(header.source)
        if peer is None:
            sleeve.drop("unknown_peer")
            return
        if header.type == MessageType.DATA:
            self._deliver(data, HEADER_SIZE, len(data), peer)
            return
        try:
            offset, total = frame.decode_chunk(data, header)
        except frame.DecodeError as exc:
            sleeve.drop(exc.reason, peer)
            return
        piece = data[HEADER_SIZE + frame.CHUNK.size :]
        body = sleeve.reassembler.add(header.source, offset, total, piece, time.monotonic())
        if body is not None:
            sleeve.paths["reassembled"] += 1
            self._deliver(memoryview(body), 0, len(body), peer)

    def _relay(self, data: memoryview, header: frame.Header) -> None:
        """Forward a frame for another peer, unchanged but for one hop less, to its next hop."""
        target = self.sleeve.peers.get(header.destination)
        if target is None:
            self.sleeve.drop("wrong_destination")
            return
        # Data comes from a peer's link (its own port), so a loop shows in the host alone.
        source = self._relay_source
        if header.hops == 0 or (source is not None and target.send_to[0] == source[0]):
            self.sleeve.drop("relay_loop", target)
            return
        data[3] = header.hops - 1
        target.counters.relayed += 1
        self.send((data,), target.send_to, target)

    def _deliver(self, data: memoryview, start: int, end: int, peer: PeerState) -> None:
        """Write each record of a DATA body to the TUN (IPv4 for a local block only)."""
        sleeve, counters, write = self.sleeve, peer.counters, os.write
        pos = start
        try:
            while pos < end:
                stop = frame.record_end(data, pos, end)
                ip = pos + RECORD_SIZE + VNET_HEADER_SIZE
                if (
                    stop - ip < 20
                    or data[ip] >> 4 != 4
                    or not sleeve.is_local(IPV4_DST.unpack_from(data, ip + 16)[0])
                ):
                    sleeve.drop("not_local", peer)
                else:
                    try:
                        write(self.tun_fd, data[pos + RECORD_SIZE : stop])
                    except OSError as exc:
                        sleeve.drop(failure("tun_write_", exc), peer)
                    else:
                        counters.rx_packets += 1
                        counters.rx_bytes += stop - ip
                pos = stop
        except frame.DecodeError as exc:
            sleeve.drop(exc.reason, peer)
