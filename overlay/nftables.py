"""The kernel's side of ``overlay.kernel.NatTables``: our nftables table over pyroute2's
nfnetlink socket (its rules' expressions are ``overlay.nft_rules``').

The table (family ip) holds the masquerade chain and, with a guard, the input chain and the set
its rule reads (each peer's host with the inner sources its VXLAN frames may carry: the peer's
space and its host address), what ``nft`` would print as::

    table ip weave-py {
        set guard-sources {
            type ipv4_addr . ether_type . ipv4_addr
            flags interval
            elements = { 192.168.1.8 . ip . 10.32.0.0/19, 192.168.1.8 . ip . 192.168.1.8, ... }
        }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade
        }
        chain input {
            type filter hook input priority filter; policy accept;
            udp dport 6784 ip saddr . @th,224,16 . @th,336,32 != @guard-sources counter drop
        }
    }

The table's use count (its chains and sets) tells whether there is more than the masquerade
chain to read: 1 without a guard, 3 with one; anything else is not of our shape. (The VXLAN
datagrams' exemption from connection tracking is the traffic table's, ``overlay.nft_count``,
whose one lookup per datagram both counts and exempts it.)
Requests go through ``overlay.nft_wire``. The set's description of its key's fields is written
as raw attributes: pyroute2's type for it numbers the fields where the kernel wants each one an
NFTA_LIST_ELEM (and decoding it does not return, so sets are never read back whole here).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, summarize_address_range
from typing import Any

from pyroute2.netlink import NLM_F_CREATE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELTABLE,
    NFT_MSG_GETRULE,
    NFT_MSG_GETSETELEM,
    NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_set_msg,
    nft_table_msg,
)
from pyroute2.nftables.main import NFTables

from overlay.netdev import Masquerade, NatTable, UdpGuard
from overlay.nft_rules import (
    GUARD_FIELDS,
    GUARD_SET,
    guard_drops,
    guard_expressions,
    guard_key,
    masquerade_expressions,
    read_guard,
    read_masquerade,
)
from overlay.nft_wire import (
    ELEMENTS_PER_MESSAGE,
    NF_INET_LOCAL_IN,
    NF_INET_POST_ROUTING,
    NF_IP_PRI_FILTER,
    NF_IP_PRI_NAT_SRC,
    Message,
    base_chain,
    chain_of,
    data,
    data_of,
    get,
    get_chain,
    get_one,
    is_ours,
    message,
    query,
    rule,
    run,
    transaction,
)

CHAIN, GUARD_CHAIN = "postrouting", "input"
SET_ID = 1  # names the set within the transaction that makes it
USE_PLAIN, USE_GUARDED = 1, 3  # the table's chains and sets: ours alone, or with the guard's
NFTA_SET_DESC_CONCAT, NFTA_LIST_ELEM, NFTA_SET_FIELD_LEN, NLA_F_NESTED = 2, 1, 1, 0x8000
GUARD_KEY_LEN = 12  # the fields, each padded to four bytes
GUARD_SET_FLAGS = frozenset({"NFT_SET_INTERVAL", "NFT_SET_CONCAT"})


class _guard_set_msg(nft_set_msg):
    """NFT_MSG_NEWSET with its description given as raw bytes (see the module's note). Its
    attribute table is compiled apart from its parent's: pyroute2 keeps the compiled table in
    a class attribute, which a subclass would otherwise inherit once the parent's is made."""

    _nlmsg_base__compiled_nla = False
    nla_map = tuple(
        (name, "cdata") if name == "NFTA_SET_DESC" else (name, kind)
        for name, kind in nft_set_msg.nla_map
    )


def _concat_description(lengths: Sequence[int]) -> bytes:
    """NFTA_SET_DESC's payload: NFTA_SET_DESC_CONCAT holding one NFTA_LIST_ELEM per field,
    each with its NFTA_SET_FIELD_LEN."""
    fields = b"".join(
        struct.pack("=HH", 12, NFTA_LIST_ELEM) + struct.pack("=HH", 8, NFTA_SET_FIELD_LEN)
        + struct.pack("!I", length)
        for length in lengths
    )  # fmt: skip
    return struct.pack("=HH", 4 + len(fields), NFTA_SET_DESC_CONCAT | NLA_F_NESTED) + fields


class Nftables:
    """Our table's requests in one namespace (by name, or None: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def table(self, name: str) -> NatTable | None:
        """The table as the kernel reports it (see ``overlay.kernel.NatTables``)."""
        return run(self.netns, f"get nat table {name}", lambda nft: _observe(nft, name))

    def replace(
        self, name: str, rules: Sequence[Masquerade], guard: UdpGuard | None = None
    ) -> None:
        """One transaction: the table created if missing, emptied, our chains and rules."""
        batch = [
            message(nft_table_msg, NFT_MSG_NEWTABLE, NLM_F_CREATE, NFTA_TABLE_NAME=name),
            message(nft_table_msg, NFT_MSG_DELTABLE, 0, NFTA_TABLE_NAME=name),
            message(nft_table_msg, NFT_MSG_NEWTABLE, NLM_F_CREATE, NFTA_TABLE_NAME=name),
            message(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, **_chain(name)),
            *(rule(name, CHAIN, masquerade_expressions(r)) for r in rules),
        ]
        if guard is not None:
            batch += _guard(name, guard)
        run(self.netns, f"replace nat table {name}", lambda nft: transaction(nft, batch))

    def guard_drops(self, name: str) -> int | None:
        """What the guard of table ``name`` dropped since the table was made (its rule's
        counter); None when it has no guard of ours."""
        return run(self.netns, f"get guard of {name}", lambda nft: _guard_drops(nft, name))

    def remove(self, name: str) -> None:
        """Delete the table and all it holds; ENOENT when there is none."""
        delete = message(nft_table_msg, NFT_MSG_DELTABLE, 0, NFTA_TABLE_NAME=name)
        run(self.netns, f"delete nat table {name}", lambda nft: transaction(nft, [delete]))


def _guard(table: str, guard: UdpGuard) -> list[Message]:
    """The set of sources (its elements a few hundred a message), the input chain, its rule."""
    spaces, step = sorted(guard.spaces), ELEMENTS_PER_MESSAGE
    hold = message(_guard_set_msg, NFT_MSG_NEWSET, NLM_F_CREATE, NFTA_SET_TABLE=table,
                    NFTA_SET_NAME=GUARD_SET, NFTA_SET_KEY_TYPE=0, NFTA_SET_KEY_LEN=GUARD_KEY_LEN,
                    NFTA_SET_FLAGS=GUARD_SET_FLAGS, NFTA_SET_ID=SET_ID,
                    NFTA_SET_DESC=_concat_description(GUARD_FIELDS))  # fmt: skip
    return [
        hold,
        *(_elements(table, spaces[i : i + step]) for i in range(0, len(spaces), step)),
        message(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, **_guard_chain(table)),
        rule(table, GUARD_CHAIN, guard_expressions(guard.port)),
    ]


def _elements(table: str, spaces: list[tuple[IPv4Address, IPv4Network]]) -> Message:
    """Elements of the guard's set: a range per host and network."""
    elements = [
        {"attrs": [
            ("NFTA_SET_ELEM_KEY", data(guard_key(host, network.network_address))),
            ("NFTA_SET_ELEM_KEY_END", data(guard_key(host, network.broadcast_address))),
        ]}
        for host, network in spaces
    ]  # fmt: skip
    return message(nft_set_elem_list_msg, NFT_MSG_NEWSETELEM, NLM_F_CREATE,
                   NFTA_SET_ELEM_LIST_TABLE=table, NFTA_SET_ELEM_LIST_SET=GUARD_SET,
                   NFTA_SET_ELEM_LIST_ELEMENTS=elements)  # fmt: skip


def _observe(nft: NFTables, name: str) -> NatTable | None:
    table = get_one(nft, NFT_MSG_GETTABLE, query(nft_table_msg, NFTA_TABLE_NAME=name))
    if table is None:
        return None
    use = table.get_attr("NFTA_TABLE_USE")
    chain = get_chain(nft, name, CHAIN)
    guard_chain = get_chain(nft, name, GUARD_CHAIN) if use != USE_PLAIN else None
    request = query(nft_rule_msg, NFTA_RULE_TABLE=name)
    found = get(nft, NFT_MSG_GETRULE, request, dump=True)
    rules = tuple(read_masquerade(m) for m in found if chain_of(m) == CHAIN)
    guarding = [m for m in found if chain_of(m) == GUARD_CHAIN]
    guard = None
    if guard_chain is not None and is_ours(guard_chain, _guard_chain(name)):
        guard = _read_guard(nft, name, guarding)
    ours = not table.get_attr("NFTA_TABLE_FLAGS") and chain is not None
    ours = ours and is_ours(chain, _chain(name))
    ours = ours and use == (USE_PLAIN if guard is None else USE_GUARDED)
    return NatTable(ours, rules, guard)


def _guard_drops(nft: NFTables, table: str) -> int | None:
    request = query(nft_rule_msg, NFTA_RULE_TABLE=table, NFTA_RULE_CHAIN=GUARD_CHAIN)
    try:
        found = get(nft, NFT_MSG_GETRULE, request, dump=True)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise
        return None  # no table or no chain of that name
    counts = [guard_drops(m) for m in found if chain_of(m) == GUARD_CHAIN]
    return counts[0] if len(counts) == 1 else None


def _read_guard(nft: NFTables, table: str, rules: list[Message]) -> UdpGuard | None:
    """The guard the input chain's rules and the set's elements make, None when they are not
    exactly one rule of our shape and elements of our shape alone."""
    port = read_guard(rules[0]) if len(rules) == 1 else None
    if port is None:
        return None
    request = query(nft_set_elem_list_msg, NFTA_SET_ELEM_LIST_TABLE=table,
                   NFTA_SET_ELEM_LIST_SET=GUARD_SET)  # fmt: skip
    spaces: set[tuple[IPv4Address, IPv4Network]] = set()
    for msg in get(nft, NFT_MSG_GETSETELEM, request, dump=True):
        for element in msg.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or ():
            space = _space(element)
            if space is None:
                return None
            spaces.add(space)
    return UdpGuard(port, frozenset(spaces))


def _space(element: Message) -> tuple[IPv4Address, IPv4Network] | None:
    """The host and network an element of our set holds; None for one with anything else to
    it (other attributes or flags, another EtherType, a range that is not one network)."""
    if {name for name, *_ in element["attrs"]} != {"NFTA_SET_ELEM_KEY", "NFTA_SET_ELEM_KEY_END"}:
        return None
    start, end = (_key(element, name) for name in ("NFTA_SET_ELEM_KEY", "NFTA_SET_ELEM_KEY_END"))
    if start is None or end is None or start[0] != end[0]:
        return None
    if guard_key(start[0], start[1]) != start[2] or guard_key(end[0], end[1]) != end[2]:
        return None
    if start[1] > end[1]:
        return None
    networks = list(summarize_address_range(start[1], end[1]))
    return (start[0], networks[0]) if len(networks) == 1 else None


def _key(element: Message, name: str) -> tuple[IPv4Address, IPv4Address, bytes] | None:
    """(host, inner source, the whole key) of one of an element's keys, else None."""
    value = data_of(element, name)
    if value is None or len(value) != GUARD_KEY_LEN:
        return None
    return IPv4Address(value[:4]), IPv4Address(value[8:]), value


def _chain(table: str) -> dict[str, Any]:
    return base_chain(table, CHAIN, NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC, "nat")


def _guard_chain(table: str) -> dict[str, Any]:
    return base_chain(table, GUARD_CHAIN, NF_INET_LOCAL_IN, NF_IP_PRI_FILTER, "filter")
