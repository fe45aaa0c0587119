"""The sans-IO sleeve core, driven with explicit ``now`` values: two cores wired back to back."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest

from overlay import frame
from overlay.frame import MessageType
from overlay.peer import PeerSpec
from overlay.sleeve import PeerEvent, PeerEventKind, Sleeve

A_ID, B_ID, C_ID = 0xA1, 0xB2, 0xC3
A_UID, B_UID = 0x1111, 0x2222
A_ADDR, B_ADDR = ("192.0.2.1", 6783), ("192.0.2.2", 6783)
NET = ipaddress.IPv4Network
A_BLOCK, B_BLOCK, C_BLOCK = NET("10.32.1.0/24"), NET("10.32.2.0/24"), NET("10.32.3.0/24")
A_SPEC = PeerSpec(A_ID, "node-a", A_ADDR, (A_BLOCK,))
B_SPEC = PeerSpec(B_ID, "node-b", B_ADDR, (B_BLOCK,))
C_SPEC = PeerSpec(C_ID, "node-c", ("192.0.2.3", 6783), (C_BLOCK,))


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def nonzero(counter: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in counter.items() if v}


def core(local_id: int, uid: int, block: NET, peers: list[PeerSpec], now: float = 0.0) -> Sleeve:
    s = Sleeve(local_id, uid, [block], 1400, rng=random.Random(7))
    s.set_peers(peers, now)
    return s


def pair(now: float = 0.0) -> tuple[Sleeve, Sleeve]:
    return core(A_ID, A_UID, A_BLOCK, [B_SPEC], now), core(B_ID, B_UID, B_BLOCK, [A_SPEC], now)


def deliver(src: Sleeve, src_addr: tuple[str, int], dst: Sleeve, now: float) -> list[int]:
    """Hand the datagrams ``src`` sends to ``dst`` over; returns the frame types moved.

    Datagrams addressed to other peers are discarded (that network is not wired up)."""
    moved = []
    for data, to in src.datagrams_to_send():
        if to != {A_ID: A_ADDR, B_ID: B_ADDR}[dst.local_id]:
            continue
        header = frame.decode_header(data, len(data))
        moved.append(header.type)
        dst.receive_control(data, header, src_addr, now)
    return moved


def fire(s: Sleeve) -> float:
    """Run the core's timer at its own deadline; returns that deadline."""
    at = s.get_timer()
    assert at is not None
    s.handle_timer(at)
    return at


def heartbeats(s: Sleeve) -> list[tuple[int, int, int, tuple[str, int]]]:
    """(type, sequence, uid, address) of every pending datagram; drains the outbox."""
    out = []
    for data, addr in s.datagrams_to_send():
        h = frame.decode_header(data, len(data))
        seq, uid = frame.decode_heartbeat(data, h)
        out.append((h.type, seq, uid, addr))
    return out


def establish(a: Sleeve, b: Sleeve, at: float = 1.0, rtt: float = 0.25) -> None:
    """a sends a heartbeat at ``at``, b answers, the ack reaches a ``rtt`` later."""
    a.handle_timer(at)
    deliver(a, A_ADDR, b, at)
    deliver(b, B_ADDR, a, at + rtt)


# -- heartbeats and health -------------------------------------------------------------------


def test_first_heartbeat_is_jittered_within_a_quarter_interval() -> None:
    specs = [
        PeerSpec(0x100 + i, f"n{i}", ("192.0.2.9", 6783), (NET(f"10.33.{i}.0/24"),))
        for i in range(8)
    ]
    s = core(A_ID, A_UID, A_BLOCK, specs, now=100.0)
    deadlines = [p.next_heartbeat_at for p in s.peers.values()]
    assert all(100.0 <= d <= 100.0 + 0.5 / 4 for d in deadlines)
    assert len(set(deadlines)) == len(deadlines)
    assert s.get_timer() == min(deadlines)


def test_nothing_is_sent_before_the_deadline() -> None:
    a, _ = pair()
    at = a.get_timer()
    assert at is not None
    a.handle_timer(at - 1e-6)
    assert a.datagrams_to_send() == []
    a.handle_timer(at)
    [(kind, token, uid, to)] = heartbeats(a)
    assert (kind, uid, to) == (MessageType.HEARTBEAT, A_UID, B_ADDR)
    assert list(a.peers[B_ID].sent_at) == [token]


