"""One JSON document on disk, replaced atomically.

Theory of operation. ``save`` never writes the file in place: it writes the whole document to a
temporary file beside it (``.<name>.tmp-<pid>``, same directory so the same filesystem), flushes
it to the disk, renames it over the file (``os.replace``, atomic on POSIX) and flushes the
directory so the rename itself survives a power cut. A reader therefore sees the old document or
the new one, never a mix; a crash at any moment leaves at worst a stale temporary file, which
the next ``load`` removes.

The document on disk carries ``"format": FORMAT``; ``save`` adds it and ``load`` checks and
strips it, so ``load`` returns exactly the mapping that was saved. A file that exists but is not
a document of a known format is an error (``StoreError``), not an empty state: silently starting
over could hand out addresses that live pods still hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

FORMAT = 1
TMP_MARK = ".tmp-"


class StoreError(ValueError):
    """A state file exists but cannot be used; the message names the path and the reason."""


def _tmp_prefix(path: str) -> tuple[str, str]:
    directory, name = os.path.split(path)
    return directory or ".", f".{name}{TMP_MARK}"


def save(path: str, document: Mapping[str, Any]) -> None:
    """Replace the document at ``path`` atomically (the directory is made if missing)."""
    if "format" in document:
        raise ValueError(f"{path}: 'format' is reserved for the store")
    data = json.dumps({"format": FORMAT, **document}, separators=(",", ":")).encode()
    write_atomic(path, data)


def write_atomic(path: str, data: bytes, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Replace the file at ``path`` with ``data``, atomically and durably (see the module
    docstring); the directory is made with ``dir_mode`` if missing. The one writer of the
    agent's files: this store, the persisted peer name and the CNI plugin and conflist that
    ``weave-py install-cni`` installs."""
    directory, prefix = _tmp_prefix(path)
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    tmp = os.path.join(directory, f"{prefix}{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, mode)  # not narrowed by the umask
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str) -> dict[str, Any] | None:
    """The document saved at ``path``, or None when there is none."""
    _remove_leftovers(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(data)
    except ValueError as error:  # JSONDecodeError or UnicodeDecodeError
        raise StoreError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise StoreError(f"{path}: expected a JSON object, got {type(document).__name__}")
    version = document.pop("format", None)
    if type(version) is not int or version != FORMAT:
        raise StoreError(f"{path}: unknown format {version!r}, this agent reads format {FORMAT}")
    return document


def _remove_leftovers(path: str) -> None:
    """Remove temporary files a crashed ``save`` of this path left behind."""
    directory, prefix = _tmp_prefix(path)
    pattern = re.compile(re.escape(prefix) + r"[0-9]+")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if pattern.fullmatch(name):
            _remove(os.path.join(directory, name))


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
