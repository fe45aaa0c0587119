"""Peer identity: a stable name, a human nickname and a random uid per process start.

The name is derived from the node name (the Kubernetes node name when there is one), never from
machine-id, which cloned machines share. It is written Weave-style as six hex octets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import secrets
import tempfile
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


PEER_NAME_FILE = "peer-name"
_MAX_NAME_FILE = 64  # bytes read from the name file; a valid one holds 18


def load_or_create(state_dir: str, node_name: str) -> Identity:
    """This process's identity: the persisted name if valid, else a derived one, now persisted.

    The name lives in ``<state_dir>/peer-name`` and is reused on every later start, so a peer
    keeps its name even if the derivation changes. The file is only ever replaced whole (temp
    file + rename): a crash leaves the old name or the new one. A missing state directory is
    created; the uid is new on every call.
    """
    fresh = new_identity(node_name)
    path = os.path.join(state_dir, PEER_NAME_FILE)
    name = read_peer_name(path)
    if name is None:
        write_atomically(path, fresh.name + "\n")
        return fresh
    return dataclasses.replace(fresh, name=name)


def read_peer_name(path: str) -> str | None:
    """The name stored at ``path``, or None when the file is missing or does not hold one."""
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_NAME_FILE).decode("ascii").strip().lower()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text if NAME_PATTERN.fullmatch(text) else None


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` whole: other readers see the old file or the new one."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