def test_heartbeats_fast_until_acknowledged() -> None:
    a, _ = pair()
    first = fire(a)
    times = [first]
    for _ in range(5):
        times.append(fire(a))
    assert [round(t - first, 9) for t in times] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    sent = heartbeats(a)
    tokens = [token for _, token, _, _ in sent]
    assert len(set(tokens)) == 6 and all(0 <= t < 2**64 for t in tokens)
    assert list(a.peers[B_ID].sent_at) == tokens  # every unanswered one stays acceptable
    assert {(t, uid, addr) for t, _, uid, addr in sent} == {(MessageType.HEARTBEAT, A_UID, B_ADDR)}
    assert not a.peers[B_ID].established
    assert a.events() == []


def test_ack_establishes_and_switches_to_slow_interval() -> None:
    a, b = pair()
    a.handle_timer(1.0)
    [token] = a.peers[B_ID].sent_at
    assert deliver(a, A_ADDR, b, 1.0) == [MessageType.HEARTBEAT]
    # b answers to the address the heartbeat came from, with its own uid.
    acks = b.datagrams_to_send()
    assert len(acks) == 1 and acks[0][1] == A_ADDR
    data = acks[0][0]
    h = frame.decode_header(data, len(data))
    assert (h.type, h.source, h.destination) == (MessageType.HEARTBEAT_ACK, B_ID, A_ID)
    assert frame.decode_heartbeat(data, h) == (token, B_UID)  # our token, echoed
    assert b.peers[A_ID].remote_uid == A_UID
    assert not b.peers[A_ID].established  # answering is not being answered
    assert b.events() == []

    a.receive_control(data, h, B_ADDR, 1.25)
    peer = a.peers[B_ID]
    assert peer.established and peer.rtt == 0.25 and peer.last_ack_at == 1.25
    assert peer.remote_uid == B_UID
    assert a.events() == [PeerEvent(PeerEventKind.ESTABLISHED, B_SPEC, "rtt 250.00ms")]
    assert a.get_timer() == 1.25 + 5.0
    # Slow from now on, while acks keep coming.
    for expected in (6.25, 11.25, 16.25, 21.25):
        assert fire(a) == expected
        deliver(a, A_ADDR, b, expected)
        deliver(b, B_ADDR, a, expected + 0.01)
    assert a.peers[B_ID].established
    assert a.events() == []
    assert nonzero(a.drops) == {}


def test_lost_after_timeout_then_recovers() -> None:
    a, b = pair()
    establish(a, b, at=1.0, rtt=0.0)  # last ack at exactly 1.0
    assert [e.kind for e in a.events()] == [PeerEventKind.ESTABLISHED]
    times, lost_at = [], None
    while lost_at is None:
        now = fire(a)
        times.append(now)
        a.datagrams_to_send()  # b stopped answering
        events = a.events()
        if events:
            assert events == [PeerEvent(PeerEventKind.LOST, B_SPEC, "heartbeat timeout")]
            lost_at = now
        assert now < 100
    # One slow beat, another still slow (5 s is not yet overdue), then fast until the timeout.
    assert times[:3] == [6.0, 11.0, 11.5]
    assert lost_at == 1.0 + 15.0
    assert not a.peers[B_ID].established
    # A lost peer is probed fast and reported lost only once.
    assert fire(a) == 16.5
    assert a.events() == []
    # b answers again: established anew.
    deliver(a, A_ADDR, b, 16.5)
    deliver(b, B_ADDR, a, 16.6)
    assert [e.kind for e in a.events()] == [PeerEventKind.ESTABLISHED]
    assert a.peers[B_ID].established
    assert a.get_timer() == pytest.approx(16.6 + 5.0)


def test_lost_is_noticed_by_the_timeout_for_any_valid_config() -> None:
    a = Sleeve(
        A_ID,
        A_UID,
        [A_BLOCK],
        1400,
        fast_interval=0.5,
        slow_interval=5.0,
        timeout=6.0,
        rng=random.Random(1),
    )
    a.set_peers([B_SPEC], 0.0)
    b = core(B_ID, B_UID, B_BLOCK, [A_SPEC])
    establish(a, b, at=1.0, rtt=0.0)
    a.events()
    lost_at = None
    while lost_at is None:
        now = fire(a)
        a.datagrams_to_send()
        if a.events():
            lost_at = now
    assert lost_at <= 1.0 + 6.0 + 0.5


