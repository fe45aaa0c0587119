"""The handshake, back to back: acceptance both ways and every refusal, seen from both ends."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from gossip.handshake import (
    CONFIRM,
    LABELS,
    Accepted,
    Handshake,
    Hello,
    Refused,
    peer_refusal,
)
from gossip.secret import SecretError, Secrets, derive, stretch
from gossip.session import PIECE
from gossip.wire import DecodeError, Decoder, Message, MessageType, Preamble, encode

ALICE = Hello(
    name="aa:00:00:00:00:01",
    nickname="alice",
    uid=11,
    incarnation=1,
    data_endpoint=("10.0.0.1", 6784),
    control_endpoint=("10.0.0.1", 6783),
    features=("chunks",),
)
BOB = Hello(
    name="bb:00:00:00:00:02",
    nickname="bob",
    uid=22,
    incarnation=5,
    data_endpoint=("10.0.0.2", 6784),
    control_endpoint=("10.0.0.2", 6783),
)
PREAMBLE = Preamble(1, 1).encode()


def results(a: Handshake, b: Handshake) -> tuple[Any, Any]:
    """Both start at once and exchange everything they have, in one chunk each way."""
    to_b, to_a = a.start(), b.start()
    return a.receive(to_a), b.receive(to_b)


def refused(result: object) -> Refused:
    assert isinstance(result, Refused), result
    return result


def accepted(result: object) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


def refuse_message(data: bytes) -> str:
    """The reason of the REFUSE message in bytes a side queued after its refusal."""
    [(msg_type, fields)] = Decoder().feed(data)
    assert msg_type is MessageType.REFUSE
    return str(fields["reason"])


def test_accepted_both_ways() -> None:
    a, b = Handshake(ALICE, initiator=True), Handshake(BOB.to_fields(), initiator=False)
    ra, rb = map(accepted, results(a, b))
    assert (ra.remote, ra.version, ra.initiator, ra.messages) == (BOB, 1, True, [])
    assert (rb.remote, rb.version, rb.initiator, rb.messages) == (ALICE, 1, False, [])
    assert a.data_to_send() == b.data_to_send() == b""


def test_byte_by_byte_completes_on_the_last_byte() -> None:
    a, b = Handshake(ALICE, initiator=True), Handshake(BOB, initiator=False)
    a.start()
    data = b.start()
    for i in range(len(data) - 1):
        assert a.receive(data[i : i + 1]) is None
    assert accepted(a.receive(data[-1:])).remote == BOB


def test_messages_after_hello_are_handed_over() -> None:
    a = Handshake(ALICE, initiator=True)
    a.start()
    rest = encode(MessageType.REQUEST, names=["1"]) + encode(MessageType.REQUEST, names=["2"])
    result = accepted(a.receive(Handshake(BOB, False).start() + rest[:-3]))
    assert result.messages == [(MessageType.REQUEST, {"names": ["1"]})]
    assert result.decoder.feed(rest[-3:]) == [(MessageType.REQUEST, {"names": ["2"]})]
    with pytest.raises(RuntimeError):
        a.receive(b"more")


def test_unknown_hello_fields_are_ignored() -> None:
    a = Handshake(ALICE, initiator=True)
    a.start()
    hello = encode(MessageType.HELLO, **BOB.to_fields(), shiny=[1, 2])
    assert accepted(a.receive(PREAMBLE + hello)).remote == BOB


def test_version_mismatch_seen_by_both() -> None:
    a, b = Handshake(ALICE, True), Handshake(BOB, False, versions=(2, 3))
    ra, rb = map(refused, results(a, b))
    assert ra.reason == "protocol version mismatch: ours 1..1, theirs 2..3"
    assert rb.reason == "protocol version mismatch: ours 2..3, theirs 1..1"
    assert refuse_message(a.data_to_send()) == ra.reason
    assert refuse_message(b.data_to_send()) == rb.reason


def test_newer_peer_negotiates_down() -> None:
    a, b = Handshake(ALICE, True), Handshake(BOB, False, versions=(1, 4))
    assert [accepted(r).version for r in results(a, b)] == [1, 1]


def test_name_collision_seen_by_both() -> None:
    impostor = dataclasses.replace(BOB, name=ALICE.name, nickname="mallory")
    a, b = Handshake(ALICE, True), Handshake(impostor, False)
    ra, rb = map(refused, results(a, b))
    name = ALICE.name
    assert ra.reason == f"name collision: peer {name}(mallory) and us (alice) both use name {name}"
    assert rb.reason == f"name collision: peer {name}(alice) and us (mallory) both use name {name}"
    assert (ra.remote, rb.remote, ra.by_peer) == (impostor, ALICE, False)
    assert refuse_message(a.data_to_send()) == ra.reason
    assert refuse_message(b.data_to_send()) == rb.reason


def test_connection_to_ourself_seen_by_both() -> None:
    a, b = Handshake(ALICE, True), Handshake(ALICE, False)
    assert [refused(r).reason for r in results(a, b)] == ["cannot connect to ourself"] * 2
    assert refuse_message(a.data_to_send()) == "cannot connect to ourself"


def test_refusal_trailing_a_hello_refuses() -> None:
    """Sequential: bob refuses alice's bytes; alice then gets bob's HELLO and REFUSE together."""
    a, b = Handshake(ALICE, True), Handshake(BOB, False)
    to_b, to_a = a.start(), b.start()
    rb = refused(b.receive(to_b[: len(PREAMBLE)] + b"\x00\x00\x00\x01\xc1"))
    ra = refused(a.receive(to_a + b.data_to_send()))
    assert rb.reason == "malformed message: msgpack: FormatError"
    assert (ra.reason, ra.by_peer, ra.remote) == ("refused by peer: " + rb.reason, True, BOB)


def test_refusal_arriving_after_acceptance_is_for_the_caller() -> None:
    a = Handshake(ALICE, True)
    a.start()
    result = accepted(a.receive(Handshake(BOB, False).start()))
    [(msg_type, fields)] = result.decoder.feed(encode(MessageType.REFUSE, reason="busy"))
    assert (msg_type, peer_refusal(fields)) == (MessageType.REFUSE, "refused by peer: busy")


def hello_without(key: str, **changes: Any) -> bytes:
    fields = {**ALICE.to_fields(), **changes}
    fields.pop(key, None)
    return encode(MessageType.HELLO, **fields)


BAD_STREAMS = [
    (b"GET / HTTP/1.1\r\n", "malformed preamble: bad magic b'GET '"),
    (b"WPYG\x02\x01", "malformed preamble: empty version range 2..1"),
    (PREAMBLE + b"\x00\x00\x00\x03abc", "malformed message: msgpack: ExtraData"),
    (PREAMBLE + b"\xff\xff\xff\xff", "malformed message: too_large: declared 4294967295 bytes"),
    (PREAMBLE + encode(MessageType.REQUEST), "expected HELLO, got REQUEST"),
    (PREAMBLE + encode(99), "expected HELLO, got type 99"),
    (PREAMBLE + hello_without("uid"), "malformed hello: missing field 'uid'"),
    (PREAMBLE + hello_without("", uid="7"), "malformed hello: field 'uid' has the wrong type str"),
    (PREAMBLE + hello_without("", uid=True), "malformed hello: field 'uid' has the wrong type"),
    (PREAMBLE + hello_without("", uid=-1), "malformed hello: field 'uid' is out of range"),
    (PREAMBLE + hello_without("", name="alice"), "malformed hello: field 'name' is not six hex"),
    (PREAMBLE + hello_without("", name=ALICE.name + "\n"), "malformed hello: field 'name'"),
    (PREAMBLE + hello_without("", features=[1]), "malformed hello: field 'features' must be"),
    (PREAMBLE + hello_without("", data_endpoint=["h"]), "malformed hello: field 'data_endpoint'"),
    (
        PREAMBLE + hello_without("", control_endpoint=["h", 70000]),
        "malformed hello: field 'control_endpoint' must be [host, port]",
    ),
]


@pytest.mark.parametrize(("stream", "reason"), BAD_STREAMS)
def test_malformed_input_refused_and_reported_to_the_sender(stream: bytes, reason: str) -> None:
    """Bob refuses a bad stream; alice, standing in for its sender, hears why."""
    b = Handshake(BOB, initiator=False)
    b.start()
    rb = refused(b.receive(stream))
    assert rb.reason.startswith(reason)
    assert not rb.by_peer
    a = Handshake(ALICE, initiator=True)
    a.start()
    ra = refused(a.receive(Handshake(BOB, False).start() + b.data_to_send()))
    assert ra.reason == "refused by peer: " + rb.reason
    assert ra.by_peer
    assert a.data_to_send() == b""  # nothing more said to a peer that refused us


def test_truncated_hello_waits_then_completes() -> None:
    a = Handshake(ALICE, initiator=True)
    a.start()
    data = Handshake(BOB, False).start()
    assert a.receive(data[: len(PREAMBLE) + 10]) is None
    assert a.result is None
    assert accepted(a.receive(data[len(PREAMBLE) + 10 :])).remote == BOB


def test_refusal_is_final() -> None:
    b = Handshake(BOB, initiator=False)
    b.start()
    first = refused(b.receive(b"garbage!"))
    assert b.receive(Handshake(ALICE, True).start()) is first
    assert refuse_message(b.data_to_send()) == first.reason


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"reason": "cannot connect to ourself"}, "refused by peer: cannot connect to ourself"),
        ({}, "refused by peer: (no reason given)"),
        ({"reason": 5}, "refused by peer: (no reason given)"),
        ({"reason": "x" * 1000}, "refused by peer: " + "x" * 200),
    ],
)
def test_peer_refusal(fields: dict[str, Any], reason: str) -> None:
    assert peer_refusal(fields) == reason


def test_misuse_is_a_runtime_error() -> None:
    h = Handshake(ALICE, initiator=True)
    with pytest.raises(RuntimeError):
        h.receive(b"")
    h.start()
    with pytest.raises(RuntimeError):
        h.start()


def test_local_hello_is_checked() -> None:
    with pytest.raises(ValueError, match="missing field 'nickname'"):
        Handshake({"name": ALICE.name}, initiator=True)


def test_hello_fields_round_trip() -> None:
    assert Hello.from_fields(ALICE.to_fields()) == ALICE
    assert str(ALICE) == "aa:00:00:00:00:01(alice)"


# -- with a secret ---------------------------------------------------------------------------

A, B = b"secret A", b"secret B"
OLD_FIELDS = set(ALICE.to_fields())


def secrets(*accepted: bytes) -> Secrets:
    return Secrets(accepted)


def shake(
    a: Handshake, b: Handshake, tamper: Callable[[bytes, bool], bytes] = lambda d, to_b: d
) -> tuple[Any, Any]:
    """Both start at once; each round delivers what the other has queued (through
    ``tamper(data, to_b)``) until nothing more is said."""
    out = {a: a.start(), b: b.start()}
    while out[a] or out[b]:
        for me, other in ((a, b), (b, a)):
            data, out[other] = out[other], b""
            if data and not isinstance(me.result, Accepted):
                me.receive(tamper(data, me is b))
            out[me] += me.data_to_send()
    return a.result, b.result


def messages(stream: bytes) -> list[Message]:
    return Decoder().feed(stream[len(PREAMBLE) :] if stream.startswith(b"WPYG") else stream)


def replace_hello(stream: bytes, **changes: Any) -> bytes:
    """``stream`` (a preamble and a HELLO) with fields of the HELLO changed."""
    [(msg_type, fields)] = messages(stream)
    assert msg_type is MessageType.HELLO
    return stream[: len(PREAMBLE)] + encode(MessageType.HELLO, **{**fields, **changes})


def test_a_shared_secret_is_proved_and_a_session_agreed() -> None:
    a = Handshake(ALICE, True, secrets=secrets(A))
    b = Handshake(BOB, False, secrets=secrets(A))
    ra, rb = map(accepted, shake(a, b))
    assert (ra.remote.name, rb.remote.name) == (BOB.name, ALICE.name)
    assert ra.authenticated and rb.authenticated
    assert ra.session_key == rb.session_key and ra.session_key is not None
    assert len(ra.session_key) == 32 and (ra.secret_index, rb.secret_index) == (0, 0)


def test_the_secret_is_never_sent_and_every_session_key_is_fresh() -> None:
    sent = bytearray()

    def record(data: bytes, to_b: bool) -> bytes:
        sent.extend(data)
        return data

    first = accepted(shake(Handshake(ALICE, True, secrets=secrets(A)),
                           Handshake(BOB, False, secrets=secrets(A)), record)[0])  # fmt: skip
    assert A not in sent and stretch(A) not in sent
    second = accepted(shake(Handshake(ALICE, True, secrets=secrets(A)),
                            Handshake(BOB, False, secrets=secrets(A)))[0])  # fmt: skip
    assert first.session_key != second.session_key
    assert first.remote.kx != second.remote.kx  # a new ephemeral key per connection


@pytest.mark.parametrize("dialer_first", [True, False])
def test_a_different_password_is_refused_by_both(dialer_first: bool) -> None:
    a = Handshake(ALICE, True, secrets=secrets(A))
    b = Handshake(BOB, False, secrets=secrets(B))
    sent_by_b = bytearray()

    def record(data: bytes, to_b: bool) -> bytes:
        if not to_b:
            sent_by_b.extend(data)
        return data

    ra, rb = map(refused, shake(a, b, record))
    assert (ra.reason, ra.label, ra.by_peer) == (
        "peer bb:00:00:00:00:02(bob) uses a different password",
        "password_mismatch",
        True,
    )
    assert (rb.reason, rb.label, rb.by_peer) == (
        "peer aa:00:00:00:00:01(alice) uses a different password",
        "password_mismatch",
        False,
    )
    types = [t for t, _ in messages(bytes(sent_by_b))]
    assert types == [MessageType.HELLO, MessageType.REFUSE]  # no CONFIRM: nothing to test offline


@pytest.mark.parametrize(("alice", "bob"), [((A,), ()), ((), (A,))])
@pytest.mark.parametrize("alice_dials", [True, False])
def test_one_side_without_a_password_is_refused_by_both(
    alice: tuple[bytes, ...], bob: tuple[bytes, ...], alice_dials: bool
) -> None:
    a = Handshake(ALICE, alice_dials, secrets=secrets(*alice))
    b = Handshake(BOB, not alice_dials, secrets=secrets(*bob))
    ra, rb = map(refused, shake(a, b))
    has, lacks = (ra, rb) if alice else (rb, ra)
    assert has.reason.endswith("has no password but we do") and has.label == "no_password"
    assert lacks.reason.endswith("has a password but we do not")
    assert lacks.label == "password_unexpected"
    assert not ra.by_peer and not rb.by_peer  # each end finds it on its own


ROLLING = [(A,), (A, B), (B, A), (B,)]


@pytest.mark.parametrize("step", range(len(ROLLING)))
@pytest.mark.parametrize("upgraded_dials", [True, False])
def test_a_rolling_change_keeps_every_pair_connected(step: int, upgraded_dials: bool) -> None:
    """During each step of [A] -> [A, B] -> [B, A] -> [B], a node already on the new list and
    one still on the old one agree on the first of the dialer's secrets the acceptor accepts."""
    old, new = ROLLING[max(step - 1, 0)], ROLLING[step]
    dialer, acceptor = (new, old) if upgraded_dials else (old, new)
    a = Handshake(ALICE, True, secrets=secrets(*dialer))
    b = Handshake(BOB, False, secrets=secrets(*acceptor))
    ra, rb = map(accepted, shake(a, b))
    used = next(s for s in dialer if s in acceptor)
    assert (ra.secret_index, rb.secret_index) == (dialer.index(used), acceptor.index(used))
    assert ra.session_key == rb.session_key


