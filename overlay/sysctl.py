"""Kernel parameters under /proc/sys, in the caller's network namespace."""

from __future__ import annotations


def _path(key: str) -> str:
    """``net.ipv4.ip_forward`` or, for keys holding a device name, ``net/ipv4/conf/eth0.1/x``."""
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def read_sysctl(key: str) -> str:
    """The value of ``key``."""
    with open(_path(key)) as f:
        return f.read().strip()


def ensure_sysctl(key: str, value: str) -> bool:
    """Set ``key`` to ``value``; False when it already had the value."""
    if read_sysctl(key) == value:
        return False
    with open(_path(key), "w") as f:
        f.write(value)
    return True