def test_both_directions_establish_independently() -> None:
    a, b = pair()
    now = 0.0
    for _ in range(4):
        now += 0.5
        a.handle_timer(now)
        b.handle_timer(now)
        deliver(a, A_ADDR, b, now)
        deliver(b, B_ADDR, a, now)
        deliver(a, A_ADDR, b, now)  # the acks b's heartbeats caused
    assert a.peers[B_ID].established and b.peers[A_ID].established
    assert [e.kind for e in a.events()] == [PeerEventKind.ESTABLISHED]
    assert [e.kind for e in b.events()] == [PeerEventKind.ESTABLISHED]
    assert nonzero(a.drops) == {} and nonzero(b.drops) == {}


def test_restart_of_remote_is_reported() -> None:
    a, b = pair()
    establish(a, b)
    a.events()
    b2 = core(B_ID, 0x3333, B_BLOCK, [A_SPEC])
    b2.handle_timer(10.0)
    deliver(b2, B_ADDR, a, 10.0)
    assert a.events() == [PeerEvent(PeerEventKind.RESTARTED, B_SPEC, "uid 3333")]
    assert a.peers[B_ID].remote_uid == 0x3333
    # The new b gets its answer.
    deliver(a, A_ADDR, b2, 10.1)
    assert [e.kind for e in b2.events()] == [PeerEventKind.ESTABLISHED]
    # Same uid again: no further restart event.
    b2.handle_timer(20.0)
    deliver(b2, B_ADDR, a, 20.0)
    assert a.events() == []


def test_restart_noticed_through_an_ack_too() -> None:
    a, b = pair()
    establish(a, b)
    a.events()
    b2 = core(B_ID, 0x4444, B_BLOCK, [A_SPEC])
    a.handle_timer(a.get_timer() or 0.0)
    deliver(a, A_ADDR, b2, 7.0)
    deliver(b2, B_ADDR, a, 7.1)
    assert [e.kind for e in a.events()] == [PeerEventKind.RESTARTED]


def test_first_uid_is_not_a_restart() -> None:
    a, b = pair()
    b.handle_timer(1.0)
    deliver(b, B_ADDR, a, 1.0)
    assert a.events() == []
    assert a.peers[B_ID].remote_uid == B_UID


# -- drops -----------------------------------------------------------------------------------


def test_unknown_peer_is_dropped_and_not_answered() -> None:
    a, _ = pair()
    stranger = core(C_ID, 0x9999, C_BLOCK, [A_SPEC])
    stranger.handle_timer(1.0)
    deliver(stranger, ("192.0.2.3", 6783), a, 1.0)
    assert a.datagrams_to_send() == []
    assert nonzero(a.drops) == {"unknown_peer": 1}
    assert all(not p.counters.drops for p in a.peers.values())


def test_stale_and_unsolicited_acks_are_counted() -> None:
    a, b = pair()
    a.handle_timer(1.0)
    a.handle_timer(1.5)
    beats = a.datagrams_to_send()
    assert len(beats) == 2
    for data, _ in beats:
        b.receive_control(data, frame.decode_header(data, len(data)), A_ADDR, 1.5)
    acks = b.datagrams_to_send()
    # The ack of the newer heartbeat arrives first and establishes ...
    newer = acks[1][0]
    a.receive_control(newer, frame.decode_header(newer, len(newer)), B_ADDR, 1.6)
    assert a.peers[B_ID].established
    assert a.peers[B_ID].rtt == pytest.approx(0.1)
    # ... so the older one is stale, as is an ack for a sequence never sent.
    older = acks[0][0]
    a.receive_control(older, frame.decode_header(older, len(older)), B_ADDR, 1.7)
    bogus = frame.encode_heartbeat(MessageType.HEARTBEAT_ACK, B_ID, A_ID, 999, B_UID)
    a.receive_control(bogus, frame.decode_header(bogus, len(bogus)), B_ADDR, 1.8)
    assert nonzero(a.drops) == {"stale_ack": 2}
    assert nonzero(a.peers[B_ID].counters.drops) == {"stale_ack": 2}
    assert a.peers[B_ID].last_ack_at == 1.6  # stale acks do not refresh liveness
    assert [e.kind for e in a.events()] == [PeerEventKind.ESTABLISHED]


def test_stale_ack_does_not_refresh_a_lost_peer() -> None:
    a, b = pair()
    establish(a, b, at=1.0, rtt=0.0)
    bogus = frame.encode_heartbeat(MessageType.HEARTBEAT_ACK, B_ID, A_ID, 12345, B_UID)
    for now in (6.0, 11.0, 11.5, 12.0, 12.5, 13.0, 13.5, 14.0, 14.5, 15.0, 15.5, 16.0):
        assert fire(a) == now
        a.datagrams_to_send()
        a.receive_control(bogus, frame.decode_header(bogus, len(bogus)), B_ADDR, now)
    assert not a.peers[B_ID].established


