"""Identity persistence: the peer-name file is reused, written atomically and repaired."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gossip import identity
from gossip.identity import PEER_NAME_FILE, load_or_create, name_for


def test_first_start_derives_and_persists(tmp_path: Path) -> None:
    me = load_or_create(str(tmp_path), "node-1")
    assert (me.name, me.nickname) == (name_for("node-1"), "node-1")
    assert (tmp_path / PEER_NAME_FILE).read_text() == me.name + "\n"
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


@pytest.mark.parametrize(
    "content",
    [b"", b"not a name\n", b"aa:bb:cc:dd:ee\n", b"aa:bb:cc:dd:ee:ff:00\n", b"\xff\xfe\n"],
)
def test_invalid_content_replaced_with_derived_name(tmp_path: Path, content: bytes) -> None:
    (tmp_path / PEER_NAME_FILE).write_bytes(content)
    me = load_or_create(str(tmp_path), "node-1")
    assert me.name == name_for("node-1")
    assert (tmp_path / PEER_NAME_FILE).read_text() == me.name + "\n"
    assert os.listdir(tmp_path) == [PEER_NAME_FILE]


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(identity.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        load_or_create(str(tmp_path), "node-1")
    assert os.listdir(tmp_path) == []


def test_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("a much longer old content\n")
    identity.write_atomically(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_mode & 0o777 == 0o644
