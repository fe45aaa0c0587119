"""The persisted peer name: reused across starts, written atomically, repaired when damaged."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.peer_name import PEER_NAME_FILE, load_or_create
from gossip.identity import name_for
from overlay.ipam import store


def test_first_start_derives_and_persists(tmp_path: Path) -> None:
    me = load_or_create(str(tmp_path), "node-1")
    assert (me.name, me.nickname) == (name_for("node-1"), "node-1")
    assert (tmp_path / PEER_NAME_FILE).read_text() == me.name + "\n"
    assert stat.S_IMODE((tmp_path / PEER_NAME_FILE).stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == [PEER_NAME_FILE]  # no temp file left behind


def test_restart_reuses_the_name_with_a_new_uid(tmp_path: Path) -> None:
    first = load_or_create(str(tmp_path), "node-1")
    second = load_or_create(str(tmp_path), "node-1")
    assert second.name == first.name
    assert second.uid != first.uid


def test_stored_name_wins_over_derivation(tmp_path: Path) -> None:
    (tmp_path / PEER_NAME_FILE).write_text("  0A:0b:0c:0d:0e:0f\n")
    me = load_or_create(str(tmp_path), "renamed-node")
    assert (me.name, me.nickname) == ("0a:0b:0c:0d:0e:0f", "renamed-node")


def test_missing_directory_is_created(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "weave"
    me = load_or_create(str(state), "node-1")
    assert (state / PEER_NAME_FILE).read_text().strip() == me.name


@pytest.mark.parametrize("content", [b"", b"not a name\n", b"aa:bb:cc:dd:ee\n", b"\xff\xfe\n"])
def test_invalid_content_replaced_with_derived_name(tmp_path: Path, content: bytes) -> None:
    (tmp_path / PEER_NAME_FILE).write_bytes(content)
    me = load_or_create(str(tmp_path), "node-1")
    assert me.name == name_for("node-1")
    assert (tmp_path / PEER_NAME_FILE).read_text() == me.name + "\n"
    assert os.listdir(tmp_path) == [PEER_NAME_FILE]


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        load_or_create(str(tmp_path), "node-1")
    assert os.listdir(tmp_path) == []