def test_skipping_a_step_of_the_rolling_change_partitions() -> None:
    a = Handshake(ALICE, True, secrets=secrets(A))
    b = Handshake(BOB, False, secrets=secrets(B, C := b"secret C"))
    assert [refused(r).label for r in shake(a, b)] == ["password_mismatch"] * 2
    assert C not in (A, B)


def test_a_replayed_dialer_is_refused() -> None:
    """Everything a real dialer sent, replayed to a fresh acceptor: its key is new, so the old
    confirmation does not match."""
    from_a = bytearray()

    def record(data: bytes, to_b: bool) -> bytes:
        if to_b:
            from_a.extend(data)
        return data

    accepted(shake(Handshake(ALICE, True, secrets=secrets(A)),
                   Handshake(BOB, False, secrets=secrets(A)), record)[1])  # fmt: skip
    b = Handshake(BOB, False, secrets=secrets(A))
    b.start()
    rb = refused(b.receive(bytes(from_a)))
    assert rb.label == "bad_confirm"
    assert rb.reason.startswith("peer aa:00:00:00:00:01(alice) failed the password check")


@pytest.mark.parametrize("field", ["name", "nickname", "data_endpoint", "features"])
@pytest.mark.parametrize("towards_b", [True, False])
def test_a_tampered_hello_fails_the_confirmation(field: str, towards_b: bool) -> None:
    """A man in the middle changes one field of either HELLO (the name bound to the session
    among them): neither side accepts."""
    value = {"name": "cc:00:00:00:00:03", "nickname": "mallory",
             "data_endpoint": ["10.9.9.9", 6784], "features": ["evil"]}[field]  # fmt: skip

    def tamper(data: bytes, to_b: bool) -> bytes:
        if to_b == towards_b and data.startswith(b"WPYG"):
            return replace_hello(data, **{field: value})
        return data

    a = Handshake(ALICE, True, secrets=secrets(A))
    b = Handshake(BOB, False, secrets=secrets(A))
    ra, rb = shake(a, b, tamper)
    assert not isinstance(ra, Accepted) and not isinstance(rb, Accepted)
    assert refused(ra).label == "bad_confirm"  # the dialer checks first


