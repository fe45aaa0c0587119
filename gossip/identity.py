"""Peer identity: a stable name, a human nickname and a random uid per process start.

The name is derived from the node name (the Kubernetes node name when there is one), never from
machine-id, which cloned machines share. It is written Weave-style as six hex octets.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class Identity:
    name: str  # "aa:bb:cc:dd:ee:ff"
    nickname: str  # the node name
    uid: int  # random per process start: tells a restart from a reconnect

    @property
    def peer_id(self) -> int:
        return peer_id(self.name)

    def __str__(self) -> str:
        return f"{self.name}({self.nickname})"


def name_for(node_name: str) -> str:
    digest = hashlib.sha256(node_name.encode()).digest()[:6]
    return ":".join(f"{b:02x}" for b in digest)


def peer_id(name: str) -> int:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"peer name {name!r} is not six hex octets like 'aa:bb:cc:dd:ee:ff'")
    return int(name.replace(":", ""), 16)


def new_identity(node_name: str) -> Identity:
    return Identity(name_for(node_name), node_name, secrets.randbits(63) | 1)
