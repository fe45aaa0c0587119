"""The kernel's side of ``overlay.kernel.NatTables``: our nftables table over pyroute2's
nfnetlink socket (its rules' expressions are ``overlay.nft_rules``').

The table (family ip) holds the masquerade chain and, with a guard, the input chain, the set
of hosts its rule reads and two chains that exempt the VXLAN datagrams between those hosts from
connection tracking (they are never NATed; tracking each of them costs the fast path about a
tenth of its throughput), what ``nft`` would print as::

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
        chain notrack-in {
            type filter hook prerouting priority raw; policy accept;
            meta l4proto udp udp dport 6784 ip saddr @guard-hosts notrack
        }
        chain notrack-out {
            type filter hook output priority raw; policy accept;
            meta l4proto udp udp dport 6784 ip daddr @guard-hosts notrack
        }
    }

The table's use count (its chains and sets) tells whether there is more than the masquerade
chain to read: 1 without a guard, 5 with one; anything else is not of our shape.

pyroute2's sockets belong to the thread that opens them and to that thread's namespace, so each
call opens a socket of its own (about a millisecond), inside the named namespace on a
short-lived thread or in the caller's namespace, and closes it before returning.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from typing import Any, TypeVar

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELTABLE,
    NFT_MSG_GETCHAIN,
    NFT_MSG_GETRULE,
    NFT_MSG_GETSETELEM,
    NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
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

from overlay.netdev import Masquerade, NatTable, NetlinkFailure, UdpGuard
from overlay.netns import run_in_netns
from overlay.nft_rules import (
    DADDR,
    GUARD_SET,
    SADDR,
    guard_expressions,
    masquerade_expressions,
    notrack_expressions,
    read_guard,
    read_masquerade,
    read_notrack,
)

T = TypeVar("T")
NFPROTO_IPV4 = 2
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
CHAIN, GUARD_CHAIN = "postrouting", "input"
NOTRACK_CHAINS = {"notrack-in": SADDR, "notrack-out": DADDR}  # chain: the address it matches
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 0, 1, 3, 4
NF_IP_PRI_RAW = -300  # "raw"
NF_IP_PRI_FILTER, NF_IP_PRI_NAT_SRC = 0, 100  # "filter", "srcnat"
NF_ACCEPT = 1
TYPE_IPADDR, ADDRESS_LEN = 7, 4  # nft's ipv4_addr
SET_ID = 1  # names the set within the transaction that makes it
ELEMENTS_PER_MESSAGE = 256
USE_PLAIN, USE_GUARDED = 1, 5  # the table's chains and sets: ours alone, or with the guard's
Message = Any  # a pyroute2 netlink message


class Nftables:
    """Our table's requests in one namespace (by name, or None: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def table(self, name: str) -> NatTable | None:
        """The table as the kernel reports it (see ``overlay.kernel.NatTables``)."""
        return self._run(f"get nat table {name}", lambda nft: _observe(nft, name))

    def replace(
        self, name: str, rules: Sequence[Masquerade], guard: UdpGuard | None = None
    ) -> None:
        """One transaction: the table created if missing, emptied, our chains and rules."""
        batch = [
            _message(nft_table_msg, NFT_MSG_NEWTABLE, NLM_F_CREATE, NFTA_TABLE_NAME=name),
            _message(nft_table_msg, NFT_MSG_DELTABLE, 0, NFTA_TABLE_NAME=name),
            _message(nft_table_msg, NFT_MSG_NEWTABLE, NLM_F_CREATE, NFTA_TABLE_NAME=name),
            _message(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, **_chain(name)),
            *(_rule(name, CHAIN, masquerade_expressions(rule)) for rule in rules),
        ]
        if guard is not None:
            batch += _guard(name, guard)
        self._run(f"replace nat table {name}", lambda nft: _transaction(nft, batch))

    def remove(self, name: str) -> None:
        """Delete the table and all it holds; ENOENT when there is none."""
        delete = _message(nft_table_msg, NFT_MSG_DELTABLE, 0, NFTA_TABLE_NAME=name)
        self._run(f"delete nat table {name}", lambda nft: _transaction(nft, [delete]))

    def _run(self, what: str, fn: Callable[[NFTables], T]) -> T:
        try:
            if self.netns is None:
                return _with_socket(fn)
            return run_in_netns(self.netns, _with_socket, fn)
        except NetlinkError as exc:
            raise NetlinkFailure(what, exc.code) from None


