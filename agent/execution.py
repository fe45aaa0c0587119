"""Carrying out the coordinator's plan, each action on its own.

A plan (agent/coordinator.py) asks for up to five things: the sleeve's local blocks, its
peers, the node's state in the kernel, the IPAM document on disk, and our record published.
The first two are in-memory and cannot fail. The other three touch the kernel, the disk and
the peer source; any of them may fail (a netlink refusal, ENOSPC, a record the source cannot
send) and each failure stays with its action: it is counted in the ``plan action`` tally
(agent/refusals.py) by action and errno name, logged (rate-limited) with the error, and
remembered, so the next step, due within ``RETRY_INTERVAL``, carries it out again (the node
state as the coordinator wants it then, the document as it is then, the record fields merged
with any newer ones). The other actions of the plan go ahead; the agent lives on.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from agent import errors
from agent.coordinator import Plan
from agent.refusals import Tally
from overlay import node
from overlay.netdev import NetlinkFailure

log = logging.getLogger("weave-py")
RETRY_INTERVAL = 1.0  # seconds until a failed action is tried again


class Kernel(Protocol):
    """The node's kernel side as the plan needs it (agent/kernel.py's NodeKernel)."""

    async def reconcile(self, spec: node.NodeSpec) -> list[node.Action]: ...


class Execution:
    """Carries out plans; ``save`` writes a document, ``document`` gives the current one,
    ``publish`` sends our record's fields; failures go to ``tally``."""

    def __init__(
        self,
        kernel: Kernel,
        save: Callable[[Mapping[str, Any]], Awaitable[None]],
        document: Callable[[], Mapping[str, Any]],
        publish: Callable[[Mapping[str, Any]], None],
        tally: Tally,
    ) -> None:
        self.kernel, self.save, self.document, self.publish = kernel, save, document, publish
        self.tally = tally
        self.node_due = False  # the last reconcile failed
        self.save_due = False  # the last write failed
        self.publish_due: dict[str, Any] = {}  # fields whose publishing failed

    @property
    def due(self) -> bool:
        """An action failed and waits for the next step."""
        return self.node_due or self.save_due or bool(self.publish_due)

    async def kernel_state(
        self, plan: Plan, desired: node.NodeSpec | None, now: float
    ) -> list[node.Action]:
        """The node state in the kernel: the plan's, or ``desired`` again after a failure."""
        spec = plan.node if plan.node is not None else desired if self.node_due else None
        if spec is None:
            return []
        try:
            actions = await self.kernel.reconcile(spec)
        except (NetlinkFailure, OSError) as exc:
            self._failed("reconcile", exc, "kernel", now)
            self.node_due = True
            return []
        self.node_due = False
        return actions

    async def repair(self, desired: node.NodeSpec, now: float) -> list[node.Action]:
        """The node state applied again (drift repair); a failure is counted, not raised."""
        try:
            return await self.kernel.reconcile(desired)
        except (NetlinkFailure, OSError) as exc:
            self._failed("repair", exc, "kernel", now)
            return []

    async def disk(self, plan: Plan, now: float) -> None:
        """The IPAM document on disk, when the plan changed it or a write failed."""
        if not (plan.save or self.save_due):
            return
        try:
            await self.save(self.document())
        except (errors.StorageFailed, OSError) as exc:
            self._failed("save", exc, "disk", now)
            self.save_due = True
            return
        self.save_due = False

    def record(self, plan: Plan, now: float) -> None:
        """Our record's new fields out, with any whose publishing failed before."""
        fields = {**self.publish_due, **(plan.publish or {})}
        if not fields:
            return
        try:
            self.publish(fields)
        except Exception as exc:  # the source's bug or refusal: this record, not the agent
            log.debug("publish record: failed", exc_info=True)
            self._failed("publish", exc, "peer source", now)
            self.publish_due = fields
            return
        self.publish_due = {}

    def next_at(self, planned: float, now: float) -> float:
        """When to step next: as planned, or sooner when an action waits for a retry."""
        return min(planned, now + RETRY_INTERVAL) if self.due else planned

    def _failed(self, action: str, exc: BaseException, source: str, now: float) -> None:
        self.tally.note(f"{action} {why(exc)}", source, now, str(exc))


def why(exc: BaseException) -> str:
    """A short label for a failure: the errno name when there is one, else the type's name."""
    code = getattr(exc, "code", None) if isinstance(exc, NetlinkFailure) else None
    if code is None and isinstance(exc, OSError):
        code = exc.errno
    if code is None and isinstance(exc, errors.StorageFailed):
        return _errno_in(exc.details) or "storage"
    if isinstance(code, int):
        return errno.errorcode.get(code, str(code))
    return type(exc).__name__


def _errno_in(text: object) -> str:
    """An errno name mentioned in a message ("[Errno 28] No space left on device")."""
    for code, name in errno.errorcode.items():
        if isinstance(text, str) and (f"[Errno {code}]" in text or name in text.split()):
            return name
    return ""
