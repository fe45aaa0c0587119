"""The sleeve's keyring (overlay/seal.py) without a driver: frames sealed by one node open only
at the node they are for, once, unchanged; anything altered, replayed, sealed under a secret
the receiver does not accept or under a key it no longer holds is refused with its reason;
key pairs renew, switch and retire on the clock the caller passes."""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.identity import peer_id
from gossip.secret import Secrets
from overlay import frame
from overlay.forwarding import DROP, RELAY, Forwarding
from overlay.frame import FLAG_AEAD, HEADER_SIZE, SEALED_BODY_AT, DecodeError, MessageType
from overlay.keys import SLEEVE_KEY, parse_sleeve_key
from overlay.peer import PeerSpec, PeerState
from overlay.replay import WINDOW, ReplayWindow
from overlay.seal import AEAD_EXTRA, RETIRE_DELAY, SWITCH_DELAY, Keyring

A, B, C = "aa:00:00:00:00:01", "bb:00:00:00:00:02", "cc:00:00:00:00:03"
S1, S2 = Secrets((b"first secret",)), Secrets((b"second secret",))
BOTH_12, BOTH_21 = (
    Secrets((b"first secret", b"second secret")),
    Secrets((b"second secret", b"first secret")),
)
RENEW = 100.0


def spec(name: str, ring: Keyring | None = None, key: bytes | None = None) -> PeerSpec:
    material = key if key is not None else (ring.sleeve_key if ring else b"")
    net = ipaddress.IPv4Network("10.32.0.0/24")
    return PeerSpec(peer_id(name), name[:2], ("192.0.2.1", 6783), (net,), None, name, material)


def pair(
    a_secrets: Secrets = S1, b_secrets: Secrets = S1, now: float = 0.0
) -> tuple[Keyring, Keyring]:
    a = Keyring(A, a_secrets, now, renew_interval=RENEW)
    b = Keyring(B, b_secrets, now, renew_interval=RENEW)
    a.follow([spec(B, b)])
    b.follow([spec(A, a)])
    return a, b


def plain(body: bytes = b"some pod payload", source: str = A, dest: str = B) -> bytes:
    header = bytearray(HEADER_SIZE)
    frame.encode_header(header, MessageType.DATA, len(body), peer_id(source), peer_id(dest))
    return bytes(header) + body


def seal(ring: Keyring, data: bytes) -> bytearray:
    sealed = ring.seal(data[:HEADER_SIZE], data[HEADER_SIZE:])
    assert sealed is not None
    return bytearray(sealed)


def refused(ring: Keyring, data: bytes | bytearray) -> str:
    with pytest.raises(DecodeError) as exc:
        ring.open(memoryview(bytearray(data)))
    return exc.value.reason


def test_a_sealed_frame_opens_unchanged_at_its_destination_only() -> None:
    a, b = pair()
    data = plain()
    sealed = seal(a, data)
    assert len(sealed) == len(data) + AEAD_EXTRA
    assert sealed[2] & FLAG_AEAD and b"pod payload" not in sealed
    header = frame.decode_header(sealed, len(sealed))
    assert (header.length, header.body_offset) == (len(data) - HEADER_SIZE, SEALED_BODY_AT)
    assert bytes(b.open(memoryview(sealed))) == data
    c = Keyring(C, S1, 0.0)
    c.follow([spec(A, a), spec(B, b)])
    assert refused(c, sealed) == "unknown_key"  # a relay holds no key of the pair's


def test_a_frame_opens_once() -> None:
    a, b = pair()
    sealed = seal(a, plain())
    b.open(memoryview(bytearray(sealed)))
    assert refused(b, sealed) == "replay"


def test_frames_reordered_inside_the_window_open_once_each() -> None:
    a, b = pair()
    frames = [seal(a, plain(bytes([i]) * 20)) for i in range(5)]
    for i in (4, 0, 3, 1, 2):
        assert bytes(b.open(memoryview(bytearray(frames[i])))[HEADER_SIZE:]) == bytes([i]) * 20
    assert {refused(b, f) for f in frames} == {"replay"}


def test_a_frame_older_than_the_window_is_refused() -> None:
    a, b = pair()
    old = seal(a, plain())
    for _ in range(WINDOW):
        seal(a, plain())
    b.open(memoryview(seal(a, plain())))
    assert refused(b, old) == "replay"


