"""The agent's long-running tasks, watched: a task that dies is logged and reported, never silent.

Each task (the datapath, the peer source with the gossip listener, the coordinator's loop...)
runs on its own. When one ends with an exception, or ends at all, since none of them
returns while the agent runs, the supervisor logs it at ERROR with the traceback and keeps it
in ``dead()``; the others run on, and the API's /healthz answers 500 naming it, so the
liveness probe restarts the agent while its readiness and views still say what works. Servers
(the HTTP API's, the CNI socket's) are watched the same way: one that stops serving is dead.
``stop()`` cancels every task and waits, at most ``timeout`` seconds, for them to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from agent.cni.server import CniServer

log = logging.getLogger("weave-py")


class Supervisor:
    """Named tasks and servers; ``dead()`` lists the ones that stopped, with why."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.watched: dict[str, Callable[[], bool]] = {}  # name -> serving now
        self.failures: dict[str, str] = {}
        self.stopping = False

    def start(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as the task ``name``."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks[name] = task
        task.add_done_callback(self._ended)

    def watch(self, name: str, serving: Callable[[], bool]) -> None:
        """Count ``name`` dead whenever ``serving()`` is false."""
        self.watched[name] = serving

    def _ended(self, task: asyncio.Task[None]) -> None:
        name = task.get_name()
        if self.stopping or task.cancelled():
            if not self.stopping:
                self.failures[name] = "cancelled"
                log.error("stop task %s: cancelled while the agent runs", name)
            return
        exc = task.exception()
        if exc is None:
            self.failures[name] = "ended"
            log.error("stop task %s: ended while the agent runs", name)
            return
        self.failures[name] = f"{type(exc).__name__}: {exc}"
        log.error("stop task %s: %s: %s", name, type(exc).__name__, exc, exc_info=exc)

    def dead(self) -> tuple[str, ...]:
        """ "name: why" for every task that ended and every server that stopped serving."""
        lines = [f"{name}: {why}" for name, why in self.failures.items()]
        lines += [f"{name}: not serving" for name, serving in self.watched.items() if not serving()]
        return tuple(lines)

    async def stop(self, timeout: float) -> None:
        """Cancel every task; wait up to ``timeout`` seconds for them to end."""
        self.stopping = True
        for task in self.tasks.values():
            task.cancel()
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)


def exit_if_stuck(grace: float) -> threading.Timer:
    """A stop must end the process: if clean shutdown takes longer than ``grace`` seconds,
    say so and exit anyway (kernel state is left in place either way). Cancel the timer
    returned once the stop is done."""

    def bail() -> None:
        log.error("stop agent: clean shutdown took over %.0fs, exiting now", grace)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(grace, bail)
    timer.daemon = True
    timer.start()
    return timer


async def close_server(server: asyncio.AbstractServer | CniServer) -> None:
    """Stop ``server``; a client that never reads cannot hold the stop beyond a second."""
    server.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await server.wait_closed()
