"""The handshake, back to back: acceptance both ways and every refusal, seen from both ends."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gossip.handshake import Accepted, Handshake, Hello, Refused, peer_refusal
from gossip.wire import Decoder, MessageType, Preamble, encode

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
