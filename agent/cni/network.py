"""The kernel's ``PodNetwork``: overlay/pods.py on a thread of its own, in the node's namespace.

pyroute2's synchronous API runs an event loop of its own, so it never runs on the agent's: every
call goes to one worker thread, which makes ``pods.Pods.on_kernel()`` at its first call and
keeps it (a netlink socket and the bridge's index, reused by every pod start). The thread is in
the namespace of the agent, which enters the node's before it starts; ``netns`` names one the
thread enters first instead (tests with a scratch node namespace).

The kernel's refusals become the agent's: ``pods.InterfaceExists`` is ``errors.InterfaceExists``
and ``NetlinkFailure`` is ``errors.KernelRefused`` (its message names the operation and errno).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from agent import errors
from overlay import pods
from overlay.kernel import NetlinkFailure
from overlay.netns import enter_netns

T = TypeVar("T")


class KernelPodNetwork:
    """Veth pairs, addresses and routes of pods on this node's kernel; ``close()`` when done."""

    def __init__(self, bridge: str, mtu: int, gso_max_size: int, netns: str | None = None) -> None:
        self.bridge = bridge
        self.mtu = mtu
        self.gso_max_size = gso_max_size
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix="pods", initializer=functools.partial(_enter, netns)
        )
        self._pods: pods.Pods | None = None  # made and used on the thread only

    async def has_link(self, netns: int, ifname: str) -> bool:
        """Whether the pod's namespace (an open descriptor) already has ``ifname``."""
        return await self._run(lambda p: p.has_link(netns, ifname))

    async def attach(self, a: pods.Attachment) -> pods.Attached:
        """Create and configure the veth pair (``errors.InterfaceExists``: nothing touched)."""
        return await self._run(lambda p: p.attach(a))

    async def detach(self, container_id: str, ifname: str) -> bool:
        """Remove the key's veth pair; False when there was none."""
        return await self._run(lambda p: p.detach(container_id, ifname))

    async def check(self, e: pods.Expected) -> list[str]:
        """What is missing or different from ``e``."""
        return await self._run(lambda p: p.check(e))

    def close(self) -> None:
        """Release the netlink handle and stop the thread, after the calls in flight."""
        self._thread.submit(self._close_pods)
        self._thread.shutdown()

    async def _run(self, call: Callable[[pods.Pods], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._on_thread, call)
        except pods.InterfaceExists as exc:
            raise errors.InterfaceExists(str(exc)) from None
        except NetlinkFailure as exc:
            raise errors.KernelRefused(str(exc)) from None

    def _close_pods(self) -> None:
        if self._pods is not None:
            self._pods.close()
            self._pods = None

    def _on_thread(self, call: Callable[[pods.Pods], T]) -> T:
        if self._pods is None:
            self._pods = pods.Pods.on_kernel()
        return call(self._pods)


def _enter(netns: str | None) -> None:
    if netns is not None:
        enter_netns(netns)
