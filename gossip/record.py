"""One peer's record as it travels: its fields, their bounds, and the checks on receipt.

Rules this module keeps:

- Every value from the wire is checked before anything is built from it: types, string and
  list lengths, ports, names. A record that fails any check is a ``TopologyError`` (a
  ValueError) naming the field; unknown keys are ignored (forward compatible).
- Stamps are bounded so that nothing we derive from them can overflow: ``incarnation`` and
  ``version`` are at most MAX_STAMP (2^63 - 1, a signed 64-bit value; the ns clock a start time
  comes from reaches it in 2262). ``next_stamp`` is the only way a stamp grows: the next
  version, or the next incarnation once versions are used up, or None when the stamp space is
  exhausted -- never a value the wire cannot carry or a peer would refuse.
- Stamps are bounded by time as well. An incarnation is a process's start on the wall clock
  (ns), so a record whose incarnation is more than MAX_AHEAD_NS (10 minutes) ahead of the
  receiver's wall clock is a forgery or a badly set clock (``from_the_future``): the topology
  refuses it (reason "future"). Whatever a peer accepts under a name then lies far below the
  top of the stamp space, so the name's owner can always outrank it (``next_stamp`` never runs
  out before 2262). The price: clocks must agree within that bound (Kubernetes needs them in
  step for its certificates anyway); a node whose clock runs further ahead is refused until
  the others' clocks reach its start minus the bound, each refusal counted and logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossip.identity import NAME_PATTERN

MAX_ENTRIES = 4096  # per list in a record: connections, unreachable, blocks
MAX_STRING = 256  # characters, any string in a record
MAX_UINT = 2**64 - 1  # msgpack's largest integer: the bound of a uid
MAX_STAMP = 2**63 - 1  # the bound of an incarnation and of a version
MAX_PORT = 65535
MAX_META = 32768  # bytes of application data in a record (opaque here, like memberlist's Meta)
MAX_SLEEVE_KEY = 64  # bytes of the data plane's key agreement material (opaque here)
MAX_FASTDP = 16  # bytes of the data plane's fast-path endpoint (opaque here)
MAX_AHEAD_NS = 600 * 10**9  # how far an incarnation may run ahead of the receiver's wall clock

Stamp = tuple[int, int]
Endpoint = tuple[str, int]


class TopologyError(ValueError):
    """A record from a peer that we cannot accept."""


@dataclass(frozen=True)
class PeerRecord:
    """What one peer publishes about itself. Lists are kept sorted and duplicate-free."""

    name: str  # "aa:bb:cc:dd:ee:ff"
    nickname: str
    incarnation: int  # process start time in ns: a restarted peer's records win
    version: int  # bumped on each local change within one incarnation
    uid: int
    data_endpoint: Endpoint  # UDP sleeve address
    control_endpoint: Endpoint  # TCP gossip address
    blocks: tuple[str, ...] = ()  # owned pod blocks, CIDR strings
    connections: tuple[str, ...] = ()  # names with an established control connection
    unreachable: tuple[str, ...] = ()  # names whose UDP data path we could NOT confirm
    departed: bool = False  # set on clean shutdown
    meta: bytes = b""  # application data (the address claim), opaque to the mesh
    sleeve_key: bytes = b""  # the data plane's key agreement material, opaque to the mesh
    fastdp: bytes = b""  # the data plane's fast-path endpoint (overlay/vtep.py), opaque to it

    def __post_init__(self) -> None:
        for field in ("blocks", "connections", "unreachable"):
            object.__setattr__(self, field, tuple(sorted(set(getattr(self, field)))))
        for field in ("data_endpoint", "control_endpoint"):
            object.__setattr__(self, field, tuple(getattr(self, field)))

    @property
    def stamp(self) -> Stamp:
        """``(incarnation, version)``: what orders one peer's records first."""
        return (self.incarnation, self.version)

    def to_wire(self) -> dict[str, Any]:
        """Plain msgpack data with short keys; empty lists and ``departed=False`` are left out."""
        wire: dict[str, Any] = {
            "n": self.name,
            "nk": self.nickname,
            "i": self.incarnation,
            "v": self.version,
            "u": self.uid,
            "de": list(self.data_endpoint),
            "ce": list(self.control_endpoint),
        }
        for key, names in (("b", self.blocks), ("c", self.connections), ("x", self.unreachable)):
            if names:
                wire[key] = list(names)
        if self.departed:
            wire["dp"] = True
        if self.meta:
            wire["m"] = self.meta
        if self.sleeve_key:
            wire["sk"] = self.sleeve_key
        if self.fastdp:
            wire["fd"] = self.fastdp
        return wire

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> PeerRecord:
        """Check a record received from a peer; unknown keys are ignored (forward compatible)."""
        if not isinstance(d, Mapping):
            raise TopologyError("record is not a map")
        departed = d.get("dp", False)
        if not isinstance(departed, bool):
            raise TopologyError("record field 'dp' (departed) is not a boolean")
        return cls(
            name=_name(d.get("n"), "n"),
            nickname=_string(d.get("nk"), "nk"),
            incarnation=_uint(d.get("i"), "i", MAX_STAMP),
            version=_uint(d.get("v"), "v", MAX_STAMP),
            uid=_uint(d.get("u"), "u", MAX_UINT),
            data_endpoint=_endpoint(d.get("de"), "de"),
            control_endpoint=_endpoint(d.get("ce"), "ce"),
            blocks=tuple(_string(s, "b") for s in _list(d.get("b", []), "b")),
            connections=tuple(_name(s, "c") for s in _list(d.get("c", []), "c")),
            unreachable=tuple(_name(s, "x") for s in _list(d.get("x", []), "x")),
            departed=departed,
            meta=_bytes(d.get("m", b""), "m", MAX_META),
            sleeve_key=_bytes(d.get("sk", b""), "sk", MAX_SLEEVE_KEY),
            fastdp=_bytes(d.get("fd", b""), "fd", MAX_FASTDP),
        )


