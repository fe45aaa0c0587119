"""The kernel's side of per-peer traffic on the fast path: a table of ours whose two sets hold
the peers' hosts, each element with a counter that the rules' lookups advance, and whose rules
exempt those VXLAN datagrams from connection tracking (they are never NATed; tracking each of
them costs the fast path about a tenth of its throughput), what ``nft`` would print as::

    table ip weave-py-traffic {
        set tx {
            type ipv4_addr
            counter
            elements = { 192.168.1.8 counter packets 0 bytes 0, ... }
        }
        set rx { ... the same hosts ... }
        chain count-out {
            type filter hook output priority raw; policy accept;
            meta l4proto udp udp dport 6784 ip daddr @tx notrack
        }
        chain count-in {
            type filter hook prerouting priority raw; policy accept;
            meta l4proto udp udp dport 6784 ip saddr @rx notrack
        }
    }

One lookup per VXLAN datagram whatever the number of peers (the sets are hashes) both counts
and exempts it. A separate table from ``overlay.nftables``' so that replacing that one never
resets a counter.

``sync`` is level-triggered: the table made anew only when it is not exactly of this shape for
the port (an agent restart finds it and keeps every count), else just the elements added and
removed that differ (one transaction), so a peer's counter lives as long as its element.
"""

from __future__ import annotations

import errno
from collections.abc import Set
from ipaddress import IPv4Address

from pyroute2.netlink import NLM_F_CREATE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import nftsocket as nft_msg
from pyroute2.nftables.main import NFTables

from overlay import nft_wire as wire
from overlay.nft_rules import DADDR, SADDR, notrack_expressions, read_notrack
from overlay.nft_wire import Message
from overlay.traffic import Traffic

TABLE = "weave-py-traffic"
SETS = {  # set: its chain, the address it matches, the hook
    "tx": ("count-out", DADDR, wire.NF_INET_LOCAL_OUT),
    "rx": ("count-in", SADDR, wire.NF_INET_PRE_ROUTING),
}
USE = 2 * len(SETS)  # the table's chains and sets
COUNTER = {"attrs": [("NFTA_EXPR_NAME", "counter")]}
Counts = dict[str, dict[IPv4Address, tuple[int, int]]]  # set: host -> (packets, bytes)


class TrafficCounters:
    """Our traffic table in one namespace (by name, or None: the caller's own)."""

    def __init__(self, netns: str | None = None, table: str = TABLE) -> None:
        self.netns = netns
        self.table = table

    def sync(self, port: int | None, hosts: Set[IPv4Address]) -> bool:
        """Count the VXLAN datagrams on ``port`` to and from ``hosts`` (None: no table at
        all); whether anything had to change."""
        return wire.run(self.netns, f"sync traffic table {self.table}", lambda nft: _sync(
            nft, self.table, port, frozenset(hosts)))  # fmt: skip

    def read(self) -> dict[IPv4Address, Traffic]:
        """Each counted host's datagrams and their bytes (outer IPv4 packets) so far; empty
        when there is no table."""
        counts = wire.run(self.netns, f"read traffic table {self.table}", lambda nft: _counts(
            nft, self.table))  # fmt: skip
        tx, rx = counts.get("tx", {}), counts.get("rx", {})
        return {
            host: Traffic(*tx.get(host, (0, 0)), *rx.get(host, (0, 0)))
            for host in tx.keys() | rx.keys()
        }


def _sync(nft: NFTables, table: str, port: int | None, hosts: frozenset[IPv4Address]) -> bool:
    found = _table(nft, table)
    if port is None:
        if found is not None:
            wire.transaction(nft, [_table_change(nft_msg.NFT_MSG_DELTABLE, table)])
        return found is not None
    if found is None or not _shaped(nft, table, found, port):
        wire.transaction(nft, _made(table, port, sorted(hosts)))
        return True
    have = _counts(nft, table)
    batch: list[Message] = []
    for name in SETS:
        held = set(have.get(name, {}))
        batch += _elements(table, name, nft_msg.NFT_MSG_NEWSETELEM, sorted(hosts - held))
        batch += _elements(table, name, nft_msg.NFT_MSG_DELSETELEM, sorted(held - hosts))
    if batch:
        wire.transaction(nft, batch)
    return bool(batch)


def _table(nft: NFTables, table: str) -> Message | None:
    request = wire.query(nft_msg.nft_table_msg, NFTA_TABLE_NAME=table)
    return wire.get_one(nft, nft_msg.NFT_MSG_GETTABLE, request)


def _table_change(kind: int, table: str) -> Message:
    flags = NLM_F_CREATE if kind == nft_msg.NFT_MSG_NEWTABLE else 0
    return wire.message(nft_msg.nft_table_msg, kind, flags, NFTA_TABLE_NAME=table)


