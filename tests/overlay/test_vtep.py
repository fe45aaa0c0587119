"""``overlay.vtep``: the VTEP MAC derived from a peer name, and the published value's codec
(strict: anything malformed reads as no fast path)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.vtep import SIZE, encode_vtep, parse_vtep, vtep_mac

ADDR = ipaddress.IPv4Address
NAMES = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
UNICAST = (
    st.integers(0, 2**32 - 1)
    .map(ADDR)
    .filter(
        lambda a: (
            not (a.is_multicast or a.is_loopback or a.is_link_local or a.is_reserved)
            and int(a) >> 24 != 0
        )
    )
)


def test_the_mac_is_the_name_made_local_and_unicast() -> None:
    assert vtep_mac("aa:bb:cc:dd:ee:ff") == "aa:bb:cc:dd:ee:ff"
    assert vtep_mac("01:02:03:04:05:06") == "02:02:03:04:05:06"
    assert vtep_mac("ff:00:00:00:00:00") == "fe:00:00:00:00:00"
    assert vtep_mac("00:00:00:00:00:00") == "02:00:00:00:00:00"


@pytest.mark.parametrize("name", ["", "aa:bb:cc:dd:ee", "AA:BB:CC:DD:EE:FF", "aabbccddeeff", "x"])
def test_a_name_that_is_not_six_hex_octets_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        vtep_mac(name)


@given(NAMES)
def test_every_derived_mac_is_a_locally_administered_unicast_that_round_trips(name: str) -> None:
    mac = vtep_mac(name)
    first = int(mac[:2], 16)
    assert first & 0x01 == 0 and first & 0x02 == 2
    assert mac[2:] == name[2:]
    assert parse_vtep(encode_vtep(ADDR("10.32.0.1"), mac)) == (ADDR("10.32.0.1"), mac)


def test_the_layout() -> None:
    data = encode_vtep(ADDR("10.32.1.1"), "02:11:22:33:44:55")
    assert data == bytes([1, 10, 32, 1, 1, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55])
    assert len(data) == SIZE


@given(UNICAST, NAMES.map(vtep_mac))
def test_round_trip(address: ADDR, mac: str) -> None:
    assert parse_vtep(encode_vtep(address, mac)) == (address, mac)


GOOD = encode_vtep(ADDR("10.32.1.1"), "02:11:22:33:44:55")


@pytest.mark.parametrize(
    "data",
    [
        b"",  # the node has no fast path
        GOOD[:-1],
        GOOD + b"\x00",
        b"\x02" + GOOD[1:],  # a format we do not know
        b"\x00" + GOOD[1:],
        GOOD[:1] + bytes([0, 0, 0, 0]) + GOOD[5:],  # unspecified
        GOOD[:1] + bytes([127, 0, 0, 1]) + GOOD[5:],  # loopback
        GOOD[:1] + bytes([224, 0, 0, 5]) + GOOD[5:],  # multicast
        GOOD[:1] + bytes([255, 255, 255, 255]) + GOOD[5:],  # broadcast
        GOOD[:1] + bytes([240, 0, 0, 1]) + GOOD[5:],  # reserved
        GOOD[:1] + bytes([169, 254, 1, 1]) + GOOD[5:],  # link-local
        GOOD[:5] + bytes(6),  # zero MAC
        GOOD[:5] + b"\x01\x00\x5e\x00\x00\x01",  # multicast MAC
        GOOD[:5] + b"\xff" * 6,  # broadcast MAC
    ],
)
def test_malformed_values_read_as_no_fast_path(data: bytes) -> None:
    assert parse_vtep(data) is None


@given(st.binary(max_size=16))
def test_any_bytes_parse_to_none_or_a_value_that_encodes_back(data: bytes) -> None:
    parsed = parse_vtep(data)
    if parsed is not None:
        assert encode_vtep(*parsed) == data


@pytest.mark.parametrize(
    ("address", "mac"),
    [
        (ADDR("10.32.1.1"), "02:11:22:33:44"),
        (ADDR("10.32.1.1"), "02:11:22:33:44:5G"),
        (ADDR("10.32.1.1"), "02:AA:22:33:44:55"),  # uppercase: not the form views compare
        (ADDR("10.32.1.1"), "01:00:5e:00:00:01"),
        (ADDR("10.32.1.1"), "00:00:00:00:00:00"),
        (ADDR("224.0.0.1"), "02:11:22:33:44:55"),
    ],
)
def test_encoding_something_unparsable_is_refused(address: ADDR, mac: str) -> None:
    with pytest.raises(ValueError):
        encode_vtep(address, mac)
