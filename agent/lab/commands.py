"""The host commands the image build runs (podman, debootstrap, tar), behind a small Protocol so
the decisions around them are tested without running any: ``output`` for short commands whose
answer is read, ``logged`` for long ones whose output goes to a log file.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TextIO

LOG_TAIL_LINES = 20


class CommandError(Exception):
    """A command could not be run or failed; the message holds its stderr or its log's tail."""


class Commands(Protocol):
    """Runs commands on the host."""

    def output(self, argv: Sequence[str]) -> str:
        """The command's stdout; CommandError when it fails."""
        ...

    def succeeds(self, argv: Sequence[str]) -> bool:
        """Whether the command exits 0 (its output is dropped)."""
        ...

    def logged(self, argv: Sequence[str], log: Path) -> None:
        """Run the command, its stdout and stderr appended to ``log``; CommandError if it fails."""
        ...


class HostCommands:
    """Commands through subprocess, with no standard input."""

    def output(self, argv: Sequence[str]) -> str:
        done = self._run(argv, subprocess.PIPE, subprocess.PIPE)
        if done.returncode != 0:
            raise CommandError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} exited "
                               f"{done.returncode}: {done.stderr.strip()}")  # fmt: skip
        return done.stdout

    def succeeds(self, argv: Sequence[str]) -> bool:
        return self._run(argv, subprocess.DEVNULL, subprocess.DEVNULL).returncode == 0

    def logged(self, argv: Sequence[str], log: Path) -> None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            done = self._run(argv, out, subprocess.STDOUT)
        if done.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            raise CommandError(f"{argv[0]} exited {done.returncode} (log {log}):\n"
                               + "\n".join(tail))  # fmt: skip

    @staticmethod
    def _run(
        argv: Sequence[str], stdout: int | TextIO, stderr: int | TextIO
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=stdout,
                                  stderr=stderr, text=True, check=False)  # fmt: skip
        except FileNotFoundError as e:
            raise CommandError(f"{argv[0]}: not found ({e.strerror})") from e
