"""The sleeve's forwarding core (sans-IO): every per-packet decision of the data plane.

Rules this module keeps:
- It never touches a socket, a device or a clock. The drivers hand it their buffers with
  offsets (and ``now`` where a timer depends on it); it reads them through the offsets named in
  overlay/frame.py and answers with a verdict, a plain int, and the peer it concerns in
  ``peer``. Per packet nothing is allocated but a decoded header and the views the driver
  writes or sends.
- Outbound: a packet read from the TUN goes to the peer whose block holds its destination, or
  is dropped: not IPv4, a source that is not this node's (``tun_source``), no route, too
  large, or DF set and larger than the peer's MTU (an ICMP "fragmentation needed" is then left
  in ``replies()`` for the TUN).
- Inbound: a datagram is dropped (malformed, unknown peer, from a host that may not carry its
  source's frames, inner packets outside the spaces they must be in), handed to the health
  core (heartbeats), relayed towards its destination with one hop less, or its packets are
  written to the TUN. DATA_CHUNK trains are checked whole (overlay/train.py) or reassembled
  per source (overlay/reassembly.py); either way every inner packet passes the same checks.
- Drops are counted by reason, globally and per peer when the peer is known; traffic is
  counted per peer when the verdict is given, before the driver's syscall. Refused input from
  the network is also noted per source host for the driver's log summary (``take_refused``).

Trust: the rules and their tables are overlay/trust.py's (endpoint, inner source and
destination, the host-access rule). A relay passes on only frames whose source peer's frames
may come from the host that sent them, only towards a known peer, and never back to the host
they came from.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable

from overlay import frame, icmp
from overlay.frame import (
    ADDRESS,
    ADDRESSES,
    CHUNK_OVERHEAD,
    HEADER_SIZE,
    HOPS_AT,
    IPV4_DF,
    IPV4_FLAGS_AT,
    IPV4_MIN,
    IPV4_SRC_AT,
    MAX_PACKET,
    RECORD_IP,
    RECORD_VNET,
    VNET_GSO_TYPE_AT,
    VNET_HEADER_SIZE,
    Buffer,
    DecodeError,
    Header,
    MessageType,
)
from overlay.peer import PeerState
from overlay.reassembly import Reassembler
from overlay.trust import Refused, Trust
from overlay.udp import Address

# Verdicts on a received datagram or train.
DROP = 0  # counted by reason; nothing to do
DONE = 1  # taken in: a heartbeat answered, a chunk stored
WRITE = 2  # write each of ``packets`` (or the train's parts) to the TUN
RELAY = 3  # send the datagram, unchanged but for its hops, on to ``peer.send_to``
SLOW = 4  # a train the general path must take, datagram by datagram

DATA = int(MessageType.DATA)  # plain ints: hot path
DATA_CHUNK = int(MessageType.DATA_CHUNK)
Control = Callable[[Buffer, Header, Address, float], None]


class Forwarding:
    """Per-packet decisions over the peers of one sleeve (``peers``, shared with it); control
    frames go to ``control`` (the sleeve's heartbeat handling)."""

    def __init__(self, local_id: int, peers: dict[int, PeerState], control: Control) -> None:
        self.local_id = local_id
        self.peers = peers
        self.drops: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()  # how received super-packets were handled
        self.reassembler = Reassembler(drops=self.drops)
        self.router_address = b"\0\0\0\0"  # where ICMP errors come from (our gateway)
        self.peer: PeerState | None = None  # the peer the last verdict concerns
        self.packets: list[memoryview] = []  # WRITE: one TUN write each, until the next call
        self._control = control
        self._replies: list[bytes] = []
        self.trust = trust = Trust()
        self.peer_for = trust.peer_for  # the owner of an address (an int), or None
        self.is_local = trust.is_local  # whether an address (an int) is in this node's space

    # -- tables ------------------------------------------------------------------------------

    def set_routes(self, peers: Iterable[PeerState]) -> None:
        """Route each peer's blocks to it (longest prefix wins); whom its frames come from."""
        self.trust.set_peers(peers)

    def set_local(
        self,
        blocks: Iterable[ipaddress.IPv4Network],
        router_address: bytes | None = None,
        gateways: Iterable[int] | None = None,
    ) -> None:
        """This node's own space (packets for it are delivered here), the address ICMP errors
        come from, and the host's addresses in the space (``gateways``; when not given, the
        router address alone)."""
        if router_address is not None:
            self.router_address = router_address
        if gateways is None:
            (router,) = ADDRESS.unpack(self.router_address)
            gateways = (router,) if router else ()
        self.trust.set_local(blocks, gateways)

    def set_hosts(self, addresses: Iterable[int]) -> None:
        """The host's addresses outside its space (its underlay address), as ints."""
        self.trust.set_hosts(addresses)

    def drop(self, reason: str, peer: PeerState | None = None) -> None:
        """Count a drop, globally and against ``peer`` when there is one."""
        self.drops[reason] += 1
        if peer is not None:
            peer.counters.drops[reason] += 1

    # -- outbound: TUN -> peer ---------------------------------------------------------------

    def route(self, buf: Buffer, n: int) -> PeerState | None:
        """The peer for the packet the TUN read into ``buf`` as a record (``n`` bytes of
        virtio-net header and IP packet from RECORD_VNET), counted as sent to it; None when it
        is dropped (counted)."""
        size = n - VNET_HEADER_SIZE
        if size < IPV4_MIN or buf[RECORD_IP] >> 4 != 4:
            self.drop("tun_not_ipv4")
            return None
        source, destination = ADDRESSES.unpack_from(buf, RECORD_IP + IPV4_SRC_AT)
        if not self.is_local(source) and not self.trust.outbound(source):
            self.drop("tun_source")
            self.trust.refused("tun_source", f"tun ({ipaddress.IPv4Address(source)})")
            return None
        peer = self.peer_for(destination)
        if peer is None:
            self.drop("no_route")
            return None
        if (
            size > peer.mtu
            and buf[RECORD_VNET + VNET_GSO_TYPE_AT] == 0
            and buf[RECORD_IP + IPV4_FLAGS_AT] & IPV4_DF
        ):
            self._too_big(memoryview(buf)[RECORD_IP : RECORD_VNET + n], peer)
            return None
        if size > MAX_PACKET:
            self.drop("too_large", peer)
            return None
        counters = peer.counters
        counters.tx_packets += 1
        counters.tx_bytes += size
        return peer

    def _too_big(self, packet: memoryview, peer: PeerState) -> None:
        """A DF packet that is not a GSO super-packet and exceeds the peer's MTU: it cannot
        be carried, and the sender learns so from an ICMP error."""
        self.drop("too_big", peer)
        reply = icmp.frag_needed(packet, peer.mtu, self.router_address)
        if reply is not None:
            self._replies.append(reply)

    def replies(self) -> list[bytes]:
        """IP packets (ICMP errors) made for the TUN since the last call."""
        out, self._replies = self._replies, []
        return out

    # -- inbound: datagram -> TUN, relay or health -------------------------------------------

    def train(
        self, buf: Buffer, body: int, total: int, source: int, host: str | None = None
    ) -> int:
        """Verdict on a whole train from peer ``source`` sent by ``host`` whose DATA body of
        ``total`` bytes starts at ``body`` in ``buf``: WRITE when it is one record the trust
        rules accept, DROP when they refuse it, SLOW for anything else (not one record, not
        from a known peer, no host given): the general path decides."""
        peer = self.peers.get(source)
        size = total - RECORD_IP
        if peer is None or host is None or (buf[body] << 8 | buf[body + 1]) != size:
            return SLOW
        self.peer = peer
        if host not in peer.accept_from:
            self.refuse("endpoint", host, peer)
            return DROP
        ip = body + RECORD_IP
        if size < IPV4_MIN or buf[ip] >> 4 != 4:
            self.refuse("not_ipv4", host, peer)
            return DROP
        source, destination = ADDRESSES.unpack_from(buf, ip + IPV4_SRC_AT)
        if not self.is_local(destination) or self.peer_for(source) is not peer:
            reason = self.trust.inbound(peer, source, destination)  # the rules, in full
            if reason is not None:
                self.refuse(reason, host, peer)
                return DROP
        self.paths["gro_train"] += 1
        counters = peer.counters
        counters.rx_packets += 1
        counters.rx_bytes += size
        return WRITE

    def receive(self, data: memoryview, addr: Address, now: float) -> int:
        """Verdict on one datagram ``data`` from ``addr``: DROP, DONE, WRITE (``packets``) or
        RELAY (to ``peer``; its hop count is lowered in ``data``)."""
        host = addr[0]
        try:
            header = frame.decode_header(data, len(data))
        except DecodeError as exc:
            self.refuse(exc.reason, host)
            return DROP
        if header.destination != self.local_id:
            return self._relay(data, header, host)
        if header.flags:
            self.refuse("encrypted", host)  # sealed for this node: the driver opens it first
            return DROP
        kind = header.type
        if kind != DATA and kind != DATA_CHUNK:
            self._control(data, header, addr, now)
            return DONE
        peer = self.peers.get(header.source)
        if peer is None:
            self.refuse("unknown_peer", host)
            return DROP
        self.peer = peer
        if host not in peer.accept_from:
            self.refuse("endpoint", host, peer)
            return DROP
        if kind == DATA:
            return self._records(data, HEADER_SIZE, len(data), peer, host)
        return self._chunk(data, header, peer, host, now)

    def _relay(self, data: memoryview, header: Header, host: str) -> int:
        """A frame for another peer goes on, unchanged but for one hop less, to its next hop:
        only from a host that may carry its source's frames, never back to the host it came
        from (data comes from a peer's link, its own port, so a loop shows in the host alone)
        and never once its hops are spent."""
        target = self.peers.get(header.destination)
        if target is None:
            self.refuse("wrong_destination", host)
            return DROP
        source = self.peers.get(header.source)
        if source is None:
            self.refuse("unknown_peer", host)
            return DROP
        if host not in source.accept_from:
            self.refuse("endpoint", host, source)
            return DROP
        if header.hops == 0 or target.send_to[0] == host:
            self.refuse("relay_loop", host, target)
            return DROP
        data[HOPS_AT] = header.hops - 1
        target.counters.relayed += 1
        self.peer = target
        return RELAY

    def _chunk(
        self, data: memoryview, header: Header, peer: PeerState, host: str, now: float
    ) -> int:
        try:
            offset, total = frame.decode_chunk(data, header)
        except DecodeError as exc:
            self.refuse(exc.reason, host, peer)
            return DROP
        body = self.reassembler.add(header.source, offset, total, data[CHUNK_OVERHEAD:], now)
        if body is None:
            return DONE
        self.paths["reassembled"] += 1
        return self._records(memoryview(body), 0, len(body), peer, host)

    def _records(self, body: memoryview, pos: int, end: int, peer: PeerState, host: str) -> int:
        """WRITE with the DATA body's packets the trust rules accept in ``packets`` (the others
        and a malformed rest counted as drops), DROP when there is none."""
        packets, counters = self.packets, peer.counters
        is_local, peer_for, inbound = self.is_local, self.peer_for, self.trust.inbound
        packets.clear()
        try:
            while pos < end:
                stop = frame.record_end(body, pos, end)
                ip = pos + RECORD_IP
                reason: str | None = None
                if stop - ip < IPV4_MIN or body[ip] >> 4 != 4:
                    reason = "not_ipv4"
                else:  # a pod of the peer's to one of ours passes two cached lookups
                    source, destination = ADDRESSES.unpack_from(body, ip + IPV4_SRC_AT)
                    if not is_local(destination) or peer_for(source) is not peer:
                        reason = inbound(peer, source, destination)
                if reason is None:
                    packets.append(body[pos + RECORD_VNET : stop])
                    counters.rx_packets += 1
                    counters.rx_bytes += stop - ip
                else:
                    self.refuse(reason, host, peer)
                pos = stop
        except DecodeError as exc:
            self.refuse(exc.reason, host, peer)
        return WRITE if packets else DROP

    def refuse(self, reason: str, host: str, peer: PeerState | None = None) -> None:
        """Count a drop of input from ``host`` (as ``drop`` does) and note it for the log."""
        self.drop(reason, peer)
        self.trust.refused(reason, host, peer)

    def take_refused(self) -> list[Refused]:
        """What was refused since the last call, per source host (for the driver's log)."""
        return self.trust.take_refused()

    def expire(self, now: float) -> None:
        """Forget bodies whose chunks stopped coming (counted)."""
        self.reassembler.expire(now)