def test_a_truncated_confirm_is_refused() -> None:
    b = Handshake(BOB, False, secrets=secrets(A))
    b.start()
    hello = Handshake(ALICE, True, secrets=secrets(A)).start()
    assert b.receive(hello) is None
    [(msg_type, _)] = messages(b.data_to_send())
    assert msg_type == CONFIRM
    rb = refused(b.receive(encode(CONFIRM, mac=b"\x00" * 16)))
    assert (rb.reason, rb.label) == ("malformed confirm: field 'mac' is not 32 bytes", "malformed")


def test_a_confirm_cut_short_waits_and_says_nothing() -> None:
    """Part of the acceptor's CONFIRM: the dialer neither accepts nor answers (the driver's
    timeout closes such a connection); the rest completes it."""
    a = Handshake(ALICE, True, secrets=secrets(A))
    b = Handshake(BOB, False, secrets=secrets(A))
    to_b, to_a = a.start(), b.start()
    assert b.receive(to_b) is None
    to_a += b.data_to_send()
    assert a.receive(to_a[:-5]) is None and a.data_to_send() == b""
    assert accepted(a.receive(to_a[-5:])).authenticated
    assert [t for t, _ in messages(a.data_to_send())] == [CONFIRM]


def test_a_dialer_confirm_with_a_bad_index_is_refused() -> None:
    a = Handshake(ALICE, True, secrets=secrets(A))
    a.start()
    data = Handshake(BOB, False, secrets=secrets(A)).start() + encode(CONFIRM, i=3, mac=bytes(32))
    ra = refused(a.receive(data))
    assert (ra.reason, ra.label) == (
        "malformed confirm: field 'i' names no hint of ours",
        "malformed",
    )


