"""The asyncio driver of the sleeve: TUN -> UDP here, UDP -> TUN in overlay/receive.py, plus
the heartbeat timer; data for peers leaves by their links (overlay/links.py).

Hot-path rules: preallocated buffers, ``loop.add_reader`` and drain until EAGAIN (never
asyncio's DatagramProtocol, which allocates per datagram), header and packet gathered by
``sendmsg`` (nothing copied), small packets batched per peer into one datagram per drain,
nothing logged above DEBUG. Every failure is counted and the loop goes on.

Super-packets larger than one underlay packet go as DATA_CHUNK frames in one ``sendmsg`` with
``UDP_SEGMENT`` (the kernel carries them as one GSO unit; the receiver reads them coalesced
with ``UDP_GRO``). Measured in this lab, that moves 64 KB datagrams ~8x faster than letting the
kernel IP-fragment one big datagram, which stays as the fallback when GSO is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from overlay import frame
from overlay.frame import (
    CHUNK_FRAME,
    CHUNK_OVERHEAD,
    HEADER,
    HEADER_SIZE,
    RECORD,
    RECORD_SIZE,
    VNET_HEADER_SIZE,
    Buffer,
    MessageType,
)
from overlay.links import Links
from overlay.receive import (
    DRAIN_BUDGET,
    IP,
    IPV4_DST,
    TRAIN_LENGTH,
    VNET,
    Receiver,
    failure,
)  # fmt: skip
from overlay.sleeve import Address, PeerEvent, PeerState, Sleeve
from overlay.udp import SOL_UDP, UDP_SEGMENT

log = logging.getLogger("weave-py.sleeve")

TUN_BUFFER = RECORD_SIZE + 65536 + VNET_HEADER_SIZE
SMALL_PACKET = 512  # packets up to this size are batched per peer
MAX_GSO_BYTES = 65000  # payload of one UDP_SEGMENT send
TRAIN_TOTAL = struct.Struct("!I")
CHUNK_SIZE = frame.CHUNK.size
ZERO_VNET = bytes(VNET_HEADER_SIZE)
DF = 0x40  # in the high byte of the IPv4 flags/fragment field
DATA = int(MessageType.DATA)  # a plain int: hot path


@dataclass
class _Train:
    """A peer's prebuilt chunk headers and the header/data views to send a train from."""

    heads: bytearray
    parts: list[memoryview]  # header 0, data 0, header 1, data 1, ... for the largest train
    by_count: dict[int, list[memoryview]] = field(default_factory=dict)

    def parts_for(self, count: int) -> list[memoryview]:
        """The views of a ``count``-chunk train (the caller sets the last, short data view)."""
        found = self.by_count.get(count)
        if found is None:
            found = self.by_count[count] = self.parts[: 2 * count]
        return found


