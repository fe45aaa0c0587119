"""The kernel's side of ``overlay.kernel.NatTables``: our nftables table over pyroute2's
nfnetlink socket (its rules' expressions are ``overlay.nft_rules``').

The table (family ip) holds the masquerade chain and, with a guard, the input chain and the set
of hosts its rule reads, what ``nft`` would print as::

    table ip weave-py {
        set guard-hosts {
            type ipv4_addr
            elements = { 192.168.1.8, 192.168.1.9 }
        }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade
        }
        chain input {
            type filter hook input priority filter; policy accept;
            meta l4proto udp udp dport 6784 ip saddr != @guard-hosts drop
        }
    }

The table's use count (its chains and sets) tells whether there is more than the masquerade
chain to read: 1 without a guard, 3 with one; anything else is not of our shape. (The VXLAN
datagrams' exemption from connection tracking is the traffic table's, ``overlay.nft_count``,
whose one lookup per datagram both counts and exempts it.)
Requests go through ``overlay.nft_wire``.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from pyroute2.netlink import NLM_F_CREATE
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
    GUARD_SET,
    guard_expressions,
    masquerade_expressions,
    read_guard,
    read_masquerade,
)
from overlay.nft_wire import (
    ADDRESS_LEN,
    ELEMENTS_PER_MESSAGE,
    NF_INET_LOCAL_IN,
    NF_INET_POST_ROUTING,
    NF_IP_PRI_FILTER,
    NF_IP_PRI_NAT_SRC,
    TYPE_IPADDR,
    Message,
    base_chain,
    chain_of,
    element_key,
    element_keys,
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

    def remove(self, name: str) -> None:
        """Delete the table and all it holds; ENOENT when there is none."""
        delete = message(nft_table_msg, NFT_MSG_DELTABLE, 0, NFTA_TABLE_NAME=name)
        run(self.netns, f"delete nat table {name}", lambda nft: transaction(nft, [delete]))


def _guard(table: str, guard: UdpGuard) -> list[Message]:
    """The set of hosts (its elements a few hundred a message), the input chain, its rule."""
    hosts, step = sorted(guard.hosts), ELEMENTS_PER_MESSAGE
    hold = message(nft_set_msg, NFT_MSG_NEWSET, NLM_F_CREATE, NFTA_SET_TABLE=table,
                    NFTA_SET_NAME=GUARD_SET, NFTA_SET_KEY_TYPE=TYPE_IPADDR,
                    NFTA_SET_KEY_LEN=ADDRESS_LEN, NFTA_SET_ID=SET_ID)  # fmt: skip
    return [
        hold,
        *(_elements(table, hosts[i : i + step]) for i in range(0, len(hosts), step)),
        message(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, **_guard_chain(table)),
        rule(table, GUARD_CHAIN, guard_expressions(guard.port)),
    ]


def _elements(table: str, hosts: list[IPv4Address]) -> Message:
    return message(nft_set_elem_list_msg, NFT_MSG_NEWSETELEM, NLM_F_CREATE,
                   NFTA_SET_ELEM_LIST_TABLE=table, NFTA_SET_ELEM_LIST_SET=GUARD_SET,
                   NFTA_SET_ELEM_LIST_ELEMENTS=element_keys(hosts))  # fmt: skip


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


def _read_guard(nft: NFTables, table: str, rules: list[Message]) -> UdpGuard | None:
    """The guard the input chain's rules and the set's elements make, None when they are not
    exactly one rule of our shape and a set of addresses alone."""
    port = read_guard(rules[0]) if len(rules) == 1 else None
    if port is None:
        return None
    request = query(nft_set_elem_list_msg, NFTA_SET_ELEM_LIST_TABLE=table,
                   NFTA_SET_ELEM_LIST_SET=GUARD_SET)  # fmt: skip
    hosts: set[IPv4Address] = set()
    for msg in get(nft, NFT_MSG_GETSETELEM, request, dump=True):
        for element in msg.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or ():
            host = _host(element)
            if host is None:
                return None
            hosts.add(host)
    return UdpGuard(port, frozenset(hosts))


def _host(element: Message) -> IPv4Address | None:
    """The address an element of our set holds; None for one with anything else to it."""
    if {name for name, *_ in element["attrs"]} - {"NFTA_SET_ELEM_KEY", "NFTA_SET_ELEM_FLAGS"}:
        return None
    if element.get_attr("NFTA_SET_ELEM_FLAGS"):
        return None
    return element_key(element)


def _chain(table: str) -> dict[str, Any]:
    return base_chain(table, CHAIN, NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC, "nat")


def _guard_chain(table: str) -> dict[str, Any]:
    return base_chain(table, GUARD_CHAIN, NF_INET_LOCAL_IN, NF_IP_PRI_FILTER, "filter")
