"""The sleeve driver with a keyring, over the in-tree fakes: what one node reads from its TUN
the other writes unchanged, but on the underlay every frame -- batch, super-packet, heartbeat
-- is sealed and carries no byte of the pods' payload in clear; a replay, a plain frame, a
frame from a node with another secret are refused and counted; a relay passes sealed frames on
without holding their key; a renewed key pair is published through ``on_sleeve_key``."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import struct
from collections.abc import Callable, Iterator

import pytest

from gossip.identity import peer_id
from gossip.secret import Secrets
from overlay import frame
from overlay.datapath import Datapath
from overlay.fakes import FakeTun, FakeUnderlay
from overlay.frame import FLAG_AEAD, HEADER_SIZE, VNET_HEADER
from overlay.peer import PeerSpec
from overlay.seal import AEAD_EXTRA, Keyring
from overlay.sleeve import Sleeve

NET = ipaddress.IPv4Network
NAMES = {"a": "aa:00:00:00:00:01", "b": "bb:00:00:00:00:02", "c": "cc:00:00:00:00:03"}
BLOCKS = {"a": NET("10.32.1.0/24"), "b": NET("10.32.2.0/24"), "c": NET("10.32.3.0/24")}
ADDRS = {"a": ("192.0.2.1", 6783), "b": ("192.0.2.2", 6783), "c": ("192.0.2.3", 6783)}
SECRET, OTHER = Secrets((b"cluster secret",)), Secrets((b"another secret",))
UNDERLAY_MTU = 1500
MARKER = b"PODPAYLOAD-MARKER"


class Node:
    """A sleeve with its driver and keyring on a fake TUN and socket."""

    def __init__(self, underlay: FakeUnderlay, name: str, secrets: Secrets | None) -> None:
        self.name = name
        self.id = peer_id(NAMES[name])
        mtu = UNDERLAY_MTU - frame.OVERHEAD - AEAD_EXTRA
        gateway = BLOCKS[name][1].packed
        self.sleeve = Sleeve(self.id, self.id, [BLOCKS[name]], mtu, gateway,
                             rng=random.Random(1))  # fmt: skip
        self.keyring = None if secrets is None else Keyring(NAMES[name], secrets, 0.0)
        self.published: list[bytes] = []
        self.tun = FakeTun()
        self.sock = underlay.socket(ADDRS[name])
        self.path = Datapath(
            self.sleeve, self.tun, self.sock, UNDERLAY_MTU,
            connect=underlay.connector(ADDRS[name][0]), keyring=self.keyring,
            on_sleeve_key=self.published.append,
        )  # fmt: skip

    def spec(self, via: Node | None = None) -> PeerSpec:
        key = b"" if self.keyring is None else self.keyring.sleeve_key
        via_addr = None if via is None else ADDRS[via.name]
        return PeerSpec(self.id, self.name, ADDRS[self.name], (BLOCKS[self.name],), via_addr,
                        NAMES[self.name], key)  # fmt: skip

    def know(self, *peers: PeerSpec) -> None:
        self.sleeve.set_peers(peers, 0.0)
        self.path.follow_peers()

    def send(self, *packets: bytes) -> None:
        for p in packets:
            self.tun.inject(p)
        self.path.drain_tun()

    def close(self) -> None:
        self.path.links.sync(set())
        self.sock.close()
        self.tun.close()


def packet(size: int, dst: str = "10.32.2.5", src: str = "10.32.1.5", gso: bool = True) -> bytes:
    """virtio-net header + an IPv4 TCP packet of ``size`` bytes full of MARKER."""
    ip = bytearray((MARKER * (size // len(MARKER) + 1))[:size])
    ip[0], ip[1] = 0x45, 0
    struct.pack_into("!HHH", ip, 2, min(size, 0xFFFF), 0, 0x4000)
    ip[8], ip[9] = 64, 6
    ip[12:16] = ipaddress.IPv4Address(src).packed
    ip[16:20] = ipaddress.IPv4Address(dst).packed
    vnet = VNET_HEADER.pack(1, 1, 54, 1384, 34, 16) if gso else bytes(10)
    return vnet + bytes(ip)


@pytest.fixture
def underlay() -> FakeUnderlay:
    return FakeUnderlay()


@pytest.fixture
def pair(underlay: FakeUnderlay) -> Iterator[tuple[Node, Node]]:
    a, b = Node(underlay, "a", SECRET), Node(underlay, "b", SECRET)
    a.know(b.spec())
    b.know(a.spec())
    yield a, b
    a.close()
    b.close()


def sends(node: Node) -> list[tuple[bytes, int | None]]:
    """Every send of the node's sockets since the last call, with its GSO segment size."""
    host = ADDRS[node.name][0]
    socks = [s for s in node.sock.underlay.bound.values() if s.address[0] == host]
    return [(payload, segment) for s in socks for payload, segment, _ in s.take()]


