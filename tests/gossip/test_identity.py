"""Peer names: derived alike everywhere, checked, parsed from what a file holds."""

from __future__ import annotations

import pytest

from gossip.identity import name_for, new_identity, parse_name, peer_id


def test_name_is_derived_from_the_node_name_alone() -> None:
    assert name_for("node-1") == name_for("node-1")
    assert name_for("node-1") != name_for("node-2")
    assert parse_name(name_for("node-1").encode()) == name_for("node-1")


def test_peer_id_is_the_name_as_an_integer() -> None:
    assert peer_id("00:00:00:00:01:02") == 0x0102
    with pytest.raises(ValueError, match="six hex octets"):
        peer_id("00:00:00:00:01")


def test_each_identity_has_a_fresh_uid() -> None:
    first, second = new_identity("node-1"), new_identity("node-1")
    assert (first.name, first.nickname) == (second.name, second.nickname)
    assert first.uid != second.uid
    assert new_identity("node-1", "0a:0b:0c:0d:0e:0f").name == "0a:0b:0c:0d:0e:0f"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"  0A:0b:0c:0d:0e:0f\n", "0a:0b:0c:0d:0e:0f"),
        (b"", None),
        (b"not a name\n", None),
        (b"aa:bb:cc:dd:ee\n", None),
        (b"aa:bb:cc:dd:ee:ff:00\n", None),
        (b"\xff\xfe\n", None),
    ],
)
def test_parse_name(data: bytes, expected: str | None) -> None:
    assert parse_name(data) == expected