def test_nothing_is_read_between_hello_and_confirm() -> None:
    b = Handshake(BOB, False, secrets=secrets(A))
    b.start()
    data = Handshake(ALICE, True, secrets=secrets(A)).start() + encode(MessageType.TOPOLOGY)
    rb = refused(b.receive(data))
    assert (rb.reason, rb.label) == ("expected CONFIRM, got TOPOLOGY", "unexpected")


def test_messages_after_the_dialer_confirm_are_handed_over() -> None:
    a = Handshake(ALICE, True, secrets=secrets(A))
    b = Handshake(BOB, False, secrets=secrets(A))
    to_b, to_a = a.start(), b.start()
    assert b.receive(to_b) is None
    accepted(a.receive(to_a + b.data_to_send()))
    rest = encode(MessageType.REQUEST, names=["1"])
    rb = accepted(b.receive(a.data_to_send() + rest))
    assert rb.messages == [(MessageType.REQUEST, {"names": ["1"]})]


@pytest.mark.parametrize("alice_dials", [True, False])
def test_both_dialling_is_refused(alice_dials: bool) -> None:
    a = Handshake(ALICE, alice_dials, secrets=secrets(A))
    b = Handshake(BOB, alice_dials, secrets=secrets(A))
    assert [refused(r).label for r in shake(a, b)] == ["role", "role"]


