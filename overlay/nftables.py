"""The kernel's side of ``overlay.kernel.NatTables``: our nftables table over pyroute2's
nfnetlink socket, with the rule expressions built and read here.

The table (family ip) holds one base chain and its rules, what ``nft`` would print as::

    table ip weave-py {
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade
        }
    }

Each match is three expressions: load four bytes of the IPv4 header (source at offset 12,
destination at 16) into register 1, AND them with the prefix's netmask, compare with the
network address. Masks and addresses are packed here in network order (pyroute2's own
``ipv4addr`` helper packs non-byte-aligned masks wrongly), and a rule read back is recognised
only when every expression is exactly one we make; anything else reads as None.

pyroute2's sockets belong to the thread that opens them and to that thread's namespace, so each
call opens a socket of its own (about a millisecond), inside the named namespace on a
short-lived thread or in the caller's namespace, and closes it before returning.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELTABLE,
    NFT_MSG_GETCHAIN,
    NFT_MSG_GETRULE,
    NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_rule_msg,
    nft_table_msg,
)
from pyroute2.nftables.main import NFTables

from overlay.netdev import Masquerade, NatTable, NetlinkFailure
from overlay.netns import run_in_netns

T = TypeVar("T")
NFPROTO_IPV4 = 2
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
CHAIN = "postrouting"
NF_INET_POST_ROUTING = 4
NF_IP_PRI_NAT_SRC = 100  # "srcnat"
NF_ACCEPT = 1
NETWORK = 1  # NFT_PAYLOAD_NETWORK_HEADER
NFT_REG_1 = 1
NFT_CMP_EQ, NFT_CMP_NEQ = 0, 1
SADDR, DADDR = 12, 16  # offsets in the IPv4 header
# the same values as pyroute2 names them in what it reads back
REG, NETWORK_HEADER, BOOL = "NFT_REG_1", "NFT_PAYLOAD_NETWORK_HEADER", "NFT_BITWISE_BOOL"
Message = Any  # a pyroute2 netlink message


class Nftables:
    """Our NAT table's requests in one namespace (by name, or None: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def table(self, name: str) -> NatTable | None:
        """The table as the kernel reports it (see ``overlay.kernel.NatTables``)."""
        return self._run(f"get nat table {name}", lambda nft: _observe(nft, name))

    def replace(self, name: str, rules: Sequence[Masquerade]) -> None:
        """One transaction: the table created if missing, emptied, our chain and ``rules``."""
        batch = [
            _message(nft_table_msg, NFT_MSG_NEWTABLE, NLM_F_CREATE, NFTA_TABLE_NAME=name),
            _message(nft_table_msg, NFT_MSG_DELTABLE, 0, NFTA_TABLE_NAME=name),
            _message(nft_table_msg, NFT_MSG_NEWTABLE, NLM_F_CREATE, NFTA_TABLE_NAME=name),
            _message(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, **_chain(name)),
        ]
        batch += [
            _message(
                nft_rule_msg,
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                NFTA_RULE_TABLE=name,
                NFTA_RULE_CHAIN=CHAIN,
                NFTA_RULE_EXPRESSIONS=masquerade_expressions(rule),
            )
            for rule in rules
        ]
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


def _observe(nft: NFTables, name: str) -> NatTable | None:
    try:
        (table,) = _get(nft, NFT_MSG_GETTABLE, _query(nft_table_msg, NFTA_TABLE_NAME=name))
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return None
        raise
    try:
        query = _query(nft_chain_msg, NFTA_CHAIN_TABLE=name, NFTA_CHAIN_NAME=CHAIN)
        (chain,) = _get(nft, NFT_MSG_GETCHAIN, query)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise
        chain = None
    query = _query(nft_rule_msg, NFTA_RULE_TABLE=name)
    rules = tuple(read_rule(m) for m in _get(nft, NFT_MSG_GETRULE, query, dump=True))
    alone = table.get_attr("NFTA_TABLE_USE") == 1 and not table.get_attr("NFTA_TABLE_FLAGS")
    return NatTable(alone and chain is not None and _is_ours(chain), rules)


def _query(cls: type, **attrs: Any) -> Message:
    msg = cls()
    msg["nfgen_family"] = NFPROTO_IPV4
    msg["attrs"] = list(attrs.items())
    return msg


def _chain(table: str) -> dict[str, Any]:
    hook = [("NFTA_HOOK_HOOKNUM", NF_INET_POST_ROUTING), ("NFTA_HOOK_PRIORITY", NF_IP_PRI_NAT_SRC)]
    return {"NFTA_CHAIN_TABLE": table, "NFTA_CHAIN_NAME": CHAIN,
            "NFTA_CHAIN_HOOK": {"attrs": hook}, "NFTA_CHAIN_POLICY": NF_ACCEPT,
            "NFTA_CHAIN_TYPE": "nat"}  # fmt: skip


