"""What the mesh tells its neighbours about the topology, and how it answers them (sans-IO).

Rules this module keeps:
- Local changes and merged novelty are coalesced for ``gossip_interval``, then pushed as
  TOPOLOGY deltas to a fanout of log2 N + 1 random neighbours; only novelty is forwarded again.
- Anti-entropy repairs what pushes missed: every ``repair_interval`` (jittered by 0.8 to 1.2)
  one random neighbour gets a DIGEST (name -> stamp). A DIGEST is answered with the records
  newer on our side plus a REQUEST for those newer on the sender's; a REQUEST with the records
  it names that we hold.
- A record we already hold in the same or a newer version is skipped before it is decoded
  (most of what gossip brings is such echoes); anything odd is decoded and judged in full. A
  malformed message raises ValueError.
- Bounds on what one message may make us do: a TOPOLOGY carries at most MAX_RECORDS_IN records,
  a DIGEST and a REQUEST at most MAX_NAMES names (a DIGEST's stamps within the record bounds);
  more is malformed. A REQUEST is answered once per distinct name we hold, however often it
  repeats one; our own REQUEST asks for at most MAX_WANTED names (the rest with the next repair).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Hashable
from typing import Any

from gossip.outbox import Outbox
from gossip.record import MAX_STAMP
from gossip.topology import MAX_RECORDS, PeerRecord, Topology
from gossip.wire import MessageType

MAX_RECORDS_IN = 1024  # records in one TOPOLOGY we accept (senders split at max_records)
MAX_NAMES = MAX_RECORDS  # names in one DIGEST or REQUEST: no sender holds more records
MAX_WANTED = 1024  # names we ask for in one REQUEST


class Dissemination:
    """The gossip of one peer's topology: coalesced pushes, repair digests and answers."""

    def __init__(
        self,
        topology: Topology,
        outbox: Outbox,
        rng: random.Random,
        gossip_interval: float,
        repair_interval: float,
    ) -> None:
        self.topology = topology
        self.outbox = outbox
        self.rng = rng
        self.gossip_interval = gossip_interval
        self.repair_interval = repair_interval
        self.flush_at: float | None = None  # when queued records are pushed
        self.repair_at = 0.0  # when the next repair digest is sent
        self._pending: dict[str, PeerRecord] = {}

    def queue(self, records: list[PeerRecord], now: float) -> None:
        """Push ``records`` with the next flush, due at most ``gossip_interval`` from ``now``."""
        for record in records:
            self._pending[record.name] = record
        if self.flush_at is None:
            self.flush_at = now + self.gossip_interval

    def flush(self, conns: Collection[Hashable]) -> None:
        """Push the queued records (their latest versions) to a random fanout of ``conns``."""
        pending = [self.topology.records.get(n, r) for n, r in self._pending.items()]
        self._pending.clear()
        self.flush_at = None
        ordered = sorted(conns, key=str)
        n = max(2, len(self.topology.records))
        fanout = min(len(ordered), math.ceil(math.log2(n)) + 1)
        for conn in self.rng.sample(ordered, fanout):
            self.outbox.send_records(conn, pending)

    def repair(self, now: float, conns: Collection[Hashable]) -> None:
        """Send a DIGEST to one random connection of ``conns``; set the next repair time."""
        self.repair_at = now + self.repair_interval * self.rng.uniform(0.8, 1.2)
        if conns:
            self.send_digest(self.rng.choice(sorted(conns, key=str)))

    def send_digest(self, conn: Hashable) -> None:
        """Send ``conn`` a DIGEST of every record we hold."""
        digest = {name: list(stamp) for name, stamp in self.topology.digest().items()}
        self.outbox.send(conn, MessageType.DIGEST, digest=digest)

    def receive(
        self,
        conn: Hashable,
        msg_type: int,
        fields: dict[str, Any],
        now: float,
        wall_ns: int,
        source: str = "",
    ) -> list[PeerRecord]:
        """Take one message from ``conn`` at ``now`` (the wall clock then: ``wall_ns``, which
        records are judged by); ``source`` names it in refusals. The records it brought that
        were news (queued)."""
        if msg_type == MessageType.TOPOLOGY:
            listed = _list(fields, "records", MAX_RECORDS_IN)
            records = [PeerRecord.from_wire(d) for d in listed if not self._stale(d)]
            novel = self.topology.merge(records, source, wall_ns)
            if novel:
                self.queue(novel, now)
            return novel
        if msg_type == MessageType.DIGEST:
            digest = _digest_from_wire(fields.get("digest"))
            self.outbox.send_records(conn, self.topology.newer_than(digest))
            wanted = self.topology.wanted(digest, wall_ns)[:MAX_WANTED]
            if wanted:
                self.outbox.send(conn, MessageType.REQUEST, names=wanted)
        elif msg_type == MessageType.REQUEST:
            names = dict.fromkeys(n for n in _list(fields, "names", MAX_NAMES) if type(n) is str)
            found = [self.topology.records[n] for n in names if n in self.topology.records]
            self.outbox.send_records(conn, found)
        # GOODBYE, KEEPALIVE and unknown types need nothing here: the departed record arrives
        # as TOPOLOGY and the leaving peer closes the connection.
        return []

    def _stale(self, d: Any) -> bool:
        """A record we already hold in this or a newer version (see the module rules)."""
        if not isinstance(d, dict):
            return False
        name, i, v = d.get("n"), d.get("i"), d.get("v")
        mine = self.topology.records.get(name) if isinstance(name, str) else None
        if mine is None or type(i) is not int or type(v) is not int:
            return False
        return (i, v) < mine.stamp or ((i, v) == mine.stamp and d.get("u") == mine.uid)


def _list(fields: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = fields.get(key)
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError(f"field {key!r} is not a list of at most {limit}")
    return value


def _digest_from_wire(value: Any) -> dict[str, tuple[int, int]]:
    if not isinstance(value, dict) or len(value) > MAX_NAMES:
        raise ValueError(f"digest is not a map of at most {MAX_NAMES} names")
    out = {}
    for name, stamp in value.items():
        if (
            not isinstance(name, str) or not isinstance(stamp, list | tuple) or len(stamp) != 2
            or not all(type(x) is int and 0 <= x <= MAX_STAMP for x in stamp)
        ):  # fmt: skip
            raise ValueError("digest entry is not name -> [incarnation, version] within bounds")
        out[name] = (stamp[0], stamp[1])
    return out