def test_a_low_order_key_is_refused() -> None:
    b = Handshake(BOB, False, secrets=secrets(A))
    b.start()
    dialer = Handshake(ALICE, True, secrets=secrets(A))
    stream = dialer.start()
    zero = bytes(32)
    hints = Secrets((A,)).hints(zero)
    rb = refused(b.receive(replace_hello(stream, kx=zero, hints=hints)))
    assert (rb.reason, rb.label) == ("malformed hello: field 'kx' is not a usable key", "malformed")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kx": b"short"}, "field 'kx' must be 32 bytes"),
        ({"kx": "text" * 8}, "field 'kx' has the wrong type str"),
        ({"hints": [b"12345678"] * 9}, "field 'hints' must hold 1..8 hints"),
        ({"hints": []}, "field 'hints' must hold 1..8 hints"),
        ({"hints": [b"1234"]}, "field 'hints' must be a list of 8-byte hints"),
    ],
)
def test_malformed_secret_fields_are_refused(changes: dict[str, Any], reason: str) -> None:
    b = Handshake(BOB, False, secrets=secrets(A))
    b.start()
    stream = replace_hello(Handshake(ALICE, True, secrets=secrets(A)).start(), **changes)
    rb = refused(b.receive(stream))
    assert (rb.reason, rb.label) == (f"malformed hello: {reason}", "malformed")


