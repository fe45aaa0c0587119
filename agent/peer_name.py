"""The peer name this node keeps across restarts, in ``<state_dir>/peer-name``.

The first start derives the name from the node name (gossip.identity) and stores it; every later
start reuses the stored one, so a peer keeps its name even if the derivation changes. The file
is only ever replaced whole, by the state store's durable writer (temporary file, fsync, rename,
fsync of the directory): a crash leaves the old name or the new one. A file that does not hold a
valid name is replaced with the derived one.
"""

from __future__ import annotations

import os

from gossip.identity import Identity, new_identity, parse_name
from overlay.ipam import store

PEER_NAME_FILE = "peer-name"
MAX_NAME_FILE = 64  # bytes read from the name file; a valid one holds 18


def load_or_create(state_dir: str, node_name: str) -> Identity:
    """This process's identity: the stored name if valid, else a derived one, now stored.

    A missing state directory is created; the uid is new on every call.
    """
    path = os.path.join(state_dir, PEER_NAME_FILE)
    stored = read_peer_name(path)
    if stored is not None:
        return new_identity(node_name, stored)
    fresh = new_identity(node_name)
    store.write_atomic(path, f"{fresh.name}\n".encode(), mode=0o644, dir_mode=0o755)
    return fresh


def read_peer_name(path: str) -> str | None:
    """The name stored at ``path``, or None when the file is missing or does not hold one."""
    try:
        with open(path, "rb") as f:
            return parse_name(f.read(MAX_NAME_FILE))
    except FileNotFoundError:
        return None
