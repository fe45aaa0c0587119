"""A node's kernel fast-path endpoint (VTEP): its address, its MAC, and the bytes that publish
them in the node's gossip record (field ``fastdp``).

A node's VTEP address is its first gateway (the first host address of its first block, on the
bridge); its VTEP MAC is derived from its 48-bit peer name, so every node computes the same MAC
for a peer without asking. Every node has one VXLAN device (VNI ``FASTDP_VNI``, UDP destination
port ``FASTDP_PORT``, learning off); to reach a remote node's pods the kernel routes them via
the node's VTEP (onlink), resolves the VTEP to its MAC (a permanent neighbour entry) and the MAC
to the node's underlay address (a permanent FDB entry).

Layout of the published value (11 bytes)::

    0   u8   format        FORMAT (1); anything else reads as no fast path
    1   u32  VTEP address  IPv4, a unicast host address
    5   6B   VTEP MAC      unicast, not zero

An empty value says the node runs without the fast path, or has no space yet. Every malformed
value parses as None: the peer stays on the sleeve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from gossip.identity import peer_id

FASTDP_VNI = 6784  # the VXLAN network identifier of every node's device
FASTDP_PORT = 6784  # the UDP destination port of the kernel's VXLAN packets

FORMAT = 1
FORMAT_OFFSET = 0
ADDRESS_OFFSET = 1
MAC_OFFSET = 5
SIZE = 11

MAC_PATTERN = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
NOT_UNICAST = tuple(
    IPv4Network(net)
    for net in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "169.254.0.0/16")
)  # unspecified, loopback, multicast, reserved and limited broadcast, link-local


@dataclass(frozen=True)
class Vtep:
    """A remote node's fast-path endpoint: ``address`` and ``mac`` as its record publishes
    them, ``host`` its underlay address (where the kernel sends its VXLAN packets)."""

    address: IPv4Address
    mac: str  # "aa:bb:cc:dd:ee:ff", lowercase
    host: IPv4Address


def vtep_mac(peer_name: str) -> str:
    """The VTEP MAC of the peer ``peer_name`` ("aa:bb:cc:dd:ee:ff"): its octets with the first
    made locally administered and unicast. ValueError for a name that is not six hex octets."""
    octets = peer_id(peer_name).to_bytes(6, "big")
    first = (octets[0] & 0xFC) | 0x02
    return _mac_text(bytes([first]) + octets[1:])


def encode_vtep(address: IPv4Address, mac: str) -> bytes:
    """The published value of a VTEP; ValueError when ``parse_vtep`` would not read it back
    (a caller's mistake: a MAC that is not six lowercase hex octets, or not unicast)."""
    if not MAC_PATTERN.fullmatch(mac):
        raise ValueError(f"vtep mac {mac!r} is not six lowercase hex octets")
    data = bytes([FORMAT]) + address.packed + bytes.fromhex(mac.replace(":", ""))
    if parse_vtep(data) is None:
        raise ValueError(f"vtep {address} {mac} is not a unicast address and MAC")
    return data


def parse_vtep(data: bytes) -> tuple[IPv4Address, str] | None:
    """The VTEP address and MAC in a published value; None when it is empty or malformed
    (wrong length or format, an address that is not a unicast host, a multicast or zero MAC)."""
    if len(data) != SIZE or data[FORMAT_OFFSET] != FORMAT:
        return None
    address = IPv4Address(data[ADDRESS_OFFSET:MAC_OFFSET])
    mac = data[MAC_OFFSET:SIZE]
    if any(address in net for net in NOT_UNICAST) or mac[0] & 0x01 or not any(mac):
        return None
    return address, _mac_text(mac)


def _mac_text(octets: bytes) -> str:
    return ":".join(f"{b:02x}" for b in octets)
