"""The state file: atomic replacement, loud refusal of damaged files, survival of SIGKILL."""

from __future__ import annotations

import json
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlay.ipam import store
from overlay.ipam.store import StoreError

ROOT = Path(__file__).resolve().parents[3]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ipam.json"
    document = {"block_prefix": 24, "owned": ["10.32.0.0/24"], "allocations": [["c", "e", "x"]]}
    store.save(str(path), document)
    assert store.load(str(path)) == document
    assert json.loads(path.read_text())["format"] == 1
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert leftovers(path.parent) == []


def test_save_replaces_the_previous_document(tmp_path: Path) -> None:
    path = str(tmp_path / "ipam.json")
    store.save(path, {"n": 1})
    store.save(path, {"n": 2})
    assert store.load(path) == {"n": 2}


def test_missing_file_or_directory_is_none(tmp_path: Path) -> None:
    assert store.load(str(tmp_path / "ipam.json")) is None
    assert store.load(str(tmp_path / "nowhere" / "ipam.json")) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"format": 1, "owned": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"owned": []}', "unknown format None"),
        (b'{"format": 2}', "unknown format 2"),
        (b'{"format": true}', "unknown format True"),
        (b'{"format": "1"}', "unknown format '1'"),
    ],
)
def test_damaged_file_is_an_error_naming_the_path(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "ipam.json"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=reason) as caught:
        store.load(str(path))
    assert str(caught.value).startswith(f"{path}: ")


def test_load_removes_only_this_paths_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    store.save(str(path), {"n": 1})
    for name in (".ipam.json.tmp-999", ".ipam.json.tmp-1", ".ipam.json.tmp-x", ".other.tmp-5"):
        (tmp_path / name).write_text("{half")
    assert store.load(str(path)) == {"n": 1}
    assert leftovers(tmp_path) == [".ipam.json.tmp-x", ".other.tmp-5"]


def test_reserved_field_and_unserialisable_documents_leave_the_file_alone(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ipam.json")
    store.save(path, {"n": 1})
    with pytest.raises(ValueError, match="'format' is reserved"):
        store.save(path, {"format": 2})
    with pytest.raises(TypeError):
        store.save(path, {"n": object()})
    assert store.load(path) == {"n": 1}
    assert leftovers(tmp_path) == []


WRITER = """
import sys
from overlay.ipam import store

path, rows = sys.argv[1], int(sys.argv[2])
n = 0
while True:
    store.save(path, {"seq": n, "rows": [[n, "x" * 60]] * rows, "end": n})
    if n == 0:
        print("ready", flush=True)
    n += 1
"""
ROWS = 20_000


def check_complete(document: dict[str, object] | None) -> int:
    assert document is not None
    seq = document["seq"]
    assert isinstance(seq, int)
    assert document == {"seq": seq, "rows": [[seq, "x" * 60]] * ROWS, "end": seq}
    return seq


def test_sigkill_during_saves_leaves_a_complete_document(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ipam.json"
    rng = random.Random(20)
    seen = []
    for _ in range(20):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(ROWS)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.1))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            if writer.stdout is not None:
                writer.stdout.close()
        seen.append(check_complete(store.load(str(path))))
        assert leftovers(path.parent) == []
    assert max(seen) > 0, "the writer never got past its first document"


def test_write_atomic_is_durable_and_sets_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = store.os.fsync

    def fsync(fd: int) -> None:
        mode = store.os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "?")
        real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", fsync)
    path = tmp_path / "made" / "f"
    store.write_atomic(str(path), b"a much longer old content\n")
    store.write_atomic(str(path), b"new\n", mode=0o644, dir_mode=0o755)
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # made by the first write
    assert synced == ["file", "dir", "file", "dir"]
    assert leftovers(path.parent) == []
