"""The agent's refusals: one hierarchy, mapped to a code only where a request enters.

A core or a seam raises the subclass that says *why* it refuses; the HTTP API (agent/api.py)
maps it to a status code and the CNI handler (agent/cni/) to a CNI error code, each in one
table of its own. Nothing below that boundary knows either numbering.

Bugs are not refusals: anything that is not a ``Refused`` is an internal error at the boundary
(HTTP 500, CNI 100) with a logged traceback.
"""

from __future__ import annotations


class Refused(Exception):
    """A request the agent declines; ``message`` says why, ``details`` may say what to do."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class Invalid(Refused):
    """The request itself is malformed (a container id or interface name that cannot be a key)."""


class NotFound(Refused):
    """The request names something the agent does not know (a peer no one has heard of)."""


class Conflict(Refused):
    """The request contradicts the node's state (rmpeer of a live peer, rmpeer without gossip
    IPAM)."""


class NoAddress(Refused):
    """No free address: the node's block is full, or the whole range is allocated."""


class TryLater(Refused):
    """Not now: the node is not ready or has no address space yet."""


class TimedOut(TryLater):
    """The node could not obtain address space within ``ipam_timeout``."""


class InterfaceExists(Refused):
    """ADD: the pod already has an interface by the requested name (left untouched)."""


class KernelRefused(Refused):
    """The kernel refused a netlink operation (the message names it and the errno)."""


class StorageFailed(Refused):
    """The agent could not make a change durable on disk."""