def test_hints_without_a_key_are_malformed() -> None:
    with pytest.raises(ValueError, match="field 'hints' without field 'kx'"):
        Hello.from_fields({**ALICE.to_fields(), "hints": [b"12345678"]})


def test_without_secrets_the_hello_is_as_before() -> None:
    """Peers that predate secrets send (and expect) exactly the old fields."""
    h = Handshake(ALICE, True)
    [(msg_type, fields)] = messages(h.start())
    assert msg_type is MessageType.HELLO and set(fields) == OLD_FIELDS
    old_peer = PREAMBLE + encode(MessageType.HELLO, **BOB.to_fields())
    assert not accepted(h.receive(old_peer)).authenticated


def test_an_old_peer_meets_a_node_with_a_secret() -> None:
    a = Handshake(ALICE, True, secrets=secrets(A))
    a.start()
    ra = refused(a.receive(PREAMBLE + encode(MessageType.HELLO, **BOB.to_fields())))
    assert (ra.reason, ra.label) == ("peer bb:00:00:00:00:02(bob) has no password but we do",
                                     "no_password")  # fmt: skip


def test_every_label_is_declared() -> None:
    assert {"password_mismatch", "no_password", "password_unexpected", "bad_confirm"} <= set(LABELS)


# -- the sealed control stream (gossip/session.py) -------------------------------------------


def sealed_pair(a_seal: bool = True, b_seal: bool = True) -> tuple[Accepted, Accepted]:
    a = Handshake(ALICE, True, secrets=secrets(A), seal=a_seal)
    b = Handshake(BOB, False, secrets=secrets(A), seal=b_seal)
    ra, rb = map(accepted, shake(a, b))
    return ra, rb


def test_a_sealed_session_carries_messages_both_ways() -> None:
    ra, rb = sealed_pair()
    assert ra.sealed and rb.sealed
    request = encode(MessageType.REQUEST, names=["x"])
    on_wire = ra.seal(request)
    assert b"names" not in on_wire and len(on_wire) > len(request)
    assert rb.decoder.feed(on_wire) == [(MessageType.REQUEST, {"names": ["x"]})]
    goodbye = rb.seal(encode(MessageType.GOODBYE))
    assert ra.decoder.feed(goodbye[:5]) == []
    assert ra.decoder.feed(goodbye[5:]) == [(MessageType.GOODBYE, {})]


@pytest.mark.parametrize(("a_seal", "b_seal"), [(True, False), (False, True), (False, False)])
def test_sealing_needs_both_to_offer_it(a_seal: bool, b_seal: bool) -> None:
    ra, rb = sealed_pair(a_seal, b_seal)
    assert not ra.sealed and not rb.sealed and ra.authenticated
    request = encode(MessageType.REQUEST, names=["x"])
    assert ra.seal(request) == request
    assert rb.decoder.feed(request) == [(MessageType.REQUEST, {"names": ["x"]})]


def test_sealing_is_not_offered_without_a_secret() -> None:
    [(_, fields)] = messages(Handshake(ALICE, True, seal=True).start())
    assert fields["features"] == list(ALICE.features)