def _is_ours(chain: Message) -> bool:
    hook = chain.get_attr("NFTA_CHAIN_HOOK")
    return bool(
        hook is not None
        and hook.get_attr("NFTA_HOOK_HOOKNUM") == NF_INET_POST_ROUTING
        and hook.get_attr("NFTA_HOOK_PRIORITY") == NF_IP_PRI_NAT_SRC
        and chain.get_attr("NFTA_CHAIN_TYPE") == "nat"
        and chain.get_attr("NFTA_CHAIN_POLICY") == NF_ACCEPT
    )


# -- expressions -------------------------------------------------------------------------------


def _expression(name: str, **data: Any) -> dict[str, Any]:
    prefix = f"NFTA_{name.upper()}_"
    attrs = [(prefix + key.upper(), value) for key, value in data.items()]
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", {"attrs": attrs})]}


def _value(data: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", data)]}


def _match(offset: int, network: IPv4Network, op: int) -> list[dict[str, Any]]:
    """The IPv4 address at ``offset`` is (EQ) or is not (NEQ) inside ``network``."""
    mask = _value(network.netmask.packed)
    return [
        _expression("payload", dreg=NFT_REG_1, base=NETWORK, offset=offset, len=4),
        _expression(
            "bitwise", sreg=NFT_REG_1, dreg=NFT_REG_1, len=4, mask=mask, xor=_value(bytes(4))
        ),
        _expression("cmp", sreg=NFT_REG_1, op=op, data=_value(network.network_address.packed)),
    ]


def masquerade_expressions(rule: Masquerade) -> list[dict[str, Any]]:
    """``ip saddr SOURCE ip daddr != EXEMPT masquerade`` as nftables expressions."""
    return [
        *_match(SADDR, rule.source, NFT_CMP_EQ),
        *_match(DADDR, rule.exempt, NFT_CMP_NEQ),
        _expression("masq"),
    ]


def read_rule(msg: Message) -> Masquerade | None:
    """A rule read back: the Masquerade it is, or None when it is anything else."""
    found = [
        (e.get_attr("NFTA_EXPR_NAME"), e.get_attr("NFTA_EXPR_DATA"))
        for e in msg.get_attr("NFTA_RULE_EXPRESSIONS") or ()
    ]
    if len(found) != 7 or found[6][0] != "masq" or _attrs(found[6][1]):
        return None
    source = _read_match(found[0:3], SADDR, "NFT_CMP_EQ")
    exempt = _read_match(found[3:6], DADDR, "NFT_CMP_NEQ")
    return Masquerade(source, exempt) if source and exempt else None


def _attrs(data: Message | None) -> list[Any]:
    return list(data["attrs"]) if data is not None else []


def _read_match(found: list[tuple[str, Message]], offset: int, op: str) -> IPv4Network | None:
    """The network of a match ``_match`` makes, or None for any other three expressions."""
    if tuple(name for name, _ in found) != ("payload", "bitwise", "cmp"):
        return None
    (_, payload), (_, bitwise), (_, cmp) = found
    shape = (
        payload.get_attr("NFTA_PAYLOAD_DREG"),
        payload.get_attr("NFTA_PAYLOAD_BASE"),
        payload.get_attr("NFTA_PAYLOAD_OFFSET"),
        payload.get_attr("NFTA_PAYLOAD_LEN"),
        bitwise.get_attr("NFTA_BITWISE_SREG"),
        bitwise.get_attr("NFTA_BITWISE_DREG"),
        bitwise.get_attr("NFTA_BITWISE_LEN"),
        bitwise.get_attr("NFTA_BITWISE_OP") or BOOL,
        _data(bitwise, "NFTA_BITWISE_XOR"),
        cmp.get_attr("NFTA_CMP_SREG"),
        cmp.get_attr("NFTA_CMP_OP"),
    )
    if shape != (REG, NETWORK_HEADER, offset, 4, REG, REG, 4, BOOL, bytes(4), REG, op):
        return None
    mask, address = _data(bitwise, "NFTA_BITWISE_MASK"), _data(cmp, "NFTA_CMP_DATA")
    try:
        return IPv4Network(f"{IPv4Address(address or b'')}/{IPv4Address(mask or b'')}")
    except ValueError:  # a mask that is not a prefix, host bits set, a short value
        return None


def _data(expression: Message, key: str) -> bytes | None:
    value = expression.get_attr(key)
    data = value.get_attr("NFTA_DATA_VALUE") if value is not None else None
    return data if isinstance(data, bytes) else None