@pytest.mark.parametrize(
    "at",
    [1, 4, 8, 16, HEADER_SIZE, HEADER_SIZE + 11, SEALED_BODY_AT, -1],
    ids=["type", "length", "source", "destination", "key_id", "counter", "body", "tag"],
)
def test_any_altered_byte_is_refused(at: int) -> None:
    a, b = pair()
    sealed = seal(a, plain())
    sealed[at] ^= 0x01
    assert refused(b, sealed) in {"auth", "unknown_key", "length", "type"}
    assert bytes(b.open(memoryview(seal(a, plain())))) == plain()  # the next one still opens


def test_a_relay_may_lower_the_hops() -> None:
    a, b = pair()
    sealed = seal(a, plain())
    sealed[frame.HOPS_AT] -= 1
    opened = b.open(memoryview(sealed))
    assert opened[frame.HOPS_AT] == frame.DEFAULT_HOPS - 1


def test_a_forged_frame_does_not_move_the_window() -> None:
    a, b = pair()
    good = seal(a, plain())
    forged = bytearray(good)
    frame.AEAD_EXTENSION.pack_into(
        forged, HEADER_SIZE, frame.AEAD_EXTENSION.unpack_from(good, HEADER_SIZE)[0], 1 << 62
    )
    assert refused(b, forged) == "auth"
    assert bytes(b.open(memoryview(good))) == plain()


def test_plain_and_malformed_frames_are_refused() -> None:
    _, b = pair()
    assert refused(b, plain()) == "plain"
    chunk = bytearray(HEADER_SIZE + 20)
    frame.encode_header(chunk, MessageType.DATA_CHUNK, 20, peer_id(A), peer_id(B))
    chunk[2] = FLAG_AEAD  # a sealed train's chunk: framing, opened only once reassembled
    assert refused(b, chunk) == "type"
    assert refused(b, b"\x01") == "short"


def test_a_wrong_secret_opens_nothing() -> None:
    a, b = pair(S1, S2)
    assert refused(b, seal(a, plain())) == "unknown_key"


def test_secrets_rotate_through_lists_that_share_one() -> None:
    """[A] -> [A, B] -> [B, A] -> [B]: each neighbouring pair of steps opens both ways."""
    steps = [S1, BOTH_12, BOTH_21, S2]
    for first, second in itertools.pairwise(steps):
        a, b = pair(first, second)
        assert bytes(b.open(memoryview(seal(a, plain())))) == plain()
        assert bytes(a.open(memoryview(seal(b, plain(source=B, dest=A))))) == plain(
            source=B, dest=A
        )
    a, b = pair(S1, BOTH_21)  # a step skipped: b seals under a secret a does not hold
    assert refused(a, seal(b, plain(source=B, dest=A))) == "unknown_key"


def test_secrets_change_while_running_without_a_gap_or_a_fresh_window() -> None:
    """The same rotation with no restart: each keyring takes the next list in turn (a before b)
    and frames open both ways after every change; a frame opened before a change is still a
    replay after it."""
    a, b = pair(S1, S1)
    sealed = seal(a, plain())
    b.open(memoryview(bytearray(sealed)))
    for step in (BOTH_12, BOTH_21, S2):
        for ring in (a, b):
            ring.accept(step)
            assert bytes(b.open(memoryview(seal(a, plain())))) == plain()
            back = plain(source=B, dest=A)
            assert bytes(a.open(memoryview(seal(b, back)))) == back
        if step is BOTH_12:
            assert refused(b, sealed) == "replay"
    assert refused(b, sealed) == "unknown_key"  # the first secret is held no more
    stale = Keyring(A, S1, 0.0)  # a node that kept only the old secret
    stale.follow([spec(B, b)])
    b.follow([spec(A, stale)])
    assert refused(b, seal(stale, plain())) == "unknown_key"
    with pytest.raises(ValueError):
        a.accept(Secrets.none())


def test_no_key_no_seal() -> None:
    a = Keyring(A, S1, 0.0)
    assert a.seal(plain()[:HEADER_SIZE], b"x") is None
    a.follow([spec(B, key=b"\x01" * 5), spec(C, key=SLEEVE_KEY.pack(1, 7, bytes(32)))])
    assert not a.can_seal(peer_id(B))  # not a key we read
    assert not a.can_seal(peer_id(C))  # a low-order point: no shared secret


