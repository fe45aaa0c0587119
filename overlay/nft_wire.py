"""Requests of nftables' netlink protocol over pyroute2's nfnetlink socket, shared by our two
tables (``overlay.nftables``, ``overlay.nft_count``): messages, atomic batches, gets and dumps,
base chains, the socket per call.

pyroute2's sockets belong to the thread that opens them and to that thread's namespace, so each
call opens a socket of its own (about a millisecond), inside the named namespace on a
short-lived thread or in the caller's namespace, and closes it before returning.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, TypeVar

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_GETCHAIN,
    NFT_MSG_NEWRULE,
    nft_chain_msg,
    nft_rule_msg,
)
from pyroute2.nftables.main import NFTables

from overlay.netdev import NetlinkFailure
from overlay.netns import run_in_netns

T = TypeVar("T")
Message = Any  # a pyroute2 netlink message
NFPROTO_IPV4 = 2
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 0, 1, 3, 4
NF_IP_PRI_RAW = -300  # "raw"
NF_IP_PRI_FILTER, NF_IP_PRI_NAT_SRC = 0, 100  # "filter", "srcnat"
NF_ACCEPT = 1
TYPE_IPADDR, ADDRESS_LEN = 7, 4  # nft's ipv4_addr
ELEMENTS_PER_MESSAGE = 256


def run(netns: str | None, what: str, fn: Callable[[NFTables], T]) -> T:
    """``fn`` with a socket of its own in ``netns`` (None: the caller's); a refusal raises
    NetlinkFailure naming ``what``."""
    try:
        if netns is None:
            return _with_socket(fn)
        return run_in_netns(netns, _with_socket, fn)
    except NetlinkError as exc:
        raise NetlinkFailure(what, exc.code) from None


def _with_socket(fn: Callable[[NFTables], T]) -> T:
    nft = NFTables(nfgen_family=NFPROTO_IPV4)
    try:
        return fn(nft)
    finally:
        nft.close()


def message(cls: type, kind: int, flags: int, **attrs: Any) -> Message:
    """A request of ``kind`` (an NFT_MSG_ number) with ``attrs``, acknowledged."""
    msg = cls()
    msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | kind
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
    msg["nfgen_family"] = NFPROTO_IPV4
    msg["attrs"] = list(attrs.items())
    return msg


def rule(table: str, chain: str, expressions: list[dict[str, Any]]) -> Message:
    """A request that appends a rule of ``expressions`` to ``chain``."""
    return message(nft_rule_msg, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                   NFTA_RULE_TABLE=table, NFTA_RULE_CHAIN=chain,
                   NFTA_RULE_EXPRESSIONS=expressions)  # fmt: skip


def _batch_mark(kind: int) -> Message:
    msg = nfgen_msg()
    msg["res_id"] = NFNL_SUBSYS_NFTABLES
    msg["header"]["type"] = kind
    msg["header"]["flags"] = NLM_F_REQUEST
    return msg


def transaction(nft: NFTables, messages: list[Message]) -> None:
    """All of ``messages`` or none: the kernel applies a batch atomically; the first refusal
    raises (NetlinkError) and leaves everything as it was."""
    begin, end = _batch_mark(NFNL_MSG_BATCH_BEGIN), _batch_mark(NFNL_MSG_BATCH_END)
    nft.nlm_request_batch([begin, *messages, end])


def get(nft: NFTables, kind: int, msg: Message, dump: bool = False) -> list[Message]:
    """The answers to a get (or a dump) request."""
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return list(nft.request_get(msg, kind, flags))


def get_one(nft: NFTables, kind: int, msg: Message) -> Message | None:
    """The object ``msg`` names; None when there is none (ENOENT)."""
    try:
        (found,) = get(nft, kind, msg)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise
        return None
    return found


def get_chain(nft: NFTables, table: str, chain: str) -> Message | None:
    """The chain of that name in ``table``, None when there is none."""
    found = query(nft_chain_msg, NFTA_CHAIN_TABLE=table, NFTA_CHAIN_NAME=chain)
    return get_one(nft, NFT_MSG_GETCHAIN, found)


def chain_of(found: Message) -> str | None:
    """The chain a rule read back belongs to."""
    chain = found.get_attr("NFTA_RULE_CHAIN")
    return chain if isinstance(chain, str) else None


def query(cls: type, **attrs: Any) -> Message:
    """A get or dump request's message."""
    msg = cls()
    msg["nfgen_family"] = NFPROTO_IPV4
    msg["attrs"] = list(attrs.items())
    return msg


def base_chain(table: str, name: str, hook: int, priority: int, kind: str) -> dict[str, Any]:
    """The attributes of a base chain (policy accept) at ``hook`` and ``priority``."""
    hooked = [("NFTA_HOOK_HOOKNUM", hook), ("NFTA_HOOK_PRIORITY", priority)]
    return {"NFTA_CHAIN_TABLE": table, "NFTA_CHAIN_NAME": name,
            "NFTA_CHAIN_HOOK": {"attrs": hooked}, "NFTA_CHAIN_POLICY": NF_ACCEPT,
            "NFTA_CHAIN_TYPE": kind}  # fmt: skip


def is_ours(chain: Message, want: dict[str, Any]) -> bool:
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


def data(value: bytes) -> dict[str, Any]:
    """An NFTA_DATA_VALUE attribute holding ``value`` (a compared value, a mask, a key)."""
    return {"attrs": [("NFTA_DATA_VALUE", value)]}


def data_of(msg: Message, key: str) -> bytes | None:
    """The value of attribute ``key`` of ``msg`` read back as NFTA_DATA_VALUE, else None."""
    attr = msg.get_attr(key)
    value = attr.get_attr("NFTA_DATA_VALUE") if attr is not None else None
    return value if isinstance(value, bytes) else None


def counter_of(data: Message | None) -> tuple[int, int] | None:
    """(packets, bytes) of a counter expression's data read back, else None."""
    if data is None:
        return None
    packets, octets = data.get_attr("NFTA_COUNTER_PACKETS"), data.get_attr("NFTA_COUNTER_BYTES")
    if not isinstance(packets, int) or not isinstance(octets, int):
        return None
    return packets, octets


def element_key(element: Message) -> IPv4Address | None:
    """The address a set element read back holds as its key, None for anything else."""
    value = data_of(element, "NFTA_SET_ELEM_KEY")
    return IPv4Address(value) if value is not None and len(value) == ADDRESS_LEN else None


def element_keys(hosts: list[IPv4Address]) -> list[dict[str, Any]]:
    """Set elements of these addresses, keys alone."""
    return [{"attrs": [("NFTA_SET_ELEM_KEY", data(host.packed))]} for host in hosts]
