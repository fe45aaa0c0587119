"""The asyncio driver of the sleeve: TUN -> UDP here, UDP -> TUN in overlay/receive.py, plus
the heartbeat timer and the links (a connected send socket per peer endpoint).

Hot-path rules: preallocated buffers, ``loop.add_reader`` and drain until EAGAIN (never
asyncio's DatagramProtocol, which allocates per datagram), header and packet gathered by
``sendmsg`` (nothing copied), small packets batched per peer into one datagram per drain,
nothing logged above DEBUG. Every failure is counted and the loop goes on.

Super-packets larger than one underlay packet go as a train of DATA_CHUNK frames (layout in
overlay/frame.py), built in place around the TUN read and handed over as one buffer in one
``sendmsg`` with ``UDP_SEGMENT`` (the kernel carries them as one GSO unit; the receiver reads
them coalesced with ``UDP_GRO``). Measured in this lab, that moves 64 KB datagrams ~8x faster
than letting the kernel IP-fragment one big datagram, which stays as the fallback when GSO is
refused.
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

from overlay import frame
from overlay.frame import (
    CHUNK_FRAME,
    CHUNK_OVERHEAD,
    HEADER,
    HEADER_SIZE,
    RECORD,
    RECORD_SIZE,
    VNET_HEADER_SIZE,
    MessageType,
)
from overlay.receive import (
    DRAIN_BUDGET,
    IP,
    IPV4_DST,
    TRAIN_LENGTH,
    VNET,
    Buffer,
    Receiver,
    failure,
)  # fmt: skip
from overlay.sleeve import Address, PeerEvent, PeerState, Sleeve
from overlay.udp import SOL_UDP, UDP_SEGMENT

log = logging.getLogger("weave-py.sleeve")
Cmsg = tuple[int, int, bytes]

TUN_BUFFER = RECORD_SIZE + 65536 + VNET_HEADER_SIZE
SMALL_PACKET = 512  # packets up to this size are batched per peer
MAX_GSO_BYTES = 65000  # payload of one UDP_SEGMENT send
TRAIN_TOTAL = struct.Struct("!I")
ZERO_VNET = bytes(VNET_HEADER_SIZE)
DF = 0x40  # in the high byte of the IPv4 flags/fragment field
DATA = int(MessageType.DATA)  # a plain int: hot path


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
        # The TUN buffer: a read lands at ``body_at`` (after the 2-byte record length); the
        # space before it takes a train's first chunk header and trailer (see frame.py), so
        # a train goes out as one contiguous view. Whole buffer as 8-byte words for the
        # chunk header columns.
        self.max_chunks = min(frame.max_chunks(self.stride), -(-frame.MAX_BODY // self.chunk_data))
        self.body_at = CHUNK_OVERHEAD * self.max_chunks
        backing = bytearray(self.body_at + (TUN_BUFFER + 7 & ~7))
        self._tx_view = memoryview(backing)
        self._tx_words = self._tx_view.cast("Q")
        self._tun_buf = self._tun_view = self._tx_view[self.body_at :]
        self._tun_read = (self._tun_view[RECORD_SIZE:],)
        self.receiver = Receiver(sleeve, tun_fd, sock, self._send)
        self._header = bytearray(HEADER_SIZE)
        self._trains: dict[int, list[memoryview]] = {}  # chunk header columns per peer
        self._gso_cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", self.stride))]
        self._wake = asyncio.Event()
        # Links: a send-only socket connected to each peer endpoint that data goes to (see
        # udp.open_udp); control datagrams and everything received use the main socket. The
        # main socket stands in without ``connect`` or when a link cannot be opened.
        self._connect = connect
        self._links: dict[Address, socket.socket] = {}
        self._endpoints: set[Address] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; readers are removed on the way out."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tun_fd, self._on_tun)
        loop.add_reader(self.sock.fileno(), self._on_udp)
        try:
            while True:
                now = time.monotonic()
                self._sync_links({peer.send_to for peer in self.sleeve.peers.values()})
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
            self._sync_links(set())

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
        else:
            self._send_one(peer, length)

    def _send_batch(self, peer: PeerState, batch: bytearray) -> None:
        """Send and empty a peer's batch (its header is rewritten for the current length)."""
        frame.encode_header(
            batch, MessageType.DATA, len(batch) - HEADER_SIZE, self.sleeve.local_id, peer.peer_id
        )
        self._send((batch,), peer.send_to, peer)
        del batch[HEADER_SIZE:]

    def _send_chunks(self, peer: PeerState, total: int) -> None:
        """The DATA body at ``body_at`` as a train (frame.py): the 32 body bytes under each
        chunk header k >= 1 are moved to the trailer and the prebuilt headers written, as
        four 8-byte columns each; then one GSO ``sendmsg`` of the whole view per
        ``chunks_per_send`` chunks. A body too large for a train goes as one datagram."""
        step, stride = self.chunk_data, self.stride
        count = -(-total // step)
        if count > self.max_chunks:
            self._send_one(peer, total)
            return
        at = self.body_at - CHUNK_OVERHEAD * count  # where the train starts
        words, first, width = self._tx_words, at >> 3, stride >> 3
        stop = first + count * width
        for j in range(4):  # covered body words -> trailer piece k at [32k : 32k + 32]
            words[first + 4 + j : first + 4 * count : 4] = words[first + width + j : stop : width]
        columns = self._trains.get(peer.peer_id) or self._train(peer)
        for j in range(4):
            words[first + j : stop : width] = columns[j][:count]
        view = self._tx_view
        TRAIN_TOTAL.pack_into(view, at + HEADER_SIZE + 4, total)
        end = self.body_at + total
        last = at + (count - 1) * stride
        TRAIN_LENGTH.pack_into(view, last + 4, end - last - HEADER_SIZE)
        if count <= self.chunks_per_send:
            self._send_gso(view[at:end], peer)
            return
        group = self.chunks_per_send * stride
        for start in range(at, end, group):
            if not self._send_gso(view[start : min(end, start + group)], peer):
                break

    def _train(self, peer: PeerState) -> list[memoryview]:
        """The chunk headers of a train to ``peer`` as four columns of 8-byte words (column j
        holds word j of chunk header 0, 1, ...); the first chunk's total and the last one's
        length are written per train."""
        step, count = self.chunk_data, self.max_chunks
        heads = bytearray(CHUNK_OVERHEAD * count)
        for k in range(count):
            CHUNK_FRAME.pack_into(
                heads, k * CHUNK_OVERHEAD, frame.VERSION, MessageType.DATA_CHUNK, 0,
                frame.DEFAULT_HOPS, self.stride - HEADER_SIZE, self.sleeve.local_id,
                peer.peer_id, k * step, 0,
            )  # fmt: skip
        words = memoryview(heads).cast("Q")
        columns = self._trains[peer.peer_id] = [words[j::4] for j in range(4)]
        return columns

    def _send_one(self, peer: PeerState, length: int) -> None:
        """The record at the start of the TUN buffer as one DATA datagram (the kernel
        IP-fragments it when it exceeds the underlay MTU)."""
        header = self._header
        HEADER.pack_into(
            header, 0, frame.VERSION, DATA, 0, frame.DEFAULT_HOPS,
            length, self.sleeve.local_id, peer.peer_id,
        )  # fmt: skip
        self._send((header, self._tun_view[:length]), peer.send_to, peer)

    def _send_gso(self, train: memoryview, peer: PeerState) -> bool:
        try:
            self._sendmsg((train,), self._gso_cmsg, peer.send_to)
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
                self._sendmsg(parts, (), addr)
        except BlockingIOError:
            self.sleeve.drop("send_buffer_full", peer)
        except OSError as exc:
            self.sleeve.drop(failure("send_", exc), peer)

    def _sendmsg(self, parts: Sequence[Buffer], cmsgs: Sequence[Cmsg], addr: Address) -> None:
        """Data for a peer: by the link to ``addr`` (no address to parse, no route lookup),
        else by the main socket; OSError is the caller's to count."""
        link = self._links.get(addr) or self._open_link(addr)
        if link is self.sock:
            link.sendmsg(parts, cmsgs, 0, addr)
        else:
            link.sendmsg(parts, cmsgs)

    def _open_link(self, addr: Address) -> socket.socket:
        if self._connect is None or addr not in self._endpoints:
            return self.sock  # not a current peer endpoint: not kept
        try:
            link = self._connect(addr)
        except OSError as exc:
            log.warning("link to %s:%d: %s; sending by the main socket", *addr, exc)
            link = self.sock
        self._links[addr] = link
        return link

    def _sync_links(self, endpoints: set[Address]) -> None:
        """Keep links to ``endpoints`` only (the peers' send_to; links open on first send)."""
        self._endpoints = endpoints
        for addr in [a for a in self._links if a not in self._endpoints]:
            link = self._links.pop(addr)
            if link is not self.sock:
                link.close()

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
