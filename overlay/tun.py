"""The TUN device: what the sleeve's driver needs of one (TunDevice), and the kernel's, opened
non-blocking with a virtio-net header and offloads probed (open_tun).

With offloads on, reads return TCP (and, where the kernel accepts USO, UDP) super-packets of up
to ~64 KiB behind the 10-byte virtio-net header; writes hand the kernel the same, and it does
segmentation and checksums. Nothing here ever splits or checksums a packet.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct
from collections.abc import Callable, Sequence
from typing import Protocol

from overlay.frame import Buffer

Buffers = Sequence[bytearray | memoryview]
Parts = Sequence[Buffer]

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

# Tried in order; the first the kernel accepts wins.
OFFLOAD_MODES: tuple[tuple[str, int], ...] = (
    ("tso+uso", TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6),
    ("tso", TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6),
    ("csum", TUN_F_CSUM),
    ("off", 0),
)


class TunDevice(Protocol):
    """What the sleeve's driver needs of a TUN device: one packet (virtio-net header + IP
    packet) per read or write, non-blocking (BlockingIOError when there is nothing to read),
    and a descriptor to wait on. Tun is the kernel's; overlay.fakes has an in-memory one."""

    def fileno(self) -> int:
        """The descriptor the event loop waits on for reads."""

    def readv(self, buffers: Buffers, /) -> int:
        """Read one packet into ``buffers`` (filled in order); its length."""

    def write(self, packet: Buffer, /) -> int:
        """Write one packet."""

    def writev(self, parts: Parts, /) -> int:
        """Write one packet gathered from ``parts``."""

    def close(self) -> None:
        """Release the device (a persistent one stays in the kernel)."""


class Tun:
    """An open TUN device (open_tun). ``readv``, ``write`` and ``writev`` are the os calls
    bound to its descriptor: the driver's hot path calls them with no Python frame between."""

    def __init__(self, fd: int, name: str, offload: str) -> None:
        self.fd = fd
        self.name = name
        self.offload = offload  # one of OFFLOAD_MODES' names
        self.readv: Callable[[Buffers], int] = functools.partial(os.readv, fd)
        self.write: Callable[[Buffer], int] = functools.partial(os.write, fd)
        self.writev: Callable[[Parts], int] = functools.partial(os.writev, fd)

    def fileno(self) -> int:
        """The device's descriptor."""
        return self.fd

    def close(self) -> None:
        """Close the descriptor (a persistent device stays)."""
        os.close(self.fd)


def open_tun(name: str, offload: bool = True, persist: bool = True) -> Tun:
    """Create or attach to TUN ``name`` in the caller's namespace.

    ``persist`` keeps the device (and the routes through it) when the agent exits, so a
    restarted agent attaches to the same device and traffic resumes without reconfiguration.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETPERSIST, 1 if persist else 0)
        mode = probe_offload(fd) if offload else _set_offload(fd, "off", 0)
    except BaseException:
        os.close(fd)
        raise
    return Tun(fd, name, mode)


def probe_offload(fd: int) -> str:
    """The first of OFFLOAD_MODES the kernel accepts on ``fd``, now set."""
    for mode, flags in OFFLOAD_MODES:
        try:
            return _set_offload(fd, mode, flags)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return "off"


def _set_offload(fd: int, mode: str, flags: int) -> str:
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    return mode
