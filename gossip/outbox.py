"""Messages the mesh has encoded for its connections, and what sending them costs (sans-IO).

Rules this module keeps:
- A TOPOLOGY message carries at most ``max_records`` records and at most MAX_BODY bytes of
  them; more are split over several messages. With each record bounded (gossip/record.py), no
  message grows with N^2 and none exceeds what a decoder accepts.
- A record is packed for the wire once per version (records are resent often).
- Every message is counted in ``stats`` when it is queued.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gossip import wire
from gossip.topology import PeerRecord
from gossip.wire import MessageType

MAX_BODY = wire.MAX_MESSAGE - 64  # bytes of packed records per TOPOLOGY (the rest: its head)


@dataclass
class MeshStats:
    """What the mesh has sent, for the gossip benchmark and the status views."""

    bytes_sent: int = 0
    messages_sent: int = 0
    largest_message: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class Outbox:
    """Encoded messages waiting for the driver, as (connection id, bytes), with their cost."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self.stats = MeshStats()
        self._messages: list[tuple[Hashable, bytes]] = []
        self._wire_cache: dict[str, tuple[tuple[Any, ...], bytes]] = {}

    def send(self, conn: Hashable, msg_type: MessageType, **fields: Any) -> None:
        """Queue one message of ``msg_type`` with ``fields`` for ``conn``."""
        self._emit(conn, msg_type, wire.encode(msg_type, **fields))

    def send_records(self, conn: Hashable, records: list[PeerRecord]) -> None:
        """Queue ``records`` for ``conn`` as TOPOLOGY messages of at most ``max_records``
        records and MAX_BODY bytes."""
        chunk: list[bytes] = []
        size = 0
        for record in records:
            packed = self._packed(record)
            if chunk and (len(chunk) == self.max_records or size + len(packed) > MAX_BODY):
                self._emit_records(conn, chunk)
                chunk, size = [], 0
            chunk.append(packed)
            size += len(packed)
        if chunk:
            self._emit_records(conn, chunk)

    def _emit_records(self, conn: Hashable, chunk: list[bytes]) -> None:
        data = wire.encode_list(MessageType.TOPOLOGY, "records", chunk)
        self._emit(conn, MessageType.TOPOLOGY, data)

    def drain(self) -> list[tuple[Hashable, bytes]]:
        """The queued messages, in order; the queue is empty afterwards."""
        out, self._messages = self._messages, []
        return out

    def _packed(self, record: PeerRecord) -> bytes:
        """A record packed for the wire, once per version."""
        key = (record.name, record.stamp, record.uid)
        found = self._wire_cache.get(record.name)
        if found is None or found[0] != key:
            packed = msgpack.packb(record.to_wire(), use_bin_type=True)
            found = self._wire_cache[record.name] = (key, packed)
        return found[1]

    def _emit(self, conn: Hashable, msg_type: MessageType, data: bytes) -> None:
        self._messages.append((conn, data))
        s = self.stats
        s.bytes_sent += len(data)
        s.messages_sent += 1
        s.largest_message = max(s.largest_message, len(data))
        s.by_type[msg_type.name] = s.by_type.get(msg_type.name, 0) + len(data)
