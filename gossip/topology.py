"""The replicated topology: one versioned record per peer, merged like a state-based CRDT.

Theory of operation. Every peer owns exactly one record, its own, and is the only one that changes
it (``set_local``, which bumps ``version``). Records travel by gossip; ``merge`` keeps, per name,
the greater record and returns the delta -- exactly the records that were new or newer -- which is
all that needs re-gossiping (weaveworks/mesh's ``merge(other) -> delta``). ``digest``,
``newer_than`` and ``wanted`` repair loss by anti-entropy.

Rules this module keeps:

- Order. Records for one name are ordered by stamp ``(incarnation, version)``, then uid, then
  content: a total order, so merge is commutative, associative and idempotent and every peer
  converges on the same record whatever order gossip arrives in. A restarted peer has a new
  incarnation (its start time in ns), so its records beat everything its previous process said.
- Our own record is authoritative and merge never replaces it. A record for our name that ranks
  below ours (the usual echo of an earlier process) is ignored. One that outranks ours is an echo
  of an earlier process whose clock ran ahead, or another process claiming our name; either way
  our record jumps above it -- stamp ``(its incarnation, its version + 1)``, our uid and content
  kept -- and the jumped record is part of the delta, so ours wins again wherever it spreads.
  When its uid differs from ours it is also reported in ``collisions`` (DESIGN.md: collisions are
  reported, never merged); a record with our uid is our own state and is not reported.
- Removal. ``remove`` forgets a record (GC). A departed record's stamp is remembered (at most
  MAX_TOMBSTONES), so gossip still carrying it cannot bring it back; a newer stamp (a restart) can.
- Size. A record lists its own connections (bounded by the connection limit) and the exceptions
  to an assumed-working data path, never the whole cluster: no record grows with N, no message
  with N². ``from_wire`` enforces the bounds below.
- Errors. ``TopologyError`` (a ValueError) means a peer sent a malformed record: the caller drops
  that connection. Misuse by our own code (``set_local`` of a field it may not change) is a
  TypeError.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gossip.identity import NAME_PATTERN

MAX_ENTRIES = 4096  # per list in a record: connections, unreachable, blocks
MAX_STRING = 256  # characters, any string in a record
MAX_UINT = 2**64 - 1  # msgpack's largest integer
MAX_PORT = 65535
MAX_TOMBSTONES = 4096  # departed peers remembered after removal; oldest forgotten first
MAX_COLLISIONS = 64  # reports kept in ``Topology.collisions``; oldest dropped first
MAX_META = 32768  # bytes of application data in a record (opaque here, like memberlist's Meta)
MAX_SLEEVE_KEY = 64  # bytes of the data plane's key agreement material (opaque here)

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
            incarnation=_uint(d.get("i"), "i"),
            version=_uint(d.get("v"), "v"),
            uid=_uint(d.get("u"), "u"),
            data_endpoint=_endpoint(d.get("de"), "de"),
            control_endpoint=_endpoint(d.get("ce"), "ce"),
            blocks=tuple(_string(s, "b") for s in _list(d.get("b", []), "b")),
            connections=tuple(_name(s, "c") for s in _list(d.get("c", []), "c")),
            unreachable=tuple(_name(s, "x") for s in _list(d.get("x", []), "x")),
            departed=departed,
            meta=_bytes(d.get("m", b""), "m", MAX_META),
            sleeve_key=_bytes(d.get("sk", b""), "sk", MAX_SLEEVE_KEY),
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
        raise TopologyError(f"record field {key!r} holds {value!r}, not a peer name")
    return value


@functools.lru_cache(maxsize=1 << 16)
def _is_name(value: str) -> bool:
    """Names recur in every record that lists them: check each distinct one once."""
    return NAME_PATTERN.fullmatch(value) is not None


def _uint(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT:
        raise TopologyError(f"record field {key!r} is not an unsigned 64-bit integer")
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


def _outranks(new: PeerRecord, old: PeerRecord) -> bool:
    """The total order of records for one name (see the module rules)."""
    if new.stamp != old.stamp:
        return new.stamp > old.stamp
    return _rank(new) > _rank(old)


def _rank(r: PeerRecord) -> tuple[Any, ...]:
    return (r.uid, r.nickname, r.data_endpoint, r.control_endpoint, r.blocks, r.connections,
            r.unreachable, r.departed, r.meta, r.sleeve_key)  # fmt: skip


# Fields only the record's owner may change through ``set_local``; the rest is identity and stamp.
CHANGEABLE = frozenset(
    {"nickname", "data_endpoint", "control_endpoint", "blocks", "connections", "unreachable",
     "departed", "meta", "sleeve_key"}
)  # fmt: skip


class Topology:
    """Every peer record we know, ours included, under the rules of this module."""

    def __init__(self, local: PeerRecord, records: Iterable[PeerRecord] = ()) -> None:
        self.name = local.name
        self.records: dict[str, PeerRecord] = {local.name: local}
        self.collisions: list[tuple[PeerRecord, str]] = []  # (record, reason), newest last
        self.collision_count = 0  # all ever reported, including those dropped from the list
        self._tombstones: dict[str, Stamp] = {}  # departed and removed: name -> last stamp
        self.merge(records)

    @property
    def local(self) -> PeerRecord:
        """Our own record."""
        return self.records[self.name]

    def set_local(self, **changes: Any) -> PeerRecord | None:
        """Change our own record: the new record (version + 1), or None when nothing changed."""
        fixed = changes.keys() - CHANGEABLE
        if fixed:
            raise TypeError(f"set_local cannot change {sorted(fixed)}")
        current = self.local
        changed = dataclasses.replace(current, **changes)
        if changed == current:
            return None
        return self._store(dataclasses.replace(changed, version=current.version + 1))

    def merge(self, incoming: Iterable[PeerRecord]) -> list[PeerRecord]:
        """Keep the greater record per name; return exactly the new or newer ones (the delta)."""
        delta: dict[str, PeerRecord] = {}
        for record in incoming:
            kept = self._defend(record) if record.name == self.name else self._take(record)
            if kept is not None:
                delta[kept.name] = kept
        return list(delta.values())

    def _take(self, record: PeerRecord) -> PeerRecord | None:
        tomb = self._tombstones.get(record.name)
        if tomb is not None:
            if record.stamp <= tomb:
                return None
            del self._tombstones[record.name]
        held = self.records.get(record.name)
        if held is not None and not _outranks(record, held):
            return None
        return self._store(record)

    def _defend(self, record: PeerRecord) -> PeerRecord | None:
        """A record for our own name: never stored; ours jumps above it when it outranks ours."""
        local = self.local
        if not _outranks(record, local):
            return None
        if record.uid != local.uid:
            self._report(record, f"uid {record.uid} claims our name at stamp {record.stamp}")
        jumped = (record.incarnation, record.version + 1)
        return self._store(dataclasses.replace(local, incarnation=jumped[0], version=jumped[1]))

    def _report(self, record: PeerRecord, reason: str) -> None:
        self.collisions.append((record, f"name collision: {reason}"))
        self.collision_count += 1
        del self.collisions[:-MAX_COLLISIONS]

    def _store(self, record: PeerRecord) -> PeerRecord:
        self.records[record.name] = record
        return record

    def remove(self, name: str) -> PeerRecord | None:
        """Forget a peer (GC); the removed record, or None when unknown. Never our own."""
        if name == self.name:
            raise ValueError("cannot remove our own record")
        record = self.records.pop(name, None)
        if record is not None and record.departed:
            self._tombstones.pop(name, None)
            self._tombstones[name] = record.stamp
            if len(self._tombstones) > MAX_TOMBSTONES:
                del self._tombstones[next(iter(self._tombstones))]
        return record

    def digest(self) -> dict[str, Stamp]:
        """Name -> stamp of every record we hold: what anti-entropy sends."""
        return {name: record.stamp for name, record in self.records.items()}

    def newer_than(self, digest: Mapping[str, Stamp]) -> list[PeerRecord]:
        """Records the digest's sender lacks or holds an older stamp of, by name.

        Digests carry stamps only, so two records with one stamp but different content (which
        only two processes sharing a name produce) are not told apart here.
        """
        return [
            record
            for name, record in sorted(self.records.items())
            if name not in digest or record.stamp > tuple(digest[name])
        ]

    def wanted(self, digest: Mapping[str, Stamp]) -> list[str]:
        """Names the digest's sender holds a newer stamp of than we do, sorted."""
        return sorted(name for name, stamp in digest.items() if self._wants(name, tuple(stamp)))

    def _wants(self, name: str, stamp: tuple[int, ...]) -> bool:
        held = self.records.get(name)
        tomb = self._tombstones.get(name)
        return (held is None or stamp > held.stamp) and (tomb is None or stamp > tomb)

    def snapshot(self) -> list[PeerRecord]:
        """All records, sorted by name: the full state sent on connect."""
        return [self.records[name] for name in sorted(self.records)]
