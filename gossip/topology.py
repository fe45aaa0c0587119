"""The replicated topology: one versioned record per peer, merged like a state-based CRDT.

Theory of operation. Every peer owns exactly one record, its own, and is the only one that changes
it (``set_local``, which bumps its stamp). Records travel by gossip; ``merge`` keeps, per name,
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
  our record jumps above it -- to the least stamp above its stamp (``record.next_stamp``), our
  uid and content kept -- and the jumped record is part of the delta, so ours wins again
  wherever it spreads. When its uid differs from ours it is also reported in ``collisions``
  (DESIGN.md: collisions are reported, never merged); a record with our uid is our own state and
  is not reported. Stamps are bounded (gossip/record.py), so no jump and no local change can
  overflow. Given the receiver's wall clock (``merge``'s ``wall_ns``), a record of any name,
  ours included, whose incarnation runs more than MAX_AHEAD_NS ahead of it is refused (reason
  "future"; gossip/record.py): what we hold under a name, and what we jump above, is then far
  below the top of the stamp space, so the owner of a name can always outrank it.
- A name is tied to its live connection. While a neighbour's connection is up, its name is
  ``bind``-ed to the uid its handshake gave: records for that name with another uid are refused
  (reason "name_bound") and a record held under it with another uid is dropped, so no third party
  takes a live neighbour's identity. ``unbind`` when the connection ends; the records of a
  restarted neighbour then arrive by anti-entropy.
- Removal. ``remove`` forgets a record (GC). A departed record's stamp is remembered (at most
  MAX_TOMBSTONES), so gossip still carrying it cannot bring it back; a newer stamp (a restart) can.
- Size. ``from_wire`` bounds each record (gossip/record.py). At most MAX_RECORDS records and
  MAX_WEIGHT bytes are held: a record of a new name beyond either is refused (reason
  "records_limit"); a newer record of a held name is always taken when it does not grow the total
  past the bound.
- Errors. ``TopologyError`` (a ValueError) means a peer sent a malformed record: the caller drops
  that connection. Records that are well formed but refused (above) are counted and reported
  through ``rejections`` with the source ``merge`` was given. Misuse by our own code
  (``set_local`` of a field it may not change) is a TypeError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from gossip.record import (
    MAX_AHEAD_NS,
    MAX_ENTRIES,
    MAX_FASTDP,
    MAX_META,
    MAX_PORT,
    MAX_SLEEVE_KEY,
    MAX_STAMP,
    MAX_STRING,
    MAX_UINT,
    Endpoint,
    PeerRecord,
    Stamp,
    TopologyError,
    from_the_future,
    next_stamp,
    weight,
)
from gossip.rejections import Rejections, printable

__all__ = [
    "MAX_AHEAD_NS", "MAX_ENTRIES", "MAX_FASTDP", "MAX_META", "MAX_PORT", "MAX_SLEEVE_KEY",
    "MAX_STAMP", "MAX_STRING", "MAX_UINT",
    "Endpoint", "PeerRecord", "Stamp", "Topology", "TopologyError",
]  # fmt: skip

MAX_TOMBSTONES = 4096  # departed peers remembered after removal; oldest forgotten first
MAX_COLLISIONS = 64  # reports kept in ``Topology.collisions``; oldest dropped first
MAX_RECORDS = 8192  # peers held at most (a few thousand is the largest cluster we aim at)
MAX_WEIGHT = 64 * 1024 * 1024  # bytes all records hold at most (``record.weight``)


def _outranks(new: PeerRecord, old: PeerRecord) -> bool:
    """The total order of records for one name (see the module rules)."""
    if new.stamp != old.stamp:
        return new.stamp > old.stamp
    return _rank(new) > _rank(old)


def _rank(r: PeerRecord) -> tuple[Any, ...]:
    return (r.uid, r.nickname, r.data_endpoint, r.control_endpoint, r.blocks, r.connections,
            r.unreachable, r.departed, r.meta, r.sleeve_key, r.fastdp)  # fmt: skip


# Fields only the record's owner may change through ``set_local``; the rest is identity and stamp.
CHANGEABLE = frozenset(
    {"nickname", "data_endpoint", "control_endpoint", "blocks", "connections", "unreachable",
     "departed", "meta", "sleeve_key", "fastdp"}
)  # fmt: skip


class Topology:
    """Every peer record we know, ours included, under the rules of this module."""

    def __init__(
        self,
        local: PeerRecord,
        records: Iterable[PeerRecord] = (),
        rejections: Rejections | None = None,
    ) -> None:
        self.name = local.name
        self.rejections = rejections or Rejections()
        self.records: dict[str, PeerRecord] = {local.name: local}
        self.collisions: list[tuple[PeerRecord, str]] = []  # (record, reason), newest last
        self.collision_count = 0  # all ever reported, including those dropped from the list
        self.weight = weight(local)  # of all records held
        self._tombstones: dict[str, Stamp] = {}  # departed and removed: name -> last stamp
        self._bound: dict[str, int] = {}  # name -> uid of its live connection
        self.merge(records)

    @property
    def local(self) -> PeerRecord:
        """Our own record."""
        return self.records[self.name]

    def set_local(self, **changes: Any) -> PeerRecord | None:
        """Change our own record: the new record (next stamp), or None when nothing changed
        (or, after a claim at the top of the stamp space, when no stamp is left)."""
        fixed = changes.keys() - CHANGEABLE
        if fixed:
            raise TypeError(f"set_local cannot change {sorted(fixed)}")
        current = self.local
        changed = dataclasses.replace(current, **changes)
        stamp = next_stamp(current.stamp)
        if changed == current or stamp is None:
            return None
        return self._store(dataclasses.replace(changed, incarnation=stamp[0], version=stamp[1]))

    def merge(
        self, incoming: Iterable[PeerRecord], source: str = "", wall_ns: int | None = None
    ) -> list[PeerRecord]:
        """Keep the greater record per name; return exactly the new or newer ones (the delta).
        ``source`` names who sent them, for the refusals' log lines; ``wall_ns`` is the wall
        clock (ns) records are judged by, None when there is none to judge by."""
        delta: dict[str, PeerRecord] = {}
        for record in incoming:
            if wall_ns is not None and from_the_future(record, wall_ns):
                ahead = (record.incarnation - wall_ns) / 1e9
                self._refuse("future", record, source, f"incarnation {ahead:.0f}s ahead of ours")
                continue
            if record.name == self.name:
                kept = self._defend(record, source)
            else:
                kept = self._take(record, source)
            if kept is not None:
                delta[kept.name] = kept
        return list(delta.values())

    def bind(self, name: str, uid: int) -> PeerRecord | None:
        """Tie ``name`` to the uid of its live connection (see the module rules); the record
        held under it with another uid, now dropped, if any."""
        self._bound[name] = uid
        held = self.records.get(name)
        if held is not None and held.uid != uid and name != self.name:
            return self._drop(name)
        return None

    def unbind(self, name: str, uid: int) -> None:
        """The connection that tied ``name`` to ``uid`` ended."""
        if self._bound.get(name) == uid:
            del self._bound[name]

    def _take(self, record: PeerRecord, source: str) -> PeerRecord | None:
        tomb = self._tombstones.get(record.name)
        if tomb is not None and record.stamp <= tomb:
            return None
        held = self.records.get(record.name)
        if held is not None and not _outranks(record, held):
            return None
        bound = self._bound.get(record.name)
        if bound is not None and record.uid != bound:
            self._refuse("name_bound", record, source, f"its live connection has uid {bound}")
            return None
        if not self._room_for(record, held):
            self._refuse("records_limit", record, source, f"{len(self.records)} records held")
            return None
        self._tombstones.pop(record.name, None)
        return self._store(record)

    def _room_for(self, record: PeerRecord, held: PeerRecord | None) -> bool:
        if held is None and len(self.records) >= MAX_RECORDS:
            return False
        growth = weight(record) - (weight(held) if held is not None else 0)
        return growth <= 0 or self.weight + growth <= MAX_WEIGHT

    def _defend(self, record: PeerRecord, source: str) -> PeerRecord | None:
        """A record for our own name: never stored; ours jumps above it when it outranks ours."""
        local = self.local
        if not _outranks(record, local):
            return None
        if record.uid != local.uid:
            self._report(record, f"uid {record.uid} claims our name at stamp {record.stamp}")
            self._refuse("name_collision", record, source, f"uid {record.uid} claims our name")
        jumped = next_stamp(record.stamp)
        if jumped is None:
            return None
        return self._store(dataclasses.replace(local, incarnation=jumped[0], version=jumped[1]))

    def _report(self, record: PeerRecord, reason: str) -> None:
        self.collisions.append((record, f"name collision: {reason}"))
        self.collision_count += 1
        del self.collisions[:-MAX_COLLISIONS]

    def _refuse(self, reason: str, record: PeerRecord, source: str, detail: str) -> None:
        who = f"{record.name}({printable(record.nickname, 40)})"
        self.rejections.add(reason, source or "?", f"record {who} at {record.stamp}: {detail}")

    def _store(self, record: PeerRecord) -> PeerRecord:
        held = self.records.get(record.name)
        self.weight += weight(record) - (weight(held) if held is not None else 0)
        self.records[record.name] = record
        return record

    def _drop(self, name: str) -> PeerRecord | None:
        record = self.records.pop(name, None)
        if record is not None:
            self.weight -= weight(record)
        return record

    def remove(self, name: str) -> PeerRecord | None:
        """Forget a peer (GC); the removed record, or None when unknown. Never our own."""
        if name == self.name:
            raise ValueError("cannot remove our own record")
        record = self._drop(name)
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

    def wanted(self, digest: Mapping[str, Stamp], wall_ns: int | None = None) -> list[str]:
        """Names the digest's sender holds a newer stamp of than we do, sorted; given the wall
        clock, not those whose stamp ``merge`` would refuse as from the future."""
        horizon = MAX_STAMP if wall_ns is None else wall_ns + MAX_AHEAD_NS
        return sorted(
            name for name, stamp in digest.items()
            if stamp[0] <= horizon and self._wants(name, tuple(stamp))
        )  # fmt: skip

    def _wants(self, name: str, stamp: tuple[int, ...]) -> bool:
        held = self.records.get(name)
        tomb = self._tombstones.get(name)
        return (held is None or stamp > held.stamp) and (tomb is None or stamp > tomb)

    def snapshot(self) -> list[PeerRecord]:
        """All records, sorted by name: the full state sent on connect."""
        return [self.records[name] for name in sorted(self.records)]