class Datapath:
    def __init__(
        self,
        sleeve: Sleeve,
        tun_fd: int,
        sock: socket.socket,
        underlay_mtu: int,
        on_event: Callable[[PeerEvent], None] | None = None,
        udp_gso: bool = True,
        connect: Callable[[Address], socket.socket] | None = None,
    ) -> None:
        self.sleeve = sleeve
        self.tun_fd = tun_fd
        self.sock = sock
        self.segment = underlay_mtu - 28  # UDP payload that fits one underlay packet
        # Chunks are a multiple of 8 long, so a receiver checks a train's headers as 8-byte words.
        self.stride = self.segment & ~7
        self.batch_limit = self.segment - HEADER_SIZE
        self.chunk_data = self.stride - CHUNK_OVERHEAD
        self.chunks_per_send = MAX_GSO_BYTES // self.stride
        self.udp_gso = udp_gso
        self.on_event = on_event or (lambda event: None)
        self._tun_buf = bytearray(TUN_BUFFER)
        self._tun_view = memoryview(self._tun_buf)
        self._tun_read = (self._tun_view[RECORD_SIZE:],)
        self.receiver = Receiver(sleeve, tun_fd, sock, self._send)
        self._header = bytearray(HEADER_SIZE)
        self._trains: dict[int, _Train] = {}  # per peer id
        self._gso_cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", self.stride))]
        self._wake = asyncio.Event()
        self.links = Links(sock, connect)  # data for peers; control goes by ``sock``

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; readers are removed on the way out."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tun_fd, self._on_tun)
        loop.add_reader(self.sock.fileno(), self._on_udp)
        try:
            while True:
                now = time.monotonic()
                self.links.sync({peer.send_to for peer in self.sleeve.peers.values()})
                for gone in [p for p in self._trains if p not in self.sleeve.peers]:
                    del self._trains[gone]  # prebuilt chunk headers of departed peers
                self.sleeve.handle_timer(now)
                self._flush_control()
                deadline = self.sleeve.get_timer()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            loop.remove_reader(self.tun_fd)
            loop.remove_reader(self.sock.fileno())
            self.links.sync(set())

    def poke(self) -> None:
        """Re-arm the timer after the peer set changed."""
        self._wake.set()

    def _flush_control(self) -> None:
        for data, addr in self.sleeve.datagrams_to_send():
            self._send((data,), addr, None)
        for event in self.sleeve.events():
            self.on_event(event)

    # -- TUN -> UDP --------------------------------------------------------------------------

    def _on_tun(self) -> None:
        try:
            self._drain_tun()
        except Exception:  # a bug must cost packets, never the reader
            self.sleeve.drop("internal_error")
            log.exception("drain tun: internal error")

    def _on_udp(self) -> None:
        try:
            self.receiver.drain()
            self._flush_control()
        except Exception:
            self.sleeve.drop("internal_error")
            log.exception("drain udp: internal error")

    def _drain_tun(self) -> None:
        batches: dict[int, tuple[PeerState, bytearray]] = {}
        readv, fd, into = os.readv, self.tun_fd, self._tun_read
        for _ in range(DRAIN_BUDGET):
            try:
                n = readv(fd, into)
            except BlockingIOError:
                break
            except OSError as exc:
                self.sleeve.drop(failure("tun_read_", exc))
                break
            peer = self._outbound_peer(n)
            if peer is not None:
                self._forward(peer, n, batches)
        for peer, batch in batches.values():
            if len(batch) > HEADER_SIZE:
                self._send_batch(peer, batch)

    def _outbound_peer(self, n: int) -> PeerState | None:
        """The peer for the ``n``-byte read in the TUN buffer; None when it is dropped."""
        sleeve, buf = self.sleeve, self._tun_buf
        if n < VNET_HEADER_SIZE + 20 or buf[IP] >> 4 != 4:
            sleeve.drop("tun_not_ipv4")
            return None
        peer = sleeve.peer_for(IPV4_DST.unpack_from(buf, IP + 16)[0])
        if peer is None:
            sleeve.drop("no_route")
            return None
        size = n - VNET_HEADER_SIZE
        if size > peer.mtu and buf[VNET + 1] == 0 and buf[IP + 6] & DF:
            self._too_big(self._tun_view[IP : VNET + n], peer)  # DF, no GSO: it cannot fit
            return None
        if size > frame.MAX_PACKET:
            sleeve.drop("too_large", peer)
            return None
        return peer

    def _forward(
        self, peer: PeerState, n: int, batches: dict[int, tuple[PeerState, bytearray]]
    ) -> None:
        """Frame the read as one record: batched if small, else alone or as a GSO train."""
        size = n - VNET_HEADER_SIZE
        counters = peer.counters
        counters.tx_packets += 1
        counters.tx_bytes += size
        RECORD.pack_into(self._tun_buf, 0, size)
        length = RECORD_SIZE + n
        entry = batches.get(peer.peer_id) if batches else None
        if size <= SMALL_PACKET:
            if entry is None:
                entry = batches[peer.peer_id] = (peer, bytearray(HEADER_SIZE))
            batch = entry[1]
            if len(batch) + length > self.segment:
                self._send_batch(peer, batch)
            batch += self._tun_view[:length]
            return
        if entry is not None and len(entry[1]) > HEADER_SIZE:
            self._send_batch(peer, entry[1])  # keep the peer's packets in order
        if length > self.batch_limit and self.udp_gso:
            self._send_chunks(peer, length)
            return
        header = self._header
        HEADER.pack_into(
            header, 0, frame.VERSION, DATA, 0, frame.DEFAULT_HOPS,
            length, self.sleeve.local_id, peer.peer_id,
        )  # fmt: skip
        self._send((header, self._tun_view[:length]), peer.send_to, peer)

    def _send_batch(self, peer: PeerState, batch: bytearray) -> None:
        """Send and empty a peer's batch (its header is rewritten for the current length)."""
        frame.encode_header(
            batch, MessageType.DATA, len(batch) - HEADER_SIZE, self.sleeve.local_id, peer.peer_id
        )
        self._send((batch,), peer.send_to, peer)
        del batch[HEADER_SIZE:]

    def _send_chunks(self, peer: PeerState, total: int) -> None:
        """The DATA body at the start of the TUN buffer as a train of DATA_CHUNK frames: one
        GSO ``sendmsg`` per ``chunks_per_send`` chunks, headers prebuilt per peer (only the
        first chunk's total and the last chunk's length change), data sliced in place."""
        train = self._trains.get(peer.peer_id) or self._train(peer)
        heads = train.heads
        step = self.chunk_data
        count = -(-total // step)
        last = total - (count - 1) * step
        TRAIN_TOTAL.pack_into(heads, HEADER_SIZE + 4, total)
        TRAIN_LENGTH.pack_into(heads, (count - 1) * CHUNK_OVERHEAD + 4, CHUNK_SIZE + last)
        parts = train.parts_for(count)
        parts[-1] = self._tun_view[(count - 1) * step : total]
        if count <= self.chunks_per_send:
            self._send_gso(parts, peer)
        else:
            group = 2 * self.chunks_per_send
            for at in range(0, len(parts), group):
                if not self._send_gso(parts[at : at + group], peer):
                    break
        TRAIN_LENGTH.pack_into(heads, (count - 1) * CHUNK_OVERHEAD + 4, CHUNK_SIZE + step)

    def _train(self, peer: PeerState) -> _Train:
        """Prebuilt chunk headers for ``peer`` and the header/data views to send from."""
        step = self.chunk_data
        count = -(-frame.MAX_BODY // step)
        heads = bytearray(CHUNK_OVERHEAD * count)
        parts: list[memoryview] = []
        for k in range(count):
            at = k * CHUNK_OVERHEAD
            CHUNK_FRAME.pack_into(
                heads, at, frame.VERSION, MessageType.DATA_CHUNK, 0, frame.DEFAULT_HOPS,
                frame.CHUNK.size + step, self.sleeve.local_id, peer.peer_id, k * step, 0,
            )  # fmt: skip
            parts += (memoryview(heads)[at : at + CHUNK_OVERHEAD],
                      self._tun_view[k * step : (k + 1) * step])  # fmt: skip
        found = self._trains[peer.peer_id] = _Train(heads, parts)
        return found

    def _send_gso(self, parts: list[memoryview], peer: PeerState) -> bool:
        try:
            self.links.sendmsg(parts, self._gso_cmsg, peer.send_to)
        except BlockingIOError:
            self.sleeve.drop("send_buffer_full", peer)
            return False
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                # The egress device cannot segment UDP: fall back to kernel fragmentation.
                self.udp_gso = False
                log.warning("disable udp gso: sendmsg refused it (%s)", exc)
            self.sleeve.drop(failure("send_", exc), peer)
            return False
        return True

    def _send(self, parts: tuple[Buffer, ...], addr: Address, peer: PeerState | None) -> None:
        try:
            if peer is None:
                self.sock.sendmsg(parts, (), 0, addr)  # control: replies come back to its port
            else:
                self.links.sendmsg(parts, (), addr)
        except BlockingIOError:
            self.sleeve.drop("send_buffer_full", peer)
        except OSError as exc:
            self.sleeve.drop(failure("send_", exc), peer)

    def _too_big(self, packet: memoryview, peer: PeerState) -> None:
        reply = self.sleeve.too_big(packet, peer.mtu)
        self.sleeve.drop("too_big", peer)
        if reply is not None:
            self._write_tun((ZERO_VNET, reply), None)

    def _write_tun(self, parts: Sequence[bytes | memoryview], peer: PeerState | None) -> bool:
        try:
            os.writev(self.tun_fd, parts)
        except OSError as exc:
            self.sleeve.drop(failure("tun_write_", exc), peer)
            return False
        return True