def test_sealed_messages_right_after_the_confirm_are_opened() -> None:
    a = Handshake(ALICE, True, secrets=secrets(A), seal=True)
    b = Handshake(BOB, False, secrets=secrets(A), seal=True)
    to_b, to_a = a.start(), b.start()
    b.receive(to_b)
    ra = accepted(a.receive(to_a + b.data_to_send()))
    rest = ra.seal(encode(MessageType.REQUEST, names=["1"]))
    rb = accepted(b.receive(a.data_to_send() + rest))
    assert rb.messages == [(MessageType.REQUEST, {"names": ["1"]})]


def test_stripping_the_offer_to_seal_fails_the_confirmation() -> None:
    def strip(data: bytes, to_b: bool) -> bytes:
        if not to_b and data.startswith(b"WPYG"):
            return replace_hello(data, features=list(BOB.features))
        return data

    a = Handshake(ALICE, True, secrets=secrets(A), seal=True)
    b = Handshake(BOB, False, secrets=secrets(A), seal=True)
    assert refused(shake(a, b, strip)[0]).label == "bad_confirm"


def test_a_plain_message_injected_into_a_sealed_stream_kills_it() -> None:
    ra, rb = sealed_pair()
    with pytest.raises(DecodeError) as caught:
        rb.decoder.feed(encode(MessageType.TOPOLOGY, records=[]))
    assert caught.value.reason == "unsealed"
    with pytest.raises(DecodeError):  # dead from then on
        rb.decoder.feed(ra.seal(encode(MessageType.GOODBYE)))


@pytest.mark.parametrize("attack", ["replay", "alter", "reflect", "drop"])
def test_a_sealed_message_opens_once_in_order_and_unaltered(attack: str) -> None:
    ra, rb = sealed_pair()
    first = ra.seal(encode(MessageType.REQUEST, names=["1"]))
    second = ra.seal(encode(MessageType.REQUEST, names=["2"]))
    if attack == "replay":
        assert len(rb.decoder.feed(first)) == 1
        bad = first
    elif attack == "alter":
        bad = first[:-1] + bytes([first[-1] ^ 1])
    elif attack == "reflect":  # bob's own words sent back to him
        bad = rb.seal(encode(MessageType.REQUEST, names=["1"]))
    else:
        bad = second
    with pytest.raises(DecodeError) as caught:
        rb.decoder.feed(bad)
    assert caught.value.reason == "sealed"


def test_large_data_travels_in_pieces() -> None:
    ra, rb = sealed_pair()
    big = encode(MessageType.REQUEST, names=["n" * 1000] * 200)
    on_wire = ra.seal(big)
    assert len(messages(on_wire)) == -(-len(big) // PIECE) > 1
    assert rb.decoder.feed(on_wire) == [(MessageType.REQUEST, {"names": ["n" * 1000] * 200})]


# -- gossip/secret.py ------------------------------------------------------------------------


def test_hints_are_salted_and_name_only_their_secret() -> None:
    s = Secrets((A, B))
    one, two = s.hints(b"salt-1"), s.hints(b"salt-2")
    assert len(one) == 2 and all(len(h) == 8 for h in one) and set(one).isdisjoint(two)
    assert Secrets((B,)).match(one, b"salt-1") == (1, stretch(B))
    assert Secrets((b"other",)).match(one, b"salt-1") is None
    assert Secrets((B,)).match(one, b"salt-2") is None


def test_derive_separates_by_label_and_salt() -> None:
    key = b"k" * 32
    assert derive(key, b"x") == derive(key, b"x") and len(derive(key, b"x", length=64)) == 64
    assert len({derive(key, b"x"), derive(key, b"y"), derive(key, b"x", salt=b"s")}) == 3


@pytest.mark.parametrize(
    ("accepted", "why"),
    [((b"",), "empty"), ((b"x" * 4097,), "longer than"), ((A, A), "twice"), ((A,) * 9, "at most")],
)
def test_secrets_keep_their_rules(accepted: tuple[bytes, ...], why: str) -> None:
    with pytest.raises(SecretError, match=why):
        Secrets(accepted)


def test_no_secret() -> None:
    assert not Secrets.none().enabled and Secrets.none().hints(b"s") == []
    with pytest.raises(ValueError):
        _ = Secrets.none().current
