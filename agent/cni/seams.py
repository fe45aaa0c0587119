"""The CNI handler's two seams, built by the daemon: ``PodAddresses`` (the agent's IPAM) and
``PodNetwork`` (veth, address and routes, on a thread the network owns).

Both refuse only with ``agent.errors.Refused`` subclasses; ``CODES`` below is the one place
those become CNI codes, which the handler (agent/cni/handler.py) applies at its boundary.
The kernel ``PodNetwork`` is agent/cni/network.py, the agent's ``PodAddresses``
agent/addresses.py; tests/agent/cni_fakes.py fakes both."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from typing import Protocol

from agent import errors
from agent.cni.spec import CniError, Code
from overlay import pods


class PodAddresses(Protocol):
    """Pod addresses of this node (the agent's IPAM), keyed by (container id, interface name)."""

    def ready(self) -> bool:
        """Whether ADD may ask for addresses now (it answers TRY_AGAIN_LATER while not)."""

    async def allocate(self, container_id: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        """The key's address and gateway (the same key gets the same address back); not yet
        durable."""

    async def persist(self) -> None:
        """Make what ``allocate`` handed out durable (ADD awaits it before answering)."""

    async def release(self, container_id: str, ifname: str | None) -> None:
        """Give the key's address back (None: every interface of the container); releasing
        what is not held is no error."""

    def held(self) -> list[tuple[str, str]]:
        """Every (container id, ifname) holding an address (GC)."""


class PodNetwork(Protocol):
    """The node side of pod networking: veth, address, routes. Owns the thread it runs on."""

    @property
    def bridge(self) -> str:
        """The node bridge the host side of each veth joins."""

    @property
    def mtu(self) -> int:
        """The MTU pods get unless the network configuration sets ``mtu``."""

    @property
    def gso_max_size(self) -> int:
        """The GSO size pod veths are created with."""

    async def has_link(self, netns: int, ifname: str) -> bool:
        """Whether the pod's namespace (an open descriptor) already has ``ifname``."""

    async def attach(self, a: pods.Attachment) -> pods.Attached:
        """Create and configure the veth pair; ``errors.InterfaceExists`` (nothing touched)
        when the pod already has ``a.ifname``; nothing is left behind on any failure."""

    async def detach(self, container_id: str, ifname: str) -> bool:
        """Remove the key's veth pair; False when there was none."""

    async def check(self, e: pods.Expected) -> list[str]:
        """What is missing or different from ``e``; empty when the attachment is intact."""


# The agent's refusals as CNI codes: the first class the refusal is an instance of.
CODES: dict[type[errors.Refused], Code] = {
    errors.TryLater: Code.TRY_AGAIN_LATER,  # TimedOut is one too
    errors.NoAddress: Code.NO_ADDRESS,
    errors.Invalid: Code.INVALID_ENV,
    errors.InterfaceExists: Code.INTERFACE_EXISTS,
    errors.KernelRefused: Code.KERNEL,
    errors.StorageFailed: Code.IO_FAILURE,
    errors.Refused: Code.IPAM,
}


def cni_error(exc: errors.Refused) -> CniError:
    """The refusal as the CNI error the runtime gets (message and details kept)."""
    code = next(code for kind, code in CODES.items() if isinstance(exc, kind))
    return CniError(code, exc.message, exc.details)
