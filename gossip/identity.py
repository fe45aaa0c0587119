"""Peer identity: a stable name, a human nickname and a random uid per process start.

The name is derived from the node name (the Kubernetes node name when there is one), never from
machine-id, which cloned machines share. It is written Weave-style as six hex octets. This
module only derives, checks and parses names; keeping a name across restarts is the agent's
job (agent/peer_name.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class Identity:
    """Who this process is in the mesh: the name peers know it by, and this start's uid."""

    name: str  # "aa:bb:cc:dd:ee:ff"
    nickname: str  # the node name
    uid: int  # random per process start: tells a restart from a reconnect

    @property
    def peer_id(self) -> int:
        """The name as the 48-bit integer the data plane's frames carry."""
        return peer_id(self.name)

    def __str__(self) -> str:
        return f"{self.name}({self.nickname})"


def name_for(node_name: str) -> str:
    """The peer name derived from a node name (the same on every machine and every start)."""
    digest = hashlib.sha256(node_name.encode()).digest()[:6]
    return ":".join(f"{b:02x}" for b in digest)


def peer_id(name: str) -> int:
    """A peer name as a 48-bit integer; ValueError when it is not six hex octets."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"peer name {name!r} is not six hex octets like 'aa:bb:cc:dd:ee:ff'")
    return int(name.replace(":", ""), 16)


def parse_name(data: bytes) -> str | None:
    """The peer name in ``data`` (as stored in a file: spaces and case ignored), or None."""
    try:
        text = data.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    return text if NAME_PATTERN.fullmatch(text) else None


def new_identity(node_name: str, name: str | None = None) -> Identity:
    """This process's identity: ``name`` (default: derived from the node name), a fresh uid."""
    return Identity(name or name_for(node_name), node_name, secrets.randbits(63) | 1)
