"""Secrets taken while the agent runs: ``password_file`` read again every ``POLL_INTERVAL``
seconds, and a valid change handed to the agent, so a rotation needs no restart.

A mounted Kubernetes Secret is updated in place: kubelet writes the new content beside the old
and swaps the volume's ``..data`` symlink, so a read sees the old file or the new one, whole.
``SecretWatch`` is the core (content in, what to take and what to say out); ``watch_secrets``
its driver, which reads the file, stretches new secrets off the event loop and hands them on.

Rules this module keeps:
- The content is compared, not the file's times: the same bytes again do nothing at all.
- Changed content is read by agent/secrets.py's rules, the same as at start-up. When it gives
  a different list, that list is taken (``changes`` counted, one line logged, ``apply`` called
  with the new ``Secrets``); when it gives the list held, nothing happens.
- An invalid or unreadable file changes nothing: the secrets held stay. Its problem is logged
  once, naming the file and what is wrong (never a secret), and counted in ``rejected``; the
  same problem again is neither logged nor counted, a different one is, and a line says when
  the file is valid again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import ConfigError
from agent.secrets import parse_secrets, read_secrets_file
from gossip.secret import Secrets

log = logging.getLogger("weave-py")
POLL_INTERVAL = 2.0  # seconds between reads of password_file (kubelet's own sync is ~60 s)


@dataclass(frozen=True)
class Observation:
    """What one read of the file asks for: secrets to take, a line to log, a problem to warn."""

    secrets: Secrets | None = None
    line: str = ""
    problem: str = ""


class SecretWatch:
    """The secrets held from the file at ``path`` (``held``: what the agent started with)."""

    def __init__(self, path: str, held: Secrets) -> None:
        self.path = path
        self.held = held
        self.changes = 0  # changes taken
        self.rejected = 0  # invalid or unreadable versions of the file seen
        self.problem = ""  # what is wrong with the file now; empty when it is valid
        self._seen: bytes | None = None  # the content last read, valid or not

    def observe(self, content: bytes | ConfigError) -> Observation:
        """One read of the file: its ``content``, or the error reading it gave."""
        if isinstance(content, ConfigError):
            self._seen = None
            return self._trouble(str(content))
        if content == self._seen:
            return Observation()
        self._seen = content
        try:
            secrets = parse_secrets(content, self.path)
        except ConfigError as exc:
            return self._trouble(str(exc))
        recovered, self.problem = bool(self.problem), ""
        if secrets.accepted == self.held.accepted:
            line = f"accept password_file {self.path}: valid again, secrets unchanged"
            return Observation(line=line if recovered else "")
        line = f"accept secrets: {describe(self.held, secrets)} from {self.path}"
        self.held = secrets
        self.changes += 1
        return Observation(secrets, line)

    def _trouble(self, problem: str) -> Observation:
        if problem == self.problem:
            return Observation()
        self.problem = problem
        self.rejected += 1
        return Observation(problem=f"ignore {problem}; keeping the secrets held")


def describe(held: Secrets, new: Secrets) -> str:
    """How ``new`` differs from ``held``, in counts only."""
    added = sum(1 for s in new.accepted if s not in held.accepted)
    dropped = sum(1 for s in held.accepted if s not in new.accepted)
    current = "unchanged" if held.enabled and new.current == held.current else "changed"
    return (
        f"{len(new.accepted)} ({added} new, {dropped} dropped; the first, which dials and "
        f"seals, {current})"
    )


async def watch_secrets(
    watch: SecretWatch, apply: Callable[[Secrets], None], interval: float = POLL_INTERVAL
) -> None:
    """Read ``watch.path`` every ``interval`` seconds until cancelled; hand every change to
    ``apply`` (its keys already stretched)."""
    while True:
        await asyncio.sleep(interval)
        await poll(watch, apply)


async def poll(watch: SecretWatch, apply: Callable[[Secrets], None]) -> None:
    """One read of the file and what follows from it."""
    seen = watch.observe(await asyncio.to_thread(_read, watch.path))
    if seen.problem:
        log.warning(seen.problem)
    if seen.secrets is not None:
        await asyncio.to_thread(seen.secrets.keys)  # scrypt: ~0.1 s per new secret
        apply(seen.secrets)
    if seen.line:
        log.info(seen.line)


def _read(path: str) -> bytes | ConfigError:
    try:
        return read_secrets_file(path)
    except ConfigError as exc:
        return exc