def _with_socket(fn: Callable[[NFTables], T]) -> T:
    nft = NFTables(nfgen_family=NFPROTO_IPV4)
    try:
        return fn(nft)
    finally:
        nft.close()


def _message(cls: type, kind: int, flags: int, **attrs: Any) -> Message:
    msg = cls()
    msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | kind
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
    msg["nfgen_family"] = NFPROTO_IPV4
    msg["attrs"] = list(attrs.items())
    return msg


def _rule(table: str, chain: str, expressions: list[dict[str, Any]]) -> Message:
    return _message(nft_rule_msg, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                    NFTA_RULE_TABLE=table, NFTA_RULE_CHAIN=chain,
                    NFTA_RULE_EXPRESSIONS=expressions)  # fmt: skip


def _guard(table: str, guard: UdpGuard) -> list[Message]:
    """The set of hosts (its elements a few hundred a message), the input chain, its rule."""
    hosts, step = sorted(guard.hosts), ELEMENTS_PER_MESSAGE
    hold = _message(nft_set_msg, NFT_MSG_NEWSET, NLM_F_CREATE, NFTA_SET_TABLE=table,
                    NFTA_SET_NAME=GUARD_SET, NFTA_SET_KEY_TYPE=TYPE_IPADDR,
                    NFTA_SET_KEY_LEN=ADDRESS_LEN, NFTA_SET_ID=SET_ID)  # fmt: skip
    return [
        hold,
        *(_elements(table, hosts[i : i + step]) for i in range(0, len(hosts), step)),
        _message(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, **_guard_chain(table)),
        _rule(table, GUARD_CHAIN, guard_expressions(guard.port)),
        *(m for chain in NOTRACK_CHAINS for m in _notrack(table, chain, guard.port)),
    ]


def _notrack(table: str, chain: str, port: int) -> list[Message]:
    """A notrack chain and its rule."""
    made = _message(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, **_notrack_chain(table, chain))
    return [made, _rule(table, chain, notrack_expressions(port, NOTRACK_CHAINS[chain]))]


