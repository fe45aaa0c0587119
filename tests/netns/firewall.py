"""A firewall of a test's own inside a lab namespace: an nftables table (family ip, the test
names it, ``wp``-prefixed) whose input and output chains drop UDP to one port, built and removed
in one transaction each over pyroute2's nfnetlink socket (no ``nft`` binary on this machine)."""

from __future__ import annotations

import errno
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_rule_msg,
    nft_table_msg,
)
from pyroute2.nftables.main import NFTables

from overlay.netns import run_in_netns

NFPROTO_IPV4 = 2
NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT = 1, 3
NF_ACCEPT, NF_DROP = 1, 0
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11


class DropUdp:
    """Table ``name`` (family ip) in ``netns``: its input and output chains drop UDP to
    ``port``. Removed on leaving (also when it is already gone)."""

    def __init__(self, netns: str, name: str, port: int) -> None:
        self.netns, self.name, self.port = netns, name, port

    def __enter__(self) -> DropUdp:
        batch = [_nft(nft_table_msg, NFT_MSG_NEWTABLE, NFTA_TABLE_NAME=self.name)]
        for chain, hook in (("input", NF_INET_LOCAL_IN), ("output", NF_INET_LOCAL_OUT)):
            batch += [
                _nft(nft_chain_msg, NFT_MSG_NEWCHAIN, NFTA_CHAIN_TABLE=self.name,
                     NFTA_CHAIN_NAME=chain, NFTA_CHAIN_TYPE="filter", NFTA_CHAIN_POLICY=NF_ACCEPT,
                     NFTA_CHAIN_HOOK={"attrs": [("NFTA_HOOK_HOOKNUM", hook),
                                                ("NFTA_HOOK_PRIORITY", 0)]}),
                _nft(nft_rule_msg, NFT_MSG_NEWRULE, NLM_F_APPEND, NFTA_RULE_TABLE=self.name,
                     NFTA_RULE_CHAIN=chain, NFTA_RULE_EXPRESSIONS=_drop_udp_to(self.port)),
            ]  # fmt: skip
        run_in_netns(self.netns, _transaction, batch)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            delete = _nft(nft_table_msg, NFT_MSG_DELTABLE, NFTA_TABLE_NAME=self.name)
            run_in_netns(self.netns, _transaction, [delete])
        except NetlinkError as e:
            if e.code != errno.ENOENT:  # gone already
                raise


def _expression(name: str, **data: Any) -> dict[str, Any]:
    attrs = [(f"NFTA_{name.upper()}_{key.upper()}", value) for key, value in data.items()]
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", {"attrs": attrs})]}


def _drop_udp_to(port: int) -> list[dict[str, Any]]:
    """``ip protocol udp udp dport PORT drop``."""
    return [
        _expression("payload", dreg=1, base=1, offset=9, len=1),  # network header: protocol
        _expression("cmp", sreg=1, op=0, data=_value(b"\x11")),
        _expression("payload", dreg=1, base=2, offset=2, len=2),  # transport: destination
        _expression("cmp", sreg=1, op=0, data=_value(port.to_bytes(2, "big"))),
        _expression("immediate", dreg=0, data=_verdict(NF_DROP)),  # register 0: the verdict
    ]


def _value(data: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", data)]}


def _verdict(code: int) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VERDICT", {"attrs": [("NFTA_VERDICT_CODE", code)]})]}


def _nft(cls: type, kind: int, flags: int = 0, **attrs: Any) -> Any:
    msg = cls()
    msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | kind
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | flags
    msg["nfgen_family"] = NFPROTO_IPV4
    msg["attrs"] = list(attrs.items())
    return msg


def _transaction(messages: list[Any]) -> None:
    marks = []
    for kind in (NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END):
        mark = nfgen_msg()
        mark["res_id"] = NFNL_SUBSYS_NFTABLES
        mark["header"]["type"] = kind
        mark["header"]["flags"] = NLM_F_REQUEST
        marks.append(mark)
    nft = NFTables(nfgen_family=NFPROTO_IPV4)
    try:
        nft.nlm_request_batch([marks[0], *messages, marks[1]])
    finally:
        nft.close()