def _made(table: str, port: int, hosts: list[IPv4Address]) -> list[Message]:
    """The table made anew (emptied if it was there), sets with their elements, chains and
    rules."""
    batch = [
        _table_change(nft_msg.NFT_MSG_NEWTABLE, table),
        _table_change(nft_msg.NFT_MSG_DELTABLE, table),
        _table_change(nft_msg.NFT_MSG_NEWTABLE, table),
    ]
    for set_id, (name, (chain, offset, _)) in enumerate(SETS.items(), 1):
        batch.append(wire.message(
            nft_msg.nft_set_msg, nft_msg.NFT_MSG_NEWSET, NLM_F_CREATE, NFTA_SET_TABLE=table,
            NFTA_SET_NAME=name, NFTA_SET_KEY_TYPE=wire.TYPE_IPADDR,
            NFTA_SET_KEY_LEN=wire.ADDRESS_LEN, NFTA_SET_ID=set_id, NFTA_SET_EXPR=COUNTER,
        ))  # fmt: skip
        batch += _elements(table, name, nft_msg.NFT_MSG_NEWSETELEM, hosts)
        made = _chain(table, name)
        kind = nft_msg.NFT_MSG_NEWCHAIN
        batch.append(wire.message(nft_msg.nft_chain_msg, kind, NLM_F_CREATE, **made))
        batch.append(wire.rule(table, chain, notrack_expressions(port, offset, name)))
    return batch


def _elements(table: str, name: str, kind: int, hosts: list[IPv4Address]) -> list[Message]:
    step = wire.ELEMENTS_PER_MESSAGE
    chunks = (hosts[i : i + step] for i in range(0, len(hosts), step))
    return [_element_list(table, name, kind, chunk) for chunk in chunks]


def _element_list(table: str, name: str, kind: int, hosts: list[IPv4Address]) -> Message:
    flags = NLM_F_CREATE if kind == nft_msg.NFT_MSG_NEWSETELEM else 0
    return wire.message(nft_msg.nft_set_elem_list_msg, kind, flags,
                        NFTA_SET_ELEM_LIST_TABLE=table, NFTA_SET_ELEM_LIST_SET=name,
                        NFTA_SET_ELEM_LIST_ELEMENTS=wire.element_keys(hosts))  # fmt: skip


def _chain(table: str, name: str) -> dict[str, object]:
    chain, _, hook = SETS[name]
    return wire.base_chain(table, chain, hook, wire.NF_IP_PRI_RAW, "filter")


def _shaped(nft: NFTables, table: str, found: Message, port: int) -> bool:
    """Whether the table holds exactly our sets (counting), chains and one rule each."""
    if found.get_attr("NFTA_TABLE_FLAGS") or found.get_attr("NFTA_TABLE_USE") != USE:
        return False
    request = wire.query(nft_msg.nft_rule_msg, NFTA_RULE_TABLE=table)
    rules = wire.get(nft, nft_msg.NFT_MSG_GETRULE, request, dump=True)
    for name, (chain, offset, _) in SETS.items():
        held = wire.get_chain(nft, table, chain)
        if held is None or not wire.is_ours(held, _chain(table, name)):
            return False
        mine = [r for r in rules if wire.chain_of(r) == chain]
        if len(mine) != 1 or read_notrack(mine[0], offset, name) != port:
            return False
        request = wire.query(nft_msg.nft_set_msg, NFTA_SET_TABLE=table, NFTA_SET_NAME=name)
        held_set = wire.get_one(nft, nft_msg.NFT_MSG_GETSET, request)
        if held_set is None or not _counting(held_set):
            return False
    return len(rules) == len(SETS)


def _counting(found: Message) -> bool:
    expr = found.get_attr("NFTA_SET_EXPR")
    return bool(
        found.get_attr("NFTA_SET_KEY_TYPE") == wire.TYPE_IPADDR
        and found.get_attr("NFTA_SET_KEY_LEN") == wire.ADDRESS_LEN
        and not found.get_attr("NFTA_SET_FLAGS")
        and expr is not None
        and expr.get_attr("NFTA_EXPR_NAME") == "counter"
    )


def _counts(nft: NFTables, table: str) -> Counts:
    """Each set's elements with their counters (an element without one counts as zero)."""
    if _table(nft, table) is None:
        return {}
    out: Counts = {}
    for name in SETS:
        request = wire.query(nft_msg.nft_set_elem_list_msg, NFTA_SET_ELEM_LIST_TABLE=table,
                             NFTA_SET_ELEM_LIST_SET=name)  # fmt: skip
        held = out[name] = {}
        try:
            found = wire.get(nft, nft_msg.NFT_MSG_GETSETELEM, request, dump=True)
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise
            continue  # the set is not there: no counts
        for msg in found:
            for element in msg.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or ():
                host = wire.element_key(element)
                if host is not None:
                    held[host] = _counter(element)
    return out


def _counter(element: Message) -> tuple[int, int]:
    expr = element.get_attr("NFTA_SET_ELEM_EXPR")
    if expr is None or expr.get_attr("NFTA_EXPR_NAME") != "counter":
        return (0, 0)
    return wire.counter_of(expr.get_attr("NFTA_EXPR_DATA")) or (0, 0)
