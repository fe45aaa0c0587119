"""The TUN device: opened non-blocking with a virtio-net header, offloads probed.

With offloads on, reads return TCP (and, where the kernel accepts USO, UDP) super-packets of up
to ~64 KiB behind the 10-byte virtio-net header; writes hand the kernel the same, and it does
segmentation and checksums. Nothing here ever splits or checksums a packet.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Tun:
    fd: int
    name: str
    offload: str  # one of OFFLOAD_MODES' names

    def close(self) -> None:
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


def remove_tun(name: str) -> None:
    """Drop persistence so the device disappears once no agent holds it."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)
