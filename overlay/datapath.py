"""The asyncio driver of the sleeve: TUN <-> UDP, plus the heartbeat timer.

Hot-path rules: preallocated buffers, ``loop.add_reader`` and drain until EAGAIN (never
asyncio's DatagramProtocol, which allocates per datagram), one ``sendmsg`` per super-packet
(header and packet gathered, nothing copied), small packets batched per peer into one datagram
per drain, nothing logged above DEBUG. Every failure is counted and the loop goes on.
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
from collections.abc import Callable

from overlay import frame
from overlay.frame import HEADER, HEADER_SIZE, RECORD, RECORD_SIZE, VNET_HEADER_SIZE, MessageType
from overlay.sleeve import PeerEvent, PeerState, Sleeve

log = logging.getLogger("weave-py.sleeve")

TUN_BUFFER = 65536 + VNET_HEADER_SIZE
UDP_BUFFER = 65536
DRAIN_BUDGET = 128  # packets per wake-up before yielding to the other direction
SMALL_PACKET = 512  # packets up to this size are batched per peer
IPV4_DST = struct.Struct("!I")
ZERO_VNET = bytes(VNET_HEADER_SIZE)
DF = 0x40  # in the high byte of the IPv4 flags/fragment field


class Datapath:
    def __init__(
        self,
        sleeve: Sleeve,
        tun_fd: int,
        sock: socket.socket,
        underlay_mtu: int,
        on_event: Callable[[PeerEvent], None] | None = None,
    ) -> None:
        self.sleeve = sleeve
        self.tun_fd = tun_fd
        self.sock = sock
        self.batch_limit = underlay_mtu - 28 - HEADER_SIZE
        self.on_event = on_event or (lambda event: None)
        self._tun_buf = bytearray(TUN_BUFFER)
        self._tun_view = memoryview(self._tun_buf)
        self._udp_buf = bytearray(UDP_BUFFER)
        self._udp_view = memoryview(self._udp_buf)
        self._header = bytearray(HEADER_SIZE + RECORD_SIZE)
        self._wake = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; readers are removed on the way out."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tun_fd, self._on_tun)
        loop.add_reader(self.sock.fileno(), self._on_udp)
        try:
            while True:
                now = time.monotonic()
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

    def poke(self) -> None:
        """Re-arm the timer after the peer set changed."""
        self._wake.set()

    def _flush_control(self) -> None:
        for data, addr in self.sleeve.datagrams_to_send():
            self._sendto(data, addr, None)
        for event in self.sleeve.events():
            self.on_event(event)

    # -- TUN -> UDP --------------------------------------------------------------------------

    def _on_tun(self) -> None:
        sleeve, buf, view = self.sleeve, self._tun_buf, self._tun_view
        batches: dict[int, tuple[PeerState, bytearray]] = {}
        for _ in range(DRAIN_BUDGET):
            try:
                n = os.readv(self.tun_fd, (buf,))
            except BlockingIOError:
                break
            except OSError as exc:
                sleeve.drop("tun_read_" + errno.errorcode.get(exc.errno or 0, "error"))
                break
            if n < VNET_HEADER_SIZE + 20 or buf[VNET_HEADER_SIZE] >> 4 != 4:
                sleeve.drop("tun_not_ipv4")
                continue
            peer = sleeve.peer_for(IPV4_DST.unpack_from(buf, VNET_HEADER_SIZE + 16)[0])
            if peer is None:
                sleeve.drop("no_route")
                continue
            size = n - VNET_HEADER_SIZE
            if size > peer.mtu and buf[1] == 0 and buf[VNET_HEADER_SIZE + 6] & DF:
                self._too_big(view[VNET_HEADER_SIZE:n], peer)  # DF, no GSO: it cannot fit
                continue
            if size > frame.MAX_RECORD_PACKET:
                sleeve.drop("too_large", peer)
                continue
            counters = peer.counters
            counters.tx_packets += 1
            counters.tx_bytes += size
            if size <= SMALL_PACKET:
                entry = batches.get(peer.peer_id)
                if entry is None:
                    entry = batches[peer.peer_id] = (peer, bytearray(HEADER_SIZE))
                batch = entry[1]
                if len(batch) + RECORD_SIZE + n > self.batch_limit + HEADER_SIZE:
                    self._send_batch(peer, batch)
                    del batch[HEADER_SIZE:]
                batch += RECORD.pack(size)
                batch += view[:n]
                continue
            entry = batches.get(peer.peer_id)
            if entry is not None and len(entry[1]) > HEADER_SIZE:
                self._send_batch(peer, entry[1])  # keep the peer's packets in order
                del entry[1][HEADER_SIZE:]
            header = self._header
            HEADER.pack_into(
                header,
                0,
                frame.VERSION,
                MessageType.DATA,
                0,
                frame.DEFAULT_HOPS,
                RECORD_SIZE + n,
                sleeve.local_id,
                peer.peer_id,
            )
            RECORD.pack_into(header, HEADER_SIZE, size)
            self._sendmsg((header, view[:n]), peer)
        for peer, batch in batches.values():
            if len(batch) > HEADER_SIZE:
                self._send_batch(peer, batch)

    def _send_batch(self, peer: PeerState, batch: bytearray) -> None:
        frame.encode_header(
            batch, MessageType.DATA, len(batch) - HEADER_SIZE, self.sleeve.local_id, peer.peer_id
        )
        self._sendmsg((batch,), peer)

    def _sendmsg(self, parts: tuple[bytes | bytearray | memoryview, ...], peer: PeerState) -> None:
        try:
            self.sock.sendmsg(parts, (), 0, peer.spec.address)
        except BlockingIOError:
            self.sleeve.drop("send_buffer_full", peer)
        except OSError as exc:
            self.sleeve.drop("send_" + errno.errorcode.get(exc.errno or 0, "error"), peer)

    def _sendto(self, data: bytes, addr: tuple[str, int], peer: PeerState | None) -> None:
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            self.sleeve.drop("send_buffer_full", peer)
        except OSError as exc:
            self.sleeve.drop("send_" + errno.errorcode.get(exc.errno or 0, "error"), peer)

    def _too_big(self, packet: memoryview, peer: PeerState) -> None:
        reply = self.sleeve.too_big(packet, peer.mtu)
        self.sleeve.drop("too_big", peer)
        if reply is not None:
            self._write_tun((ZERO_VNET, reply), None)

    # -- UDP -> TUN --------------------------------------------------------------------------

    def _on_udp(self) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                n, addr = self.sock.recvfrom_into(self._udp_buf)
            except BlockingIOError:
                break
            except OSError as exc:
                self.sleeve.drop("recv_" + errno.errorcode.get(exc.errno or 0, "error"))
                break
            self._receive(n, addr)
        self._flush_control()

    def _receive(self, n: int, addr: tuple[str, int]) -> None:
        sleeve, buf = self.sleeve, self._udp_buf
        try:
            header = frame.decode_header(buf, n)
        except frame.DecodeError as exc:
            sleeve.drop(exc.reason)
            return
        if header.destination != sleeve.local_id:
            sleeve.drop("wrong_destination")
            return
        if header.type != MessageType.DATA:
            sleeve.receive_control(buf, header, addr, time.monotonic())
            return
        peer = sleeve.peers.get(header.source)
        if peer is None:
            sleeve.drop("unknown_peer")
            return
        view, counters = self._udp_view, peer.counters
        try:
            for offset in frame.iter_records(buf, HEADER_SIZE, n):
                end = offset + frame.record_length(buf, offset)
                ip = offset + VNET_HEADER_SIZE
                if (
                    end - ip < 20
                    or buf[ip] >> 4 != 4
                    or not sleeve.is_local(IPV4_DST.unpack_from(buf, ip + 16)[0])
                ):
                    sleeve.drop("not_local", peer)
                    continue
                if self._write_tun((view[offset:end],), peer):
                    counters.rx_packets += 1
                    counters.rx_bytes += end - ip
        except frame.DecodeError as exc:
            sleeve.drop(exc.reason, peer)

    def _write_tun(self, parts: tuple[bytes | memoryview, ...], peer: PeerState | None) -> bool:
        try:
            os.writev(self.tun_fd, parts)
        except OSError as exc:
            self.sleeve.drop("tun_write_" + errno.errorcode.get(exc.errno or 0, "error"), peer)
            return False
        return True
