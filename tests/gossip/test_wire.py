"""The control-connection wire format: round trips, framing under any chunking, every error."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip import wire
from gossip.wire import DecodeError, Decoder, MessageType, Preamble, encode, negotiate

U32 = struct.Struct("!I")  # the documented length prefix, written out independently

SAMPLES: dict[MessageType, dict[str, Any]] = {
    MessageType.HELLO: {"name": "aa:bb:cc:dd:ee:ff", "uid": 7, "features": ["x"]},
    MessageType.REFUSE: {"reason": "cannot connect to ourself"},
    MessageType.TOPOLOGY: {"records": [{"name": "aa:bb:cc:dd:ee:ff", "version": 3}]},
    MessageType.DIGEST: {"digest": {"aa:bb:cc:dd:ee:ff": [1, 2]}},
    MessageType.REQUEST: {"names": ["aa:bb:cc:dd:ee:ff"]},
    MessageType.GOODBYE: {},
    MessageType.KEEPALIVE: {},
    MessageType.CONFIRM: {"i": 0, "mac": b"\x01" * 32},
    MessageType.SEALED: {"c": b"\x02" * 40},
}


def framed(body: bytes) -> bytes:
    return U32.pack(len(body)) + body


def packed(obj: object) -> bytes:
    return framed(msgpack.packb(obj, use_bin_type=True))


def decode_error(data: bytes, decoder: Decoder | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        (decoder or Decoder()).feed(data)
    return info.value


def test_every_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(MessageType)


def test_message_type_numbers_are_the_protocol() -> None:
    assert [(t.name, int(t)) for t in MessageType] == [
        ("HELLO", 1),
        ("REFUSE", 2),
        ("TOPOLOGY", 3),
        ("DIGEST", 4),
        ("REQUEST", 5),
        ("GOODBYE", 6),
        ("KEEPALIVE", 9),
        ("CONFIRM", 10),
        ("SEALED", 11),
    ]


def test_reserved_numbers_stay_unused() -> None:
    assert sorted(wire.RESERVED) == [7, 8]
    assert not wire.RESERVED & {int(t) for t in MessageType}


@pytest.mark.parametrize("msg_type", list(MessageType))
def test_round_trip(msg_type: MessageType) -> None:
    [(got_type, fields)] = Decoder().feed(encode(msg_type, **SAMPLES[msg_type]))
    assert got_type is msg_type
    assert fields == SAMPLES[msg_type]


def test_encoded_layout() -> None:
    data = encode(MessageType.REQUEST, names=["a"])
    assert data == packed({"t": 5, "names": ["a"]})


def test_byte_by_byte() -> None:
    data = b"".join(encode(t, **f) for t, f in SAMPLES.items())
    decoder = Decoder()
    got = [m for i in range(len(data)) for m in decoder.feed(data[i : i + 1])]
    assert got == list(SAMPLES.items())
    assert decoder.buffered == 0


def test_partial_message_waits() -> None:
    data = encode(MessageType.REQUEST, names=["a"])
    decoder = Decoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [(MessageType.REQUEST, {"names": ["a"]})]


def test_many_messages_in_one_feed() -> None:
    data = b"".join(encode(MessageType.REQUEST, names=[str(i)]) for i in range(500))
    got = Decoder().feed(data)
    assert got == [(MessageType.REQUEST, {"names": [str(i)]}) for i in range(500)]


def test_oversize_length_rejected_from_the_header_alone() -> None:
    decoder = Decoder()
    error = decode_error(U32.pack(2**31), decoder)
    assert error.reason == "too_large"
    assert decoder.buffered == 0


def test_limit_is_a_constructor_argument() -> None:
    body = msgpack.packb({"t": 7, "pad": "x" * 20})
    assert Decoder(max_message=len(body)).feed(framed(body))
    assert decode_error(framed(body), Decoder(max_message=len(body) - 1)).reason == "too_large"
    with pytest.raises(ValueError):
        Decoder(max_message=0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (framed(b""), "msgpack"),
        (framed(b"\xc1"), "msgpack"),  # a byte msgpack never uses
        (framed(msgpack.packb({"t": 7}) + b"\x01"), "msgpack"),  # extra data in the body
        (framed(b"\x81\x91\x01\x01"), "msgpack"),  # a list as a map key
        (framed(b"\xa2\xff\xfe"), "msgpack"),  # invalid utf-8 in a str
        (packed([7]), "not_a_map"),
        (packed(7), "not_a_map"),
        (packed({"seq": 1}), "no_type"),
        (packed({"t": "ping"}), "no_type"),
        (packed({"t": True}), "no_type"),
        (packed({"t": 1.0}), "no_type"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    assert decode_error(data).reason == reason


def test_refuses_input_after_an_error() -> None:
    decoder = Decoder()
    decode_error(packed([1]), decoder)
    assert decode_error(encode(MessageType.GOODBYE), decoder).reason == "not_a_map"


def test_messages_before_an_error_in_the_same_feed_are_not_returned_later() -> None:
    decoder = Decoder()
    decode_error(encode(MessageType.GOODBYE) + packed([1]), decoder)
    assert decoder.buffered == 0


def test_unknown_type_and_fields_tolerated() -> None:
    data = packed({"t": 200, "new": {"nested": [1, 2]}}) + packed({"t": 7, "seq": 3, 5: "x"})
    data += packed({"t": 5, "names": [], "new": 1})
    got = Decoder().feed(data)
    assert got == [
        (200, {"new": {"nested": [1, 2]}}),
        (7, {"seq": 3, 5: "x"}),  # a reserved number is an unknown type
        (MessageType.REQUEST, {"names": [], "new": 1}),
    ]
    assert [type(t) for t, _ in got] == [int, int, MessageType]


def test_encode_refuses_the_type_key_and_oversize() -> None:
    with pytest.raises(ValueError, match="reserved"):
        encode(MessageType.REQUEST, t=1)
    with pytest.raises(ValueError, match="MAX_MESSAGE"):
        encode(MessageType.TOPOLOGY, records=b"x" * wire.MAX_MESSAGE)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_random_bytes_raise_only_decode_error(data: bytes, chunk: int) -> None:
    decoder = Decoder(max_message=1000)
    with contextlib.suppress(DecodeError):
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])


@given(st.binary(max_size=300))
def test_random_bodies_raise_only_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Decoder().feed(framed(body))


FIELD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 300),
            st.dictionaries(st.text().filter(lambda k: k != "t"), FIELD_VALUES, max_size=4),
        ),
        max_size=5,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_round_trip_under_any_chunking(
    messages: list[tuple[int, dict[str, Any]]], chunk: int
) -> None:
    data = b"".join(encode(t, **fields) for t, fields in messages)
    decoder = Decoder()
    got = [m for i in range(0, len(data), chunk) for m in decoder.feed(data[i : i + chunk])]
    assert got == messages


def test_preamble_layout() -> None:
    assert wire.OUR_VERSIONS.encode() == b"WPYG\x01\x01"
    assert Preamble.decode(b"WPYG\x02\x05") == Preamble(2, 5)
    assert wire.PREAMBLE_SIZE == 6


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"GET / ", "bad magic b'GET '"),
        (b"WPYG\x03\x02", "empty version range 3..2"),
        (b"WPYG\x01", "5 bytes, expected 6"),
    ],
)
def test_bad_preamble(data: bytes, detail: str) -> None:
    with pytest.raises(DecodeError) as info:
        Preamble.decode(data)
    assert (info.value.reason, info.value.detail) == ("preamble", detail)


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ((1, 1), (1, 1), 1),
        ((1, 1), (1, 3), 1),
        ((1, 3), (1, 1), 1),
        ((1, 3), (2, 5), 3),
        ((2, 5), (1, 3), 3),
        ((1, 4), (2, 3), 3),
        ((1, 1), (2, 3), None),
        ((2, 3), (1, 1), None),
        ((4, 4), (1, 3), None),
    ],
)
def test_negotiate(ours: tuple[int, int], theirs: tuple[int, int], expected: int | None) -> None:
    assert negotiate(ours=ours, theirs=theirs) == expected
