"""Entering network namespaces: the calling thread by ``setns(2)``, or a function run on a
short-lived thread of its own, so the caller's thread never changes namespace."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from overlay.netdev import NetlinkFailure

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

T = TypeVar("T")


def enter_netns(target: str | int) -> None:
    """Move the calling thread into a namespace (a name under /run/netns, a path or an fd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if isinstance(target, int):
        fd, close = target, False
    else:
        path = target if "/" in target else os.path.join(NETNS_DIR, target)
        fd, close = os.open(path, os.O_RDONLY | os.O_CLOEXEC), True
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NetlinkFailure(f"enter netns {target}", code)
    finally:
        if close:
            os.close(fd)


def run_in_netns(target: str | int, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on a fresh thread inside namespace ``target``; return its result."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(target)
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{target}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value
