"""The guard set's NFT_MSG_NEWSET as encoded: its key's field description is the kernel's
nesting (one NFTA_LIST_ELEM per field), whichever pyroute2 message class was compiled first."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

from pyroute2.netlink.nfnetlink.nftsocket import nft_set_msg

from overlay.netdev import UdpGuard
from overlay.nftables import _guard


def _fields(data: bytes) -> list[int]:
    """The field lengths in the NFTA_SET_DESC_CONCAT found in an encoded message."""
    at = data.index(struct.pack("=HH", 4 + 3 * 12, 2 | 0x8000)) + 4
    return [struct.unpack_from("!I", data, at + 12 * k + 8)[0] for k in range(3)]


def test_the_description_survives_the_parent_class_compiled_first() -> None:
    plain = nft_set_msg()  # what the traffic table sends: compiles pyroute2's own table
    plain["attrs"] = [("NFTA_SET_NAME", "tx"), ("NFTA_SET_KEY_LEN", 4)]
    plain.encode()
    host = IPv4Address("192.168.1.8")
    made = _guard("weave-py", UdpGuard.of(6784, [(host, IPv4Network("10.32.0.0/19"))]))[0]
    made.encode()
    assert _fields(bytes(made.data)) == [4, 2, 4]
