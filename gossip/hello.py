"""HELLO: what a peer says about itself first, and the checks its fields pass.

Every field is checked when it arrives (``Hello.from_fields``): a ValueError names the field.
Fields we do not know are ignored. ``kx`` and ``hints`` are sent only by a peer with a secret
(gossip/handshake.py says how they are used), so a HELLO without one is the same as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossip.identity import NAME_PATTERN
from gossip.secret import HINT_SIZE, MAX_SECRETS, PUBLIC_SIZE

Endpoint = tuple[str, int]
U64 = 2**64


@dataclass(frozen=True)
class Hello:
    """What a peer says about itself first: who it is, where to reach it, what it supports."""

    name: str  # "aa:bb:cc:dd:ee:ff"
    nickname: str
    uid: int  # random per process start
    incarnation: int
    data_endpoint: Endpoint  # where the peer receives sleeve (UDP) frames
    control_endpoint: Endpoint  # where the peer accepts control (TCP) connections
    features: tuple[str, ...] = ()
    kx: bytes = b""  # ephemeral X25519 public key: only when the sender has a secret
    hints: tuple[bytes, ...] = ()  # the dialer's hints of the secrets it accepts

    def __str__(self) -> str:
        return f"{self.name}({self.nickname})"

    def to_fields(self) -> dict[str, Any]:
        """The HELLO message's fields, as plain msgpack data."""
        fields: dict[str, Any] = {
            "name": self.name,
            "nickname": self.nickname,
            "uid": self.uid,
            "incarnation": self.incarnation,
            "data_endpoint": list(self.data_endpoint),
            "control_endpoint": list(self.control_endpoint),
            "features": list(self.features),
        }
        if self.kx:
            fields["kx"] = self.kx
        if self.hints:
            fields["hints"] = list(self.hints)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Hello:
        """Check HELLO fields (unknown ones ignored); ValueError says which field is wrong."""
        name = _field(fields, "name", str)
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"field 'name' is not six hex octets: {name[:40]!r}")
        return cls(
            name=name,
            nickname=_field(fields, "nickname", str),
            uid=_u64(fields, "uid"),
            incarnation=_u64(fields, "incarnation"),
            data_endpoint=_endpoint(fields, "data_endpoint"),
            control_endpoint=_endpoint(fields, "control_endpoint"),
            features=_features(fields, "features"),
            kx=_key(fields, "kx"),
            hints=_hints(fields, "hints"),
        )


def _field(fields: Mapping[Any, Any], key: str, kind: Any) -> Any:
    if key not in fields:
        raise ValueError(f"missing field {key!r}")
    value = fields[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"field {key!r} has the wrong type {type(value).__name__}")
    return value


def _u64(fields: Mapping[Any, Any], key: str) -> int:
    value: int = _field(fields, key, int)
    if not 0 <= value < U64:
        raise ValueError(f"field {key!r} is out of range")
    return value


def _features(fields: Mapping[Any, Any], key: str) -> tuple[str, ...]:
    value = _field(fields, key, list | tuple)
    if not all(isinstance(f, str) for f in value):
        raise ValueError(f"field {key!r} must be a list of str")
    return tuple(value)


def _key(fields: Mapping[Any, Any], key: str) -> bytes:
    if key not in fields:
        return b""
    value: bytes = _field(fields, key, bytes)
    if len(value) != PUBLIC_SIZE:
        raise ValueError(f"field {key!r} must be {PUBLIC_SIZE} bytes")
    return value


def _hints(fields: Mapping[Any, Any], key: str) -> tuple[bytes, ...]:
    if key not in fields:
        return ()
    value = _field(fields, key, list | tuple)
    if not 0 < len(value) <= MAX_SECRETS:
        raise ValueError(f"field {key!r} must hold 1..{MAX_SECRETS} hints")
    if not all(isinstance(h, bytes) and len(h) == HINT_SIZE for h in value):
        raise ValueError(f"field {key!r} must be a list of {HINT_SIZE}-byte hints")
    if "kx" not in fields:
        raise ValueError(f"field {key!r} without field 'kx'")
    return tuple(value)


def _endpoint(fields: Mapping[Any, Any], key: str) -> Endpoint:
    value = _field(fields, key, list | tuple)
    if (
        len(value) != 2
        or not isinstance(value[0], str)
        or type(value[1]) is not int
        or not 0 <= value[1] <= 0xFFFF
    ):
        raise ValueError(f"field {key!r} must be [host, port]")
    return value[0], value[1]
