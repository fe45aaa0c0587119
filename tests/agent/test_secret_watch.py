"""The secrets file read again while the agent runs (agent/secret_watch.py): a valid change is
taken and said, the same list or the same bytes do nothing, an invalid or unreadable file
changes nothing and is said once per problem (never a secret), and a file valid again is
taken; then the driver's reads of a real file, replaced the way kubelet replaces a mounted
Secret (a new directory behind the ``..data`` symlink)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from agent.config import ConfigError
from agent.secret_watch import SecretWatch, poll, watch_secrets
from gossip.secret import Secrets

A, B = b"the old secret", b"the new secret"
PATH = "/run/weave-py/secret/password"


def watch(*held: bytes) -> SecretWatch:
    return SecretWatch(PATH, Secrets(held))


def test_a_changed_list_is_taken_and_said() -> None:
    w = watch(A)
    seen = w.observe(b"%s\n%s\n" % (A, B))
    assert seen.secrets is not None and seen.secrets.accepted == (A, B)
    assert seen.line == (
        f"accept secrets: 2 (1 new, 0 dropped; the first, which dials and seals, unchanged) "
        f"from {PATH}"
    )
    assert w.held.accepted == (A, B) and (w.changes, w.rejected) == (1, 0)
    seen = w.observe(b"%s\n" % B)
    assert seen.secrets == Secrets((B,))
    assert "1 (0 new, 1 dropped; the first, which dials and seals, changed)" in seen.line


def test_the_same_list_does_nothing() -> None:
    w = watch(A, B)
    assert w.observe(b"%s\n%s\n" % (A, B)).secrets is None
    nothing = w.observe(b"  %s \r\n\n%s" % (A, B))  # other bytes, the same list
    assert (nothing.secrets, nothing.line, nothing.problem) == (None, "", "")
    assert (w.changes, w.rejected) == (0, 0)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "no secret in it"),
        (b"%s\n%s\n" % (A, A), "listed twice"),
        (b"x" * 5000, "longer than 4096 bytes"),
    ],
)
def test_an_invalid_file_changes_nothing_and_is_said_once(content: bytes, why: str) -> None:
    w = watch(A)
    seen = w.observe(content)
    assert seen.secrets is None and w.held.accepted == (A,)
    assert seen.problem.startswith(f"ignore password_file {PATH}: ") and why in seen.problem
    assert seen.problem.endswith("; keeping the secrets held")
    assert A.decode() not in seen.problem
    assert w.rejected == 1 and w.problem
    again = w.observe(content)
    assert (again.secrets, again.problem, w.rejected) == (None, "", 1)


def test_an_unreadable_file_changes_nothing_until_it_is_back() -> None:
    w = watch(A)
    gone = ConfigError(f"password_file {PATH}: No such file or directory")
    assert "No such file" in w.observe(gone).problem
    assert w.observe(gone).problem == "" and w.rejected == 1  # the same problem: quiet
    assert "no secret in it" in w.observe(b"\n").problem  # another problem: said
    assert w.rejected == 2
    back = w.observe(b"%s\n" % A)  # valid again, with the list held
    assert back.secrets is None
    assert back.line == f"accept password_file {PATH}: valid again, secrets unchanged"
    assert w.problem == "" and w.held.accepted == (A,)
    assert "No such file" in w.observe(gone).problem  # a problem after recovery: said again


def test_back_to_valid_with_a_new_list_is_taken() -> None:
    w = watch(A)
    w.observe(b"")
    seen = w.observe(b"%s\n%s\n" % (B, A))
    assert seen.secrets == Secrets((B, A)) and seen.line.startswith("accept secrets: 2")
    assert (w.changes, w.rejected, w.problem) == (1, 1, "")


# -- the driver, on a real file --------------------------------------------------------------


def kubelet_write(directory: Path, accepted: tuple[bytes, ...], generation: int) -> None:
    """Replace the Secret's content as kubelet does: a new directory, then ``..data`` swapped
    to it in one rename; ``password`` is a symlink through ``..data``."""
    fresh = directory / f"..gen{generation}"
    fresh.mkdir()
    (fresh / "password").write_bytes(b"".join(s + b"\n" for s in accepted))
    (directory / "..data_tmp").symlink_to(fresh.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    if not (directory / "password").is_symlink():
        (directory / "password").symlink_to("..data/password")


async def test_the_driver_hands_on_each_change_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="weave-py")
    kubelet_write(tmp_path, (A,), 1)
    path = str(tmp_path / "password")
    w = SecretWatch(path, Secrets((A,)))
    taken: list[Secrets] = []
    await poll(w, taken.append)
    assert taken == [] and not caplog.messages
    kubelet_write(tmp_path, (B, A), 2)
    await poll(w, taken.append)
    await poll(w, taken.append)
    assert taken == [Secrets((B, A))]
    os.remove(tmp_path / "..data")  # the volume's content gone: nothing changes
    await poll(w, taken.append)
    await poll(w, taken.append)
    assert taken == [Secrets((B, A))] and w.rejected == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"ignore password_file {path}: No such file or directory; "
                        "keeping the secrets held"]  # fmt: skip
    assert not any(x.decode() in m for m in caplog.messages for x in (A, B))


async def test_watch_secrets_polls_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(A + b"\n")
    taken: list[Secrets] = []
    task = asyncio.create_task(watch_secrets(SecretWatch(str(path), Secrets((A,))), taken.append,
                                             interval=0.01))  # fmt: skip
    path.write_bytes(B + b"\n")
    async with asyncio.timeout(5):
        while not taken:
            await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert taken == [Secrets((B,))] and task.cancelled()