def wire(node: Node) -> list[bytes]:
    """Every datagram the node's sockets sent since the last call (a GSO send's segments)."""
    return datagrams_of(sends(node))


def datagrams_of(sent: list[tuple[bytes, int | None]]) -> list[bytes]:
    out = []
    for payload, segment in sent:
        step = segment or len(payload)
        out += [payload[at : at + step] for at in range(0, len(payload), step)]
    return out


def test_sealed_packets_of_every_shape_arrive_unchanged_and_never_in_clear(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    small = [packet(60 + i, gso=False) for i in range(5)]
    big = [packet(1200, gso=False), packet(60000)]
    a.send(*small, *big)
    sent = sends(a)
    assert len(sent) == 3  # one batch, the 1200-byte packet, the super-packet's train
    assert [segment is not None for _, segment in sent] == [False, False, True]
    datagrams = datagrams_of(sent)
    for datagram in datagrams:
        assert datagram[2] & FLAG_AEAD and MARKER not in datagram
        assert len(datagram) <= UNDERLAY_MTU - frame.UNDERLAY_HEADERS
    kinds = [frame.decode_header(d, len(d)).type for d in datagrams]
    assert kinds[:2] == [frame.MessageType.DATA] * 2
    assert set(kinds[2:]) == {frame.MessageType.DATA_CHUNK}
    b.path.drain_udp()
    assert b.tun.take() == small + big
    assert b.sleeve.peers[a.id].counters.rx_packets == 7
    assert b.sleeve.paths["sealed_train"] == 1  # the GRO read of the whole train


def test_a_sealed_train_read_chunk_by_chunk_is_reassembled(pair: tuple[Node, Node]) -> None:
    a, b = pair
    big = packet(60000)
    a.send(big)
    chunks = wire(a)
    b.sock.inbox.clear()
    for chunk in chunks:
        b.sock.queue(chunk, source=(ADDRS["a"][0], 40000))
    b.path.drain_udp()
    assert b.tun.take() == [big]
    assert b.sleeve.paths["sealed_reassembled"] == 1


def test_a_coalesced_sealed_train_is_authenticated_and_taken_once(
    pair: tuple[Node, Node],
) -> None:
    """The GRO fast path opens a whole sealed train without its chunks' headers in front:
    a changed byte of it is refused, the original is taken once and its replay refused."""
    a, b = pair
    big = packet(60000)
    a.send(big)
    [(train, segment)] = sends(a)
    b.sock.inbox.clear()
    damaged = bytearray(train)
    damaged[-100] ^= 1
    for payload in (bytes(damaged), train, train):
        b.sock.queue(payload, segment, (ADDRS["a"][0], 40000))
    b.path.drain_udp()
    assert b.tun.take() == [big]
    assert b.sleeve.drops["auth"] == 1 and b.sleeve.drops["replay"] == 1
    assert b.sleeve.paths["sealed_train"] == 3


def test_a_tampered_or_spoofed_chunk_delivers_nothing(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.send(packet(30000))
    damaged = [bytearray(c) for c in wire(a)]
    b.sock.inbox.clear()
    damaged[1][-1] ^= 1  # a byte of the ciphertext: the reassembled frame fails
    for piece in damaged:
        b.sock.queue(bytes(piece), source=(ADDRS["a"][0], 40000))
    b.path.drain_udp()
    assert b.tun.take() == [] and b.sleeve.drops["auth"] == 1
    a.send(packet(30000))
    chunks = wire(a)
    b.sock.inbox.clear()
    b.sock.queue(chunks[0], source=("192.0.2.66", 6783))  # not a's host
    b.path.drain_udp()
    assert b.sleeve.drops["endpoint"] == 1
    for chunk in chunks:
        b.sock.queue(chunk, source=(ADDRS["a"][0], 40000))
    b.path.drain_udp()
    assert len(b.tun.take()) == 1  # the spoofed chunk did not break a's train


def test_without_gso_a_sealed_super_packet_is_one_datagram(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.path.udp_gso = False
    big = packet(30000)
    a.send(big)
    [(datagram, segment)] = sends(a)
    assert segment is None and frame.decode_header(datagram, len(datagram)).type == 1
    b.path.drain_udp()
    assert b.tun.take() == [big]


def test_heartbeats_are_sealed_and_establish_the_path(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.sleeve.handle_timer(1.0)
    a.path.drain_udp()  # flushes the heartbeat
    [beat] = wire(a)
    assert beat[2] & FLAG_AEAD and len(beat) == HEADER_SIZE + 16 + AEAD_EXTRA
    b.path.drain_udp()  # opens it, answers with a sealed ack
    [ack] = wire(b)
    assert ack[2] & FLAG_AEAD
    a.path.drain_udp()
    assert a.sleeve.peers[b.id].established


def test_a_replayed_datagram_is_refused_and_counted(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.send(packet(900, gso=False))
    [datagram] = wire(a)
    b.path.drain_udp()
    assert len(b.tun.take()) == 1
    b.sock.queue(datagram, source=(ADDRS["a"][0], 40000))
    b.path.drain_udp()
    assert b.tun.take() == []
    assert b.sleeve.drops["replay"] == 1
    [refused] = b.sleeve.forwarding.take_refused()
    assert refused.source == ADDRS["a"][0] and refused.reasons == (("replay", 1),)


def test_plain_frames_are_refused_where_there_is_a_secret(underlay: FakeUnderlay) -> None:
    plain, sealed = Node(underlay, "a", None), Node(underlay, "b", SECRET)
    try:
        plain.know(sealed.spec())
        sealed.know(plain.spec())
        plain.send(packet(100, gso=False), packet(30000))
        sealed.path.drain_udp()
        assert sealed.tun.take() == []
        assert sealed.sleeve.drops["plain"] >= 2
        sealed.send(packet(100, dst="10.32.1.5", src="10.32.2.5", gso=False))
        assert sealed.sleeve.drops["no_key"] == 1  # a published no key: nothing leaves
        assert wire(sealed) == []
    finally:
        plain.close()
        sealed.close()


def test_a_node_with_another_secret_carries_nothing(underlay: FakeUnderlay) -> None:
    a, b = Node(underlay, "a", SECRET), Node(underlay, "b", OTHER)
    try:
        a.know(b.spec())
        b.know(a.spec())
        a.send(packet(100, gso=False), packet(20000))
        b.path.drain_udp()
        b.send(packet(100, dst="10.32.1.5", src="10.32.2.5", gso=False))
        a.path.drain_udp()
        assert a.tun.take() == [] and b.tun.take() == []
        assert b.sleeve.drops["unknown_key"] == 2 and a.sleeve.drops["unknown_key"] == 1
    finally:
        a.close()
        b.close()


def test_a_relay_passes_sealed_frames_it_cannot_open(underlay: FakeUnderlay) -> None:
    a, b, c = (Node(underlay, n, SECRET) for n in "abc")
    try:
        a.know(b.spec(), c.spec(via=b))
        b.know(a.spec(), c.spec())
        c.know(b.spec(), a.spec(via=b))
        pkts = [packet(60, dst="10.32.3.9", gso=False), packet(30000, dst="10.32.3.9")]
        a.send(*pkts)
        b.path.drain_udp()
        assert b.tun.take() == [] and b.sleeve.peers[c.id].counters.relayed >= 2
        assert all(MARKER not in d for d in wire(b))
        c.path.drain_udp()
        assert c.tun.take() == pkts
    finally:
        for node in (a, b, c):
            node.close()


async def test_run_renews_the_key_pair_and_publishes_it(underlay: FakeUnderlay) -> None:
    a = Node(underlay, "a", SECRET)
    assert a.keyring is not None
    a.keyring.renew_interval = 0.05
    first = a.keyring.sleeve_key
    task = asyncio.create_task(a.path.run())
    try:
        async with asyncio.timeout(5):
            while not a.published:
                await asyncio.sleep(0.01)
        assert a.published[0] == a.keyring.sleeve_key != first
    finally:
        task.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(task, return_exceptions=True)
        a.close()


def test_a_sealed_node_carries_no_plain_packets_even_unkeyed(underlay: FakeUnderlay) -> None:
    """Without the peer's key nothing leaves for it: no fallback to plain frames."""
    a, b = Node(underlay, "a", SECRET), Node(underlay, "b", SECRET)
    try:
        a.know(b.spec())  # b's key is known to a ...
        bare = b.spec()
        a.know(PeerSpec(bare.peer_id, "b", bare.address, bare.blocks, None, bare.peer_name))
        a.send(packet(100, gso=False), packet(30000))  # ... but no longer published
        assert wire(a) == [] and a.sleeve.drops["no_key"] == 2
    finally:
        a.close()
        b.close()


def test_the_tun_sees_nothing_of_a_frame_whose_tag_was_cut(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.send(packet(400, gso=False))
    [datagram] = wire(a)
    b.sock.inbox.clear()  # what the underlay delivered: only the cut copy arrives
    b.sock.queue(datagram[:-1], source=ADDRS["a"])
    b.path.drain_udp()
    assert b.tun.take() == [] and b.sleeve.drops["length"] == 1


async def test_traffic_flows_on_through_key_renewals(underlay: FakeUnderlay) -> None:
    """Both drivers renew their key pairs every 0.3 s while packets flow; each new public key
    reaches the other side at once (the mesh's part), and not one packet is lost or refused:
    the old pair seals until the switch, and opens until it retires."""
    a, b = Node(underlay, "a", SECRET), Node(underlay, "b", SECRET)
    for node in (a, b):
        assert node.keyring is not None
        node.keyring.renew_interval = 0.3
        node.keyring.switch_delay, node.keyring.retire_delay = 0.1, 0.5
    a.know(b.spec())
    b.know(a.spec())
    for node, other in ((a, b), (b, a)):
        node.path.on_sleeve_key = gossip(node, other)
    tasks = [asyncio.create_task(n.path.run()) for n in (a, b)]
    sent = [packet(100 + i % 50, gso=False) for i in range(120)]
    got: list[bytes] = []
    try:
        for pkt in sent:
            a.tun.inject(pkt)
            await asyncio.sleep(0.015)
            got += b.tun.take()
        await asyncio.sleep(0.05)
        got += b.tun.take()
    finally:
        for t in tasks:
            t.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks, return_exceptions=True)
        a.close()
        b.close()
    assert len(a.published) >= 4 and len(b.published) >= 4
    assert got == sent
    assert not {"unknown_key", "auth", "replay", "no_key"} & set(b.sleeve.drops)


def gossip(node: Node, other: Node) -> Callable[[bytes], None]:
    """What the mesh does with a published key, at once: the other side's spec of ``node``."""

    def publish(key: bytes) -> None:
        node.published.append(key)
        other.know(node.spec())

    return publish


async def test_a_failed_publication_is_retried_and_the_path_runs_on(
    underlay: FakeUnderlay,
) -> None:
    a = Node(underlay, "a", SECRET)
    assert a.keyring is not None
    a.keyring.renew_interval = 0.05
    calls: list[bytes] = []

    def flaky(key: bytes) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("the mesh refused")
        a.published.append(key)

    a.path.on_sleeve_key = flaky
    task = asyncio.create_task(a.path.run())
    try:
        async with asyncio.timeout(5):
            while not a.published:
                await asyncio.sleep(0.01)
        assert not task.done() and len(calls) >= 2
    finally:
        task.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(task, return_exceptions=True)
        a.close()