def next_stamp(stamp: Stamp) -> Stamp | None:
    """The least stamp above ``stamp`` within the bounds, or None when there is none."""
    incarnation, version = stamp
    if version < MAX_STAMP:
        return (incarnation, version + 1)
    if incarnation < MAX_STAMP:
        return (incarnation + 1, 0)
    return None


def from_the_future(record: PeerRecord, wall_ns: int) -> bool:
    """Whether ``record``'s incarnation runs more than MAX_AHEAD_NS ahead of the wall clock
    ``wall_ns`` (see the module rules)."""
    return record.incarnation > wall_ns + MAX_AHEAD_NS


def weight(record: PeerRecord) -> int:
    """About how many bytes ``record`` holds: what the topology's total bound counts."""
    lists = (record.blocks, record.connections, record.unreachable)
    return (
        64
        + len(record.nickname)
        + len(record.data_endpoint[0])
        + len(record.control_endpoint[0])
        + sum(len(s) + 8 for names in lists for s in names)
        + len(record.meta)
        + len(record.sleeve_key)
        + len(record.fastdp)
    )


def _string(value: object, key: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_STRING:
        raise TopologyError(f"record field {key!r} is not a string of at most {MAX_STRING}")
    return value


def _bytes(value: object, key: str, limit: int) -> bytes:
    if not isinstance(value, bytes) or len(value) > limit:
        raise TopologyError(f"record field {key!r} is not bytes of at most {limit}")
    return value


def _name(value: object, key: str) -> str:
    if not isinstance(value, str) or not _is_name(value):
        raise TopologyError(f"record field {key!r} does not hold a peer name")
    return value


_NAMES_SEEN: dict[str, bool] = {}
_NAMES_KEPT = 1 << 16


def _is_name(value: str) -> bool:
    """Names recur in every record that lists them: check each distinct one once (a bounded
    cache; a string that is no name is never kept, so junk cannot fill it)."""
    if value in _NAMES_SEEN:
        return True
    if len(value) != 17 or NAME_PATTERN.fullmatch(value) is None:
        return False
    if len(_NAMES_SEEN) >= _NAMES_KEPT:
        _NAMES_SEEN.clear()
    _NAMES_SEEN[value] = True
    return True


def _uint(value: object, key: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise TopologyError(f"record field {key!r} is not an integer from 0 to {limit}")
    return value


def _list(value: object, key: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_ENTRIES:
        raise TopologyError(f"record field {key!r} is not a list of at most {MAX_ENTRIES}")
    return value


def _endpoint(value: object, key: str) -> Endpoint:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TopologyError(f"record field {key!r} is not [host, port]")
    port = value[1]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= MAX_PORT:
        raise TopologyError(f"record field {key!r} has no valid port")
    return (_string(value[0], key), port)