def _elements(table: str, hosts: list[IPv4Address]) -> Message:
    elements = [
        {"attrs": [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", host.packed)]})]}
        for host in hosts
    ]
    return _message(nft_set_elem_list_msg, NFT_MSG_NEWSETELEM, NLM_F_CREATE,
                    NFTA_SET_ELEM_LIST_TABLE=table, NFTA_SET_ELEM_LIST_SET=GUARD_SET,
                    NFTA_SET_ELEM_LIST_ELEMENTS=elements)  # fmt: skip


def _batch_mark(kind: int) -> Message:
    msg = nfgen_msg()
    msg["res_id"] = NFNL_SUBSYS_NFTABLES
    msg["header"]["type"] = kind
    msg["header"]["flags"] = NLM_F_REQUEST
    return msg


def _transaction(nft: NFTables, messages: list[Message]) -> None:
    """All of ``messages`` or none: the kernel applies a batch atomically; the first refusal
    raises (NetlinkError) and leaves everything as it was."""
    begin, end = _batch_mark(NFNL_MSG_BATCH_BEGIN), _batch_mark(NFNL_MSG_BATCH_END)
    nft.nlm_request_batch([begin, *messages, end])


def _get(nft: NFTables, kind: int, msg: Message, dump: bool = False) -> list[Message]:
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return list(nft.request_get(msg, kind, flags))


def _get_one(nft: NFTables, kind: int, msg: Message) -> Message | None:
    """The object ``msg`` names; None when there is none (ENOENT)."""
    try:
        (found,) = _get(nft, kind, msg)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise
        return None
    return found


def _observe(nft: NFTables, name: str) -> NatTable | None:
    table = _get_one(nft, NFT_MSG_GETTABLE, _query(nft_table_msg, NFTA_TABLE_NAME=name))
    if table is None:
        return None
    use = table.get_attr("NFTA_TABLE_USE")
    chain = _get_chain(nft, name, CHAIN)
    guard_chain = _get_chain(nft, name, GUARD_CHAIN) if use != USE_PLAIN else None
    query = _query(nft_rule_msg, NFTA_RULE_TABLE=name)
    found = _get(nft, NFT_MSG_GETRULE, query, dump=True)
    rules = tuple(read_masquerade(m) for m in found if _chain_of(m) == CHAIN)
    guarding = [m for m in found if _chain_of(m) == GUARD_CHAIN]
    guard = None
    if guard_chain is not None and _is_ours(guard_chain, _guard_chain(name)):
        guard = _read_guard(nft, name, guarding)
    if guard is not None and not _untracked(nft, name, found, guard.port):
        guard = None
    ours = not table.get_attr("NFTA_TABLE_FLAGS") and chain is not None
    ours = ours and _is_ours(chain, _chain(name))
    ours = ours and use == (USE_PLAIN if guard is None else USE_GUARDED)
    return NatTable(ours, rules, guard)


def _untracked(nft: NFTables, table: str, rules: list[Message], port: int) -> bool:
    """Whether both notrack chains are ours, each with exactly its one rule for ``port``."""
    for chain, offset in NOTRACK_CHAINS.items():
        found = _get_chain(nft, table, chain)
        if found is None or not _is_ours(found, _notrack_chain(table, chain)):
            return False
        held = [m for m in rules if _chain_of(m) == chain]
        if len(held) != 1 or read_notrack(held[0], offset) != port:
            return False
    return True


def _get_chain(nft: NFTables, table: str, chain: str) -> Message | None:
    query = _query(nft_chain_msg, NFTA_CHAIN_TABLE=table, NFTA_CHAIN_NAME=chain)
    return _get_one(nft, NFT_MSG_GETCHAIN, query)


def _chain_of(rule: Message) -> str | None:
    chain = rule.get_attr("NFTA_RULE_CHAIN")
    return chain if isinstance(chain, str) else None


def _read_guard(nft: NFTables, table: str, rules: list[Message]) -> UdpGuard | None:
    """The guard the input chain's rules and the set's elements make, None when they are not
    exactly one rule of our shape and a set of addresses alone."""
    port = read_guard(rules[0]) if len(rules) == 1 else None
    if port is None:
        return None
    query = _query(nft_set_elem_list_msg, NFTA_SET_ELEM_LIST_TABLE=table,
                   NFTA_SET_ELEM_LIST_SET=GUARD_SET)  # fmt: skip
    hosts: set[IPv4Address] = set()
    for msg in _get(nft, NFT_MSG_GETSETELEM, query, dump=True):
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
    key = element.get_attr("NFTA_SET_ELEM_KEY")
    value = key.get_attr("NFTA_DATA_VALUE") if key is not None else None
    if not isinstance(value, bytes) or len(value) != ADDRESS_LEN:
        return None
    return IPv4Address(value)


def _query(cls: type, **attrs: Any) -> Message:
    msg = cls()
    msg["nfgen_family"] = NFPROTO_IPV4
    msg["attrs"] = list(attrs.items())
    return msg


def _base_chain(table: str, name: str, hook: int, priority: int, kind: str) -> dict[str, Any]:
    hooked = [("NFTA_HOOK_HOOKNUM", hook), ("NFTA_HOOK_PRIORITY", priority)]
    return {"NFTA_CHAIN_TABLE": table, "NFTA_CHAIN_NAME": name,
            "NFTA_CHAIN_HOOK": {"attrs": hooked}, "NFTA_CHAIN_POLICY": NF_ACCEPT,
            "NFTA_CHAIN_TYPE": kind}  # fmt: skip


def _chain(table: str) -> dict[str, Any]:
    return _base_chain(table, CHAIN, NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC, "nat")


def _guard_chain(table: str) -> dict[str, Any]:
    return _base_chain(table, GUARD_CHAIN, NF_INET_LOCAL_IN, NF_IP_PRI_FILTER, "filter")


def _notrack_chain(table: str, chain: str) -> dict[str, Any]:
    hook = NF_INET_PRE_ROUTING if NOTRACK_CHAINS[chain] == SADDR else NF_INET_LOCAL_OUT
    return _base_chain(table, chain, hook, NF_IP_PRI_RAW, "filter")


def _is_ours(chain: Message, want: dict[str, Any]) -> bool:
    """Whether a chain read back is the base chain ``want`` describes."""
    hook = chain.get_attr("NFTA_CHAIN_HOOK")
    hooked = dict(want["NFTA_CHAIN_HOOK"]["attrs"])
    return bool(
        hook is not None
        and hook.get_attr("NFTA_HOOK_HOOKNUM") == hooked["NFTA_HOOK_HOOKNUM"]
        and hook.get_attr("NFTA_HOOK_PRIORITY") == hooked["NFTA_HOOK_PRIORITY"]
        and chain.get_attr("NFTA_CHAIN_TYPE") == want["NFTA_CHAIN_TYPE"]
        and chain.get_attr("NFTA_CHAIN_POLICY") == NF_ACCEPT
    )
