"""What one peer publishes about address space: its claim, carried in its topology record.

The owned CIDRs travel as the record's ``blocks`` (routes are built from them); the rest of the
claim travels as the record's opaque ``meta`` bytes (msgpack, short keys). ``decode`` checks
everything a peer sends: a malformed claim raises ``ClaimError`` and the caller ignores that
peer's claim (and counts it) rather than guessing.

Fields:

- ``ring``: which allocation ring the space belongs to, ``(seeded_at_ns, seed_name)``; None
  before the peer has any space.
- ``grants``: space this peer gave away and the grantee has not acknowledged yet,
  ``(cidr, grantee, serial)``. Until acknowledged it belongs to the grantee.
- ``acks``: per granter, the highest grant serial this peer has taken up.
- ``want``: the owner this peer asks for space.
- Paxos acceptor and proposer state for seeding the ring (``promised``, ``accepted``,
  ``proposal``, ``accept``); ballots are ``(round, proposer)``, values ring ids.
- ``removed``: peers this peer reclaimed with ``rmpeer``, ``(name, incarnation)``.
- ``used`` and ``free``: addresses in use, and addresses it could give away (for askers' choice
  of owner and for status).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

Net = ipaddress.IPv4Network
RingId = tuple[int, str]  # (seeded at, ns since the epoch; seed's peer name)
Ballot = tuple[int, str]  # (round, proposer's peer name)
Grant = tuple[Net, str, int]  # (space, grantee, serial)

MAX_LIST = 256
MAX_STRING = 256
MAX_META = 32768  # bytes of encoded claim


class ClaimError(ValueError):
    """A claim from a peer that we cannot accept."""


@dataclass(frozen=True)
class Claim:
    """One peer's published claim on address space (the fields are described above)."""

    owned: tuple[Net, ...] = ()
    ring: RingId | None = None
    grants: tuple[Grant, ...] = ()
    acks: tuple[tuple[str, int], ...] = ()
    want: str | None = None
    promised: Ballot | None = None
    accepted: tuple[Ballot, RingId] | None = None
    proposal: Ballot | None = None
    accept: tuple[Ballot, RingId] | None = None
    removed: tuple[tuple[str, int], ...] = ()
    used: int = 0
    free: int = 0

    def ack_for(self, granter: str) -> int:
        """The highest serial of ``granter``'s grants this peer has taken up (0: none)."""
        return dict(self.acks).get(granter, 0)

    def encode(self) -> bytes:
        """The ``meta`` bytes (owned space is not in them: it is the record's ``blocks``)."""
        d: dict[str, Any] = {"u": self.used, "f": self.free}
        if self.ring is not None:
            d["r"] = list(self.ring)
        if self.grants:
            d["g"] = [[str(n), who, serial] for n, who, serial in self.grants]
        if self.acks:
            d["a"] = [list(a) for a in self.acks]
        if self.want is not None:
            d["w"] = self.want
        if self.promised is not None:
            d["pr"] = list(self.promised)
        if self.accepted is not None:
            d["ac"] = [list(self.accepted[0]), list(self.accepted[1])]
        if self.proposal is not None:
            d["po"] = list(self.proposal)
        if self.accept is not None:
            d["aq"] = [list(self.accept[0]), list(self.accept[1])]
        if self.removed:
            d["rm"] = [list(r) for r in self.removed]
        data: bytes = msgpack.packb(d)
        return data


def decode(blocks: Iterable[str], meta: bytes) -> Claim:
    """Check a peer's published claim; ``ClaimError`` names the first bad field."""
    try:
        owned = tuple(ipaddress.IPv4Network(b) for b in blocks)
    except ValueError as e:
        raise ClaimError(f"blocks: {e}") from None
    if not meta:
        return Claim(owned=owned)
    if len(meta) > MAX_META:
        raise ClaimError(f"meta is {len(meta)} bytes, over {MAX_META}")
    try:
        d = msgpack.unpackb(meta, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ClaimError(f"meta is not msgpack: {e}") from None
    if not isinstance(d, dict):
        raise ClaimError("meta is not a map")
    return Claim(
        owned=owned,
        ring=_opt(d, "r", _ring),
        grants=tuple(_grant(g) for g in _list(d, "g")),
        acks=tuple(_pair(a, "a") for a in _list(d, "a")),
        want=_opt(d, "w", lambda v: _str(v, "w")),
        promised=_opt(d, "pr", lambda v: _ballot(v, "pr")),
        accepted=_opt(d, "ac", lambda v: _proposal(v, "ac")),
        proposal=_opt(d, "po", lambda v: _ballot(v, "po")),
        accept=_opt(d, "aq", lambda v: _proposal(v, "aq")),
        removed=tuple(_pair(r, "rm") for r in _list(d, "rm")),
        used=_int(d.get("u", 0), "u"),
        free=_int(d.get("f", 0), "f"),
    )


def _opt(d: Mapping[str, Any], key: str, check: Any) -> Any:
    value = d.get(key)
    return None if value is None else check(value)


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    value = d.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise ClaimError(f"field {key!r} is not a list of at most {MAX_LIST}")
    return value


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_STRING:
        raise ClaimError(f"field {key!r} holds {value!r}, not a name")
    return value


def _int(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise ClaimError(f"field {key!r} holds {value!r}, not an unsigned 64-bit integer")
    return value


def _pair(value: object, key: str) -> tuple[str, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ClaimError(f"field {key!r} holds {value!r}, not [name, number]")
    return _str(value[0], key), _int(value[1], key)


def _ring(value: object) -> RingId:
    if not isinstance(value, list) or len(value) != 2:
        raise ClaimError(f"field 'r' holds {value!r}, not [time, seed]")
    return _int(value[0], "r"), _str(value[1], "r")


def _ballot(value: object, key: str) -> Ballot:
    if not isinstance(value, list) or len(value) != 2:
        raise ClaimError(f"field {key!r} holds {value!r}, not a ballot [round, name]")
    return _int(value[0], key), _str(value[1], key)


def _proposal(value: object, key: str) -> tuple[Ballot, RingId]:
    if not isinstance(value, list) or len(value) != 2:
        raise ClaimError(f"field {key!r} holds {value!r}, not [ballot, ring]")
    return _ballot(value[0], key), _ring(value[1])


def _grant(value: object) -> Grant:
    if not isinstance(value, list) or len(value) != 3:
        raise ClaimError(f"field 'g' holds {value!r}, not [cidr, grantee, serial]")
    try:
        net = ipaddress.IPv4Network(value[0])
    except (ValueError, TypeError) as e:
        raise ClaimError(f"field 'g': {e}") from None
    return net, _str(value[1], "g"), _int(value[2], "g")
