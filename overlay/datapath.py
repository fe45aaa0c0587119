"""The asyncio driver of the sleeve: TUN -> UDP here, UDP -> TUN in overlay/receive.py, plus
the heartbeat timer; data for peers leaves by their links (overlay/links.py).

The driver owns the syscalls and the buffers they fill; every decision is the cores': which
peer a packet goes to (overlay/forwarding.py), heartbeats and peer health (overlay/sleeve.py).
What it chooses itself is the shape of the sends: small packets batched per peer into one DATA
datagram per drain, a packet that fits one underlay packet sent alone, a larger super-packet as
a train of DATA_CHUNK frames (overlay/train.py) in one ``sendmsg`` with ``UDP_SEGMENT`` (the
kernel carries them as one GSO unit; the receiver reads them coalesced with ``UDP_GRO``).
Measured in this lab, that moves 64 KB datagrams ~8x faster than letting the kernel
IP-fragment one big datagram, which stays as the fallback when GSO is refused.

With a keyring (overlay/seal.py) every frame this node originates -- a batch, a super-packet,
a heartbeat -- is sealed once, whole, before it leaves: a sealed super-packet travels as a
train of FLAG_AEAD chunks of the sealed frame (or one IP-fragmented datagram without GSO), and
a batch leaves room for the AEAD extension and tag. Relayed frames go on as they came. The
keyring's timer renews our key pair; ``on_sleeve_key`` publishes the new public key.

Hot-path rules: preallocated buffers, ``loop.add_reader`` and drain until EAGAIN (never
asyncio's DatagramProtocol, which allocates per datagram), header and packet gathered by
``sendmsg`` (nothing copied), nothing logged above DEBUG. Every failure is counted and the loop
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import struct
import time
from collections.abc import Callable

from overlay import frame
from overlay.frame import (
    FLAG_AEAD,
    HEADER_SIZE,
    RECORD,
    RECORD_VNET,
    VNET_HEADER_SIZE,
    Buffer,
    MessageType,
)
from overlay.links import Connect, Links
from overlay.peer import PeerState
from overlay.receive import DRAIN_BUDGET, Receiver, failure
from overlay.seal import AEAD_EXTRA, Keyring
from overlay.sleeve import PeerEvent, Sleeve
from overlay.train import Train
from overlay.tun import TunDevice
from overlay.udp import SOL_UDP, UDP_SEGMENT, Address, UdpSocket

log = logging.getLogger("weave-py.sleeve")

TUN_BUFFER = RECORD_VNET + VNET_HEADER_SIZE + 65536
SMALL_PACKET = 512  # packets up to this size are batched per peer
MAX_GSO_BYTES = 65000  # payload of one UDP_SEGMENT send
ZERO_VNET = bytes(VNET_HEADER_SIZE)
GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
DATA = int(MessageType.DATA)  # a plain int: hot path
REFUSED_INTERVAL = 10.0  # seconds at least between summaries of refused input
Batches = dict[int, tuple[PeerState, bytearray]]  # per peer id: the DATA datagram being filled


class Datapath:
    """Runs ``sleeve`` over ``tun`` and ``sock`` (which receives everything and sends control
    datagrams); data leaves by links that ``connect`` opens per peer endpoint. With a
    ``keyring`` the frames it sends are sealed and only sealed frames are taken in."""

    def __init__(
        self,
        sleeve: Sleeve,
        tun: TunDevice,
        sock: UdpSocket,
        underlay_mtu: int,
        on_event: Callable[[PeerEvent], None] | None = None,
        udp_gso: bool = True,
        connect: Connect | None = None,
        keyring: Keyring | None = None,
        on_sleeve_key: Callable[[bytes], None] | None = None,
    ) -> None:
        self.sleeve = sleeve
        self.forwarding = sleeve.forwarding
        self.tun = tun
        self.sock = sock
        self.segment = underlay_mtu - frame.UNDERLAY_HEADERS  # UDP payload of one packet
        self.stride = self.segment & ~7  # chunks are a multiple of 8 long (see overlay/train.py)
        self.keyring = keyring
        self.on_sleeve_key = on_sleeve_key or (lambda key: None)
        self.room = self.segment - (0 if keyring is None else AEAD_EXTRA)  # a frame before sealing
        self.batch_limit = self.room - HEADER_SIZE
        self.chunks_per_send = MAX_GSO_BYTES // self.stride
        self.udp_gso = udp_gso
        self.on_event = on_event or (lambda event: None)
        self._tun_buf = bytearray(TUN_BUFFER)  # a record: length, then what the TUN read
        self._tun_view = memoryview(self._tun_buf)
        self._tun_read = (self._tun_view[RECORD_VNET:],)
        self._header = bytearray(HEADER_SIZE)
        self._trains: dict[int, Train] = {}  # per peer id
        self._gso_cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", self.stride))]
        self._wake = asyncio.Event()
        self.links = Links(sock, connect)  # data for peers; control goes by ``sock``
        self.receiver = Receiver(self.forwarding, tun, sock, self._send, keyring)
        self._refused_at = 0.0
        self._unpublished = False  # a renewed key the last on_sleeve_key call did not take

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; readers are removed on the way out."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tun.fileno(), self._on_tun)
        loop.add_reader(self.sock.fileno(), self._on_udp)
        try:
            while True:
                self.follow_peers()
                now = time.monotonic()
                self.sleeve.handle_timer(now)
                deadline = self.sleeve.get_timer()
                keys_at = self._keys(now)
                if keys_at is not None:
                    deadline = keys_at if deadline is None else min(deadline, keys_at)
                self._flush_control()
                self._log_refused(now)
                timeout = None if deadline is None else max(0.0, deadline - now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            loop.remove_reader(self.tun.fileno())
            loop.remove_reader(self.sock.fileno())
            self.links.sync(set())

    def poke(self) -> None:
        """Re-arm the timer after the peer set changed."""
        self._wake.set()

    def follow_peers(self) -> None:
        """Links to the current peers' endpoints only, no prebuilt trains of departed peers
        (done on every wake-up of ``run``)."""
        peers = self.sleeve.peers
        self.links.sync({peer.send_to for peer in peers.values()})
        if self.keyring is not None:
            self.keyring.follow(peer.spec for peer in peers.values())
        for gone in [p for p in self._trains if p not in peers]:
            del self._trains[gone]

    def _keys(self, now: float) -> float | None:
        """Renew our key pair when due (publishing it); the next deadline (None without a
        keyring)."""
        if self.keyring is None:
            return None
        if self.keyring.handle_timer(now) or self._unpublished:
            self._publish_key()
        self.receiver.expire(now)
        return self.keyring.get_timer()

    def _publish_key(self) -> None:
        """Hand our current public key to ``on_sleeve_key``; a failure is logged and the key
        handed again at the next wake-up (the data plane never stops for it)."""
        assert self.keyring is not None
        try:
            self.on_sleeve_key(self.keyring.sleeve_key)
            self._unpublished = False
        except Exception:
            self._unpublished = True
            log.exception("publish sleeve key: failed, trying again")

    def _log_refused(self, now: float) -> None:
        """One line per source whose input was refused, at most every REFUSED_INTERVAL."""
        if now < self._refused_at:
            return
        self._refused_at = now + REFUSED_INTERVAL
        for refused in self.forwarding.take_refused():
            log.warning("%s", refused)

    def _flush_control(self) -> None:
        for data, addr in self.sleeve.datagrams_to_send():
            if self.keyring is None:
                self._send((data,), addr, None)
            else:
                self._send_sealed(data[:HEADER_SIZE], data[HEADER_SIZE:], addr, None)
        for event in self.sleeve.events():
            self.on_event(event)

    def _on_tun(self) -> None:
        try:
            self.drain_tun()
        except Exception:  # a bug must cost packets, never the reader
            self.forwarding.drop("internal_error")
            log.exception("drain tun: internal error")

    def _on_udp(self) -> None:
        try:
            self.drain_udp()
        except Exception:
            self.forwarding.drop("internal_error")
            log.exception("drain udp: internal error")

    # -- UDP -> TUN --------------------------------------------------------------------------

    def drain_udp(self) -> None:
        """Take in what the socket holds (up to a budget), then send the answers it caused."""
        self.receiver.drain()
        self._flush_control()

    # -- TUN -> UDP --------------------------------------------------------------------------

    def drain_tun(self) -> None:
        """Read the TUN until EAGAIN (or the budget) and send what the forwarding core routes;
        small packets go out batched per peer at the end."""
        batches: Batches = {}
        readv, into, route = self.tun.readv, self._tun_read, self.forwarding.route
        buf, forward = self._tun_buf, self._forward
        for _ in range(DRAIN_BUDGET):
            try:
                n = readv(into)
            except BlockingIOError:
                break
            except OSError as exc:
                self.forwarding.drop(failure("tun_read_", exc))
                break
            peer = route(buf, n)
            if peer is not None:
                forward(peer, n, batches)
        for peer, batch in batches.values():
            if len(batch) > HEADER_SIZE:
                self._send_batch(peer, batch)
        for reply in self.forwarding.replies():
            self._write_tun(reply)

    def _forward(self, peer: PeerState, n: int, batches: Batches) -> None:
        """Frame the read as one record: batched if small, else alone or as a GSO train."""
        size = n - VNET_HEADER_SIZE
        RECORD.pack_into(self._tun_buf, 0, size)
        length = RECORD_VNET + n
        entry = batches.get(peer.peer_id) if batches else None
        if size <= SMALL_PACKET:
            if entry is None:
                entry = batches[peer.peer_id] = (peer, bytearray(HEADER_SIZE))
            batch = entry[1]
            if len(batch) + length > self.room:
                self._send_batch(peer, batch)
            batch += self._tun_view[:length]
            return
        if entry is not None and len(entry[1]) > HEADER_SIZE:
            self._send_batch(peer, entry[1])  # keep the peer's packets in order
        header = self._header
        if self.keyring is not None:
            frame.encode_header(header, DATA, length, self.sleeve.local_id, peer.peer_id)
            if length > self.batch_limit and self.udp_gso:
                self._send_sealed_train(peer, header, length)
            else:
                self._send_sealed(header, self._tun_view[:length], peer.send_to, peer)
            return
        if length > self.batch_limit and self.udp_gso:
            self._send_train(peer, length)
            return
        frame.encode_header(header, DATA, length, self.sleeve.local_id, peer.peer_id)
        self._send((header, self._tun_view[:length]), peer.send_to, peer)

    def _send_batch(self, peer: PeerState, batch: bytearray) -> None:
        """Send and empty a peer's batch (its header is rewritten for the current length)."""
        frame.encode_header(
            batch, DATA, len(batch) - HEADER_SIZE, self.sleeve.local_id, peer.peer_id
        )
        if self.keyring is None:
            self._send((batch,), peer.send_to, peer)
        else:
            with memoryview(batch) as view:
                self._send_sealed(view[:HEADER_SIZE], view[HEADER_SIZE:], peer.send_to, peer)
        del batch[HEADER_SIZE:]

    def _send_sealed(
        self, header: Buffer, body: Buffer, addr: Address, peer: PeerState | None
    ) -> None:
        """Seal the frame of ``header`` and ``body`` and send it; dropped as "no_key" while
        the destination's key is not known."""
        assert self.keyring is not None
        sealed = self.keyring.seal(header, body)
        if sealed is None:
            self.forwarding.drop("no_key", peer)
            return
        self._send((sealed,), addr, peer)

    def _send_sealed_train(self, peer: PeerState, header: Buffer, length: int) -> None:
        """The DATA frame of ``header`` and the TUN buffer's first ``length`` bytes, sealed,
        as a train of FLAG_AEAD chunks of what follows its header."""
        assert self.keyring is not None
        sealed = self.keyring.seal(header, self._tun_view[:length])
        if sealed is None:
            self.forwarding.drop("no_key", peer)
            return
        train = self._trains.get(peer.peer_id)
        if train is None:
            train = self._trains[peer.peer_id] = Train(
                self.sleeve.local_id, peer.peer_id, self.stride, self.keyring.bodies, FLAG_AEAD
            )
        self._send_parts(train.parts(len(sealed) - HEADER_SIZE), peer)

    def _send_train(self, peer: PeerState, total: int) -> None:
        """The DATA body at the start of the TUN buffer as a train."""
        train = self._trains.get(peer.peer_id)
        if train is None:
            train = self._trains[peer.peer_id] = Train(
                self.sleeve.local_id, peer.peer_id, self.stride, self._tun_view
            )
        self._send_parts(train.parts(total), peer)

    def _send_parts(self, parts: list[memoryview], peer: PeerState) -> None:
        """A train's parts: one GSO ``sendmsg`` per ``chunks_per_send`` chunks."""
        if len(parts) <= 2 * self.chunks_per_send:
            self._send_gso(parts, peer)
            return
        group = 2 * self.chunks_per_send
        for at in range(0, len(parts), group):
            if not self._send_gso(parts[at : at + group], peer):
                return

    def _send_gso(self, parts: list[memoryview], peer: PeerState) -> bool:
        try:
            self.links.sendmsg(parts, self._gso_cmsg, peer.send_to)
        except BlockingIOError:
            self.forwarding.drop("send_buffer_full", peer)
            return False
        except OSError as exc:
            if exc.errno in GSO_REFUSED:
                # The egress device cannot segment UDP: fall back to kernel fragmentation.
                self.udp_gso = False
                log.warning("disable udp gso: sendmsg refused it (%s)", exc)
            self.forwarding.drop(failure("send_", exc), peer)
            return False
        return True

    def _send(self, parts: tuple[Buffer, ...], addr: Address, peer: PeerState | None) -> None:
        try:
            if peer is None:
                self.sock.sendmsg(parts, (), 0, addr)  # control: replies come back to its port
            else:
                self.links.sendmsg(parts, (), addr)
        except BlockingIOError:
            self.forwarding.drop("send_buffer_full", peer)
        except OSError as exc:
            self.forwarding.drop(failure("send_", exc), peer)

    def _write_tun(self, packet: bytes) -> None:
        try:
            self.tun.writev((ZERO_VNET, packet))
        except OSError as exc:
            self.forwarding.drop(failure("tun_write_", exc))