def test_malformed_control_bodies_are_counted_per_peer() -> None:
    a, _ = pair()
    short_beat = bytearray(frame.HEADER_SIZE + 4)
    frame.encode_header(short_beat, MessageType.HEARTBEAT, 4, B_ID, A_ID)
    a.receive_control(short_beat, frame.decode_header(short_beat, len(short_beat)), B_ADDR, 1.0)
    data = frame.encode_data(B_ID, A_ID, [bytes(30)])  # not a control frame
    a.receive_control(data, frame.decode_header(data, len(data)), B_ADDR, 1.0)
    assert nonzero(a.drops) == {"heartbeat": 1, "type": 1}
    assert nonzero(a.peers[B_ID].counters.drops) == {"heartbeat": 1, "type": 1}
    assert a.datagrams_to_send() == []


def test_drop_counts_globally_and_per_peer() -> None:
    a, _ = pair()
    peer = a.peers[B_ID]
    a.drop("too_big", peer)
    a.drop("too_big", peer)
    a.drop("no_route")
    assert nonzero(a.drops) == {"too_big": 2, "no_route": 1}
    assert nonzero(peer.counters.drops) == {"too_big": 2}


# -- peer set --------------------------------------------------------------------------------


def test_set_peers_keeps_remaining_state_and_drops_removed() -> None:
    a, b = pair()
    a.set_peers([B_SPEC, C_SPEC], 0.0)
    establish(a, b, at=1.0)
    kept = a.peers[B_ID]
    kept.counters.tx_packets = 5
    assert a.forwarding.peer_for(ip("10.32.3.1")) is not None

    moved_b = PeerSpec(B_ID, "node-b", ("192.0.2.22", 7000), (B_BLOCK, NET("10.32.9.0/24")))
    d_spec = PeerSpec(0xD4, "node-d", ("192.0.2.4", 6783), (NET("10.32.4.0/24"),))
    a.set_peers([moved_b, d_spec, A_SPEC], 50.0)  # our own spec is ignored

    assert set(a.peers) == {B_ID, 0xD4}
    assert a.peers[B_ID] is kept
    assert kept.established and kept.counters.tx_packets == 5 and kept.spec == moved_b
    assert kept.send_to == ("192.0.2.22", 7000)
    assert a.forwarding.peer_for(ip("10.32.3.1")) is None  # c's block is gone
    assert a.forwarding.peer_for(ip("10.32.9.1")) is kept  # b's new block routes
    assert a.forwarding.peer_for(ip("10.32.4.1")) is a.peers[0xD4]
    fresh = a.peers[0xD4]
    assert not fresh.established and 50.0 <= fresh.next_heartbeat_at <= 50.125
    # The kept peer's next heartbeat goes to its new address.
    a.handle_timer(kept.next_heartbeat_at)
    addrs = {addr for _, addr in a.datagrams_to_send()}
    assert ("192.0.2.22", 7000) in addrs


def test_set_peers_to_nothing() -> None:
    a, _ = pair()
    a.set_peers([], 0.0)
    assert a.peers == {}
    assert a.get_timer() is None
    assert a.forwarding.peer_for(ip("10.32.2.1")) is None
    a.handle_timer(100.0)
    assert a.datagrams_to_send() == []


def test_get_timer_is_the_earliest_deadline() -> None:
    a = core(A_ID, A_UID, A_BLOCK, [B_SPEC, C_SPEC])
    b = core(B_ID, B_UID, B_BLOCK, [A_SPEC])
    assert Sleeve(A_ID, A_UID, [A_BLOCK], 1400).get_timer() is None
    # b established (next beat slow), c not (next beat fast): c's deadline comes first.
    a.handle_timer(1.0)
    for data, addr in a.datagrams_to_send():
        if addr == B_ADDR:
            b.receive_control(data, frame.decode_header(data, len(data)), A_ADDR, 1.0)
    deliver(b, B_ADDR, a, 1.0)
    assert a.peers[B_ID].next_heartbeat_at == 6.0
    assert a.peers[C_ID].next_heartbeat_at == 1.5
    assert a.get_timer() == 1.5
    # c removed: only b's slow deadline is left.
    a.set_peers([B_SPEC], 2.0)
    assert a.get_timer() == 6.0


def test_outputs_drain() -> None:
    a, b = pair()
    establish(a, b)
    assert a.events() != []
    assert a.events() == []
    a.handle_timer(100.0)
    assert len(a.datagrams_to_send()) == 1
    assert a.datagrams_to_send() == []