def test_a_renewed_key_pair_seals_after_the_switch_and_the_old_one_opens_until_retired() -> None:
    a, b = pair()
    old_key = a.sleeve_key
    assert not a.handle_timer(RENEW - 1)
    assert a.handle_timer(RENEW)
    assert a.sleeve_key != old_key and parse_sleeve_key(a.sleeve_key) is not None
    assert bytes(b.open(memoryview(seal(a, plain())))) == plain()  # still the old pair
    b.follow([spec(A, a)])
    assert a.get_timer() == RENEW + SWITCH_DELAY
    a.handle_timer(RENEW + SWITCH_DELAY)
    assert bytes(b.open(memoryview(seal(a, plain())))) == plain()  # the new pair
    stale = Keyring(B, S1, 0.0)  # b as it was: it seals to a's old public key
    stale._pairs, stale._peers, stale._sealing = b._pairs, {}, {}
    stale.follow([spec(A, key=old_key)])
    late = seal(stale, plain(source=B, dest=A))
    assert bytes(a.open(memoryview(bytearray(late)))) == plain(source=B, dest=A)
    a.handle_timer(RENEW + RETIRE_DELAY)
    assert refused(a, seal(stale, plain(source=B, dest=A))) == "unknown_key"


def test_a_peer_that_leaves_and_returns_keeps_its_replay_window() -> None:
    a, b = pair()
    sealed = seal(a, plain())
    b.open(memoryview(bytearray(sealed)))
    b.follow([])
    b.follow([spec(A, a)])
    assert refused(b, sealed) == "replay"


def test_counters_never_repeat_across_peers() -> None:
    a = Keyring(A, S1, 0.0)
    b, c = Keyring(B, S1, 0.0), Keyring(C, S1, 0.0)
    a.follow([spec(B, b), spec(C, c)])
    counters = [
        frame.AEAD_EXTENSION.unpack_from(seal(a, plain(dest=d)), HEADER_SIZE)[1]
        for d in (B, C, B, C)
    ]
    assert counters == sorted(set(counters))


@given(st.lists(st.integers(0, 3 * WINDOW), max_size=200))
def test_the_replay_window_accepts_each_counter_once_like_a_set(counters: list[int]) -> None:
    window, seen, top = ReplayWindow(), set(), -1
    for counter in counters:
        expected = counter not in seen and counter > top - WINDOW
        assert window.fresh(counter) == expected
        if expected:
            window.accept(counter)
            seen.add(counter)
            top = max(top, counter)


def test_forwarding_relays_a_sealed_frame_and_never_parses_one_for_itself() -> None:
    a, b = pair()
    a_id, b_id, c_id = peer_id(A), peer_id(B), peer_id(C)
    peers = {b_id: PeerState(spec(B, b), 1400), a_id: PeerState(spec(A, a), 1400)}
    peers[a_id].accept_from = frozenset({"192.0.2.9"})
    relay = Forwarding(c_id, peers, lambda *args: None)
    sealed = seal(a, plain())
    assert relay.receive(memoryview(sealed), ("192.0.2.9", 6783), 0.0) == RELAY
    assert sealed[frame.HOPS_AT] == frame.DEFAULT_HOPS - 1
    assert bytes(b.open(memoryview(sealed))) == plain()[:3] + b"\x03" + plain()[4:]
    mine = Forwarding(b_id, {a_id: PeerState(spec(A, a), 1400)}, lambda *args: None)
    mine.peers[a_id].accept_from = frozenset({"192.0.2.1"})
    assert mine.receive(memoryview(seal(a, plain())), ("192.0.2.1", 6783), 0.0) == DROP
    assert mine.drops == Counter({"encrypted": 1})


def test_a_peer_that_keeps_publishing_new_keys_holds_a_bounded_number() -> None:
    a = Keyring(A, BOTH_12, 0.0)
    for _ in range(20):
        a.follow([spec(B, Keyring(B, S1, 0.0))])
    assert a.openings <= 2 * (2 + 1) * 2
    newest = Keyring(B, S1, 0.0)
    a.follow([spec(B, newest)])
    newest.follow([spec(A, a)])
    assert bytes(a.open(memoryview(seal(newest, plain(source=B, dest=A))))) == plain(
        source=B, dest=A
    )


RING_A, RING_B = pair()
SEALED = bytes(seal(RING_A, plain(b"x" * 64)))


@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda at, bit: SEALED[:at] + bytes([SEALED[at] ^ (1 << bit)]) + SEALED[at + 1 :],
            st.integers(0, len(SEALED) - 1),
            st.integers(0, 7),
        ),
        st.integers(0, len(SEALED) - 1).map(lambda n: SEALED[:n]),
    )
)
def test_open_refuses_any_altered_or_random_input_with_a_decode_error(data: bytes) -> None:
    """Only DecodeError escapes, and nothing but the frame as sealed ever opens (a changed hops
    byte aside, which relays may lower)."""
    try:
        opened = bytes(RING_B.open(memoryview(bytearray(data))))
    except DecodeError:
        return
    assert data[:3] + data[4:] == SEALED[:3] + SEALED[4:]
    assert opened[frame.HEADER_SIZE :] == b"x" * 64
