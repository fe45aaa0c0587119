"""The rules of our nftables tables as expressions, for ``overlay.nftables`` and
``overlay.nft_count``: built from the seam's values and read back into them, a rule recognised
only when every expression is exactly one we make (anything else reads as None).

The masquerade rule (chain postrouting), the guard's rule (chain input), and the traffic
table's two notrack rules, whose set elements count (chains count-in, count-out), as ``nft``
would print them::

    ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade
    udp dport 6784 ip saddr . @th,224,16 . @th,336,32 != @guard-sources counter drop
    meta l4proto udp udp dport 6784 ip saddr @rx notrack
    meta l4proto udp udp dport 6784 ip daddr @tx notrack

An address match loads four bytes of the IPv4 header (source at offset 12, destination at 16)
into register 1, ANDs them with the prefix's netmask and compares with the network address.
Masks and addresses are packed here in network order (pyroute2's own ``ipv4addr`` helper packs
non-byte-aligned masks wrongly). The guard looks up, inverted, a key of three fields in a set of
the same table (``GUARD_SET``, ranges of concatenations): the datagram's source host, and in the
VXLAN frame it carries the inner EtherType (transport header offset 28: UDP 8, VXLAN 8, then the
Ethernet type at 12) and the inner IPv4 source (offset 42: the IPv4 header follows the 14-byte
Ethernet header, its source at 12). A datagram whose key is in no element's range -- a host that
is not a peer's, a frame that is not IPv4, an inner source outside that host's space -- matches
and is dropped. The fields go into consecutive 32-bit registers from register 1 (the EtherType's
two bytes zero-padded), as ``nft`` lays out a concatenation. Its counter counts what it drops.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from overlay.netdev import Masquerade
from overlay.nft_wire import counter_of, data, data_of

NETWORK, TRANSPORT = 1, 2  # NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER
NFT_REG_VERDICT, NFT_REG_1 = 0, 1
NFT_CMP_EQ, NFT_CMP_NEQ = 0, 1
NFT_META_L4PROTO = 16
NF_DROP = 0
IPPROTO_UDP = 17
SADDR, DADDR = 12, 16  # offsets in the IPv4 header
DPORT = 2  # offset in the UDP header
GUARD_SET = "guard-sources"
NFT_REG32_01, NFT_REG32_02 = 9, 10  # a concatenation's second and third fields
INNER_TYPE, INNER_SOURCE = 28, 42  # offsets in a VXLAN datagram's transport header
ETH_P_IP = 0x0800
GUARD_FIELDS = (4, 2, 4)  # the guard key's fields: source host, inner EtherType, inner source
# the same values as pyroute2 names them in what it reads back
REG, NETWORK_HEADER, BOOL = "NFT_REG_1", "NFT_PAYLOAD_NETWORK_HEADER", "NFT_BITWISE_BOOL"
TRANSPORT_HEADER, INVERTED = "NFT_PAYLOAD_TRANSPORT_HEADER", "NFT_LOOKUP_F_INV"
LOAD = frozenset(f"NFTA_PAYLOAD_{key}" for key in ("DREG", "BASE", "OFFSET", "LEN"))
Message = Any  # a pyroute2 netlink message
Expression = dict[str, Any]


def _expression(name: str, **data: Any) -> Expression:
    prefix = f"NFTA_{name.upper()}_"
    attrs = [(prefix + key.upper(), value) for key, value in data.items()]
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", {"attrs": attrs})]}


def _load(base: int, offset: int, length: int) -> Expression:
    return _expression("payload", dreg=NFT_REG_1, base=base, offset=offset, len=length)


def _equals(value: bytes) -> Expression:
    return _expression("cmp", sreg=NFT_REG_1, op=NFT_CMP_EQ, data=data(value))


def _match(offset: int, network: IPv4Network, op: int) -> list[Expression]:
    """The IPv4 address at ``offset`` is (EQ) or is not (NEQ) inside ``network``."""
    mask = data(network.netmask.packed)
    return [
        _load(NETWORK, offset, 4),
        _expression(
            "bitwise", sreg=NFT_REG_1, dreg=NFT_REG_1, len=4, mask=mask, xor=data(bytes(4))
        ),
        _expression("cmp", sreg=NFT_REG_1, op=op, data=data(network.network_address.packed)),
    ]


def masquerade_expressions(rule: Masquerade) -> list[Expression]:
    """``ip saddr SOURCE ip daddr != EXEMPT masquerade`` as nftables expressions."""
    return [
        *_match(SADDR, rule.source, NFT_CMP_EQ),
        *_match(DADDR, rule.exempt, NFT_CMP_NEQ),
        _expression("masq"),
    ]


def guard_expressions(port: int) -> list[Expression]:
    """``meta l4proto udp udp dport PORT ip saddr . @th,224,16 . @th,336,32 != @GUARD_SET
    counter drop``."""
    drop = {"attrs": [("NFTA_DATA_VERDICT", {"attrs": [("NFTA_VERDICT_CODE", NF_DROP)]})]}
    return [
        *_port_expressions(port),
        _load(NETWORK, SADDR, 4),
        _expression("payload", dreg=NFT_REG32_01, base=TRANSPORT, offset=INNER_TYPE, len=2),
        _expression("payload", dreg=NFT_REG32_02, base=TRANSPORT, offset=INNER_SOURCE, len=4),
        _expression("lookup", sreg=NFT_REG_1, set=GUARD_SET, flags=frozenset({INVERTED})),
        {"attrs": [("NFTA_EXPR_NAME", "counter")]},  # from zero
        _expression("immediate", dreg=NFT_REG_VERDICT, data=drop),
    ]


def guard_key(host: IPv4Address, source: IPv4Address) -> bytes:
    """The guard set's key for ``host`` carrying an IPv4 frame from ``source``."""
    return host.packed + ETH_P_IP.to_bytes(2, "big") + bytes(2) + source.packed


def _port_expressions(port: int) -> list[Expression]:
    """``meta l4proto udp udp dport PORT``."""
    return [
        _expression("meta", dreg=NFT_REG_1, key=NFT_META_L4PROTO),
        _equals(bytes([IPPROTO_UDP])),
        _load(TRANSPORT, DPORT, 2),
        _equals(port.to_bytes(2, "big")),
    ]


def _lookup_expressions(port: int, offset: int, name: str) -> list[Expression]:
    """``meta l4proto udp udp dport PORT ip saddr|daddr @NAME`` (the address at ``offset``:
    SADDR for what arrives, DADDR for what leaves); a set whose elements hold a counter counts
    every packet that matches."""
    return [
        *_port_expressions(port),
        _load(NETWORK, offset, 4),
        _expression("lookup", sreg=NFT_REG_1, set=name),
    ]


def notrack_expressions(port: int, offset: int, name: str) -> list[Expression]:
    """``meta l4proto udp udp dport PORT ip saddr|daddr @NAME notrack``."""
    notrack = {"attrs": [("NFTA_EXPR_NAME", "notrack")]}  # an expression without data
    return [*_lookup_expressions(port, offset, name), notrack]


def read_notrack(msg: Message, offset: int, name: str) -> int | None:
    """A rule read back: the port of the notrack rule ``notrack_expressions`` makes for
    ``offset`` and ``name``, or None when it is anything else."""
    found = _found(msg)
    if len(found) != 7 or found[6][0] != "notrack" or _attrs(found[6][1]):
        return None
    return _read_lookup(found[:6], offset, name)


def _read_lookup(found: list[tuple[str, Message]], offset: int, name: str) -> int | None:
    """The port of the six expressions ``_lookup_expressions`` makes, else None."""
    port = _read_port(found[:4])
    if port is None or [n for n, _ in found[4:]] != ["payload", "lookup"]:
        return None
    (_, address), (_, lookup) = found[4:]
    if _loaded(address) != (NETWORK_HEADER, offset, 4) or _looked_up(lookup) != (name, None):
        return None
    return port


def _read_port(found: list[tuple[str, Message]]) -> int | None:
    """The port of the four expressions ``_port_expressions`` makes, else None."""
    if [n for n, _ in found] != ["meta", "cmp", "payload", "cmp"]:
        return None
    (_, meta), (_, udp), (_, dport), (_, port) = found
    shape = (
        meta.get_attr("NFTA_META_DREG"),
        meta.get_attr("NFTA_META_KEY"),
        _compared(udp),
        _loaded(dport),
    )
    value = _compared(port)
    if shape != (REG, "NFT_META_L4PROTO", bytes([IPPROTO_UDP]), (TRANSPORT_HEADER, DPORT, 2)):
        return None
    return int.from_bytes(value, "big") if value is not None and len(value) == 2 else None


def _looked_up(lookup: Message) -> tuple[str, Any] | None:
    """(set, flags) of a lookup of register 1 with no result register, else None."""
    if lookup.get_attr("NFTA_LOOKUP_SREG") != REG or lookup.get_attr("NFTA_LOOKUP_DREG"):
        return None
    return lookup.get_attr("NFTA_LOOKUP_SET"), lookup.get_attr("NFTA_LOOKUP_FLAGS") or None


def _found(msg: Message) -> list[tuple[str, Message]]:
    return [
        (e.get_attr("NFTA_EXPR_NAME"), e.get_attr("NFTA_EXPR_DATA"))
        for e in msg.get_attr("NFTA_RULE_EXPRESSIONS") or ()
    ]


def read_masquerade(msg: Message) -> Masquerade | None:
    """A rule read back: the Masquerade it is, or None when it is anything else."""
    found = _found(msg)
    if len(found) != 7 or found[6][0] != "masq" or _attrs(found[6][1]):
        return None
    source = _read_match(found[0:3], SADDR, "NFT_CMP_EQ")
    exempt = _read_match(found[3:6], DADDR, "NFT_CMP_NEQ")
    return Masquerade(source, exempt) if source and exempt else None


def read_guard(msg: Message) -> int | None:
    """A rule read back: the port of the guard's rule it is, or None when it is anything else."""
    found = _found(msg)
    names = ["payload", "payload", "payload", "lookup", "counter", "immediate"]
    if len(found) != 10 or [n for n, _ in found[4:]] != names:
        return None
    (_, source), (_, kind), (_, inner), (_, lookup), _, (_, verdict) = found[4:]
    fields = (
        _loaded(source),
        _loaded(kind, "NFT_REG32_01"),
        _loaded(inner, "NFT_REG32_02"),
        _looked_up(lookup),
        _verdict(verdict),
    )
    want = ((NETWORK_HEADER, SADDR, 4), (TRANSPORT_HEADER, INNER_TYPE, 2),
            (TRANSPORT_HEADER, INNER_SOURCE, 4), (GUARD_SET, {INVERTED}), "NF_DROP")  # fmt: skip
    return _read_port(found[:4]) if fields == want else None


def guard_drops(msg: Message) -> int | None:
    """The datagrams the guard's rule ``msg`` dropped so far (its counter), None when it is
    not the guard's rule."""
    if read_guard(msg) is None:
        return None
    counted = counter_of(_found(msg)[8][1])
    return counted[0] if counted is not None else 0


def _loaded(payload: Message, register: str = REG) -> tuple[Any, ...] | None:
    """(base, offset, length) of a load into ``register``, else None."""
    if payload.get_attr("NFTA_PAYLOAD_DREG") != register or _attrs_named(payload) - LOAD:
        return None
    return tuple(payload.get_attr(f"NFTA_PAYLOAD_{key}") for key in ("BASE", "OFFSET", "LEN"))


def _compared(cmp: Message) -> bytes | None:
    """The value register 1 must equal, else None."""
    if (cmp.get_attr("NFTA_CMP_SREG"), cmp.get_attr("NFTA_CMP_OP")) != (REG, "NFT_CMP_EQ"):
        return None
    return data_of(cmp, "NFTA_CMP_DATA")


def _verdict(immediate: Message) -> str | None:
    if immediate.get_attr("NFTA_IMMEDIATE_DREG") != "NFT_REG_VERDICT":
        return None
    data = immediate.get_attr("NFTA_IMMEDIATE_DATA")
    verdict = data.get_attr("NFTA_DATA_VERDICT") if data is not None else None
    if verdict is None or verdict.get_attr("NFTA_VERDICT_CHAIN") is not None:
        return None
    code = verdict.get_attr("NFTA_VERDICT_CODE")
    return code if isinstance(code, str) else None


def _attrs(data: Message | None) -> list[Any]:
    return list(data["attrs"]) if data is not None else []


def _attrs_named(data: Message) -> set[str]:
    return {name for name, *_ in _attrs(data)}


def _read_match(found: list[tuple[str, Message]], offset: int, op: str) -> IPv4Network | None:
    """The network of a match ``_match`` makes, or None for any other three expressions."""
    if tuple(name for name, _ in found) != ("payload", "bitwise", "cmp"):
        return None
    (_, payload), (_, bitwise), (_, cmp) = found
    shape = (
        _loaded(payload),
        bitwise.get_attr("NFTA_BITWISE_SREG"),
        bitwise.get_attr("NFTA_BITWISE_DREG"),
        bitwise.get_attr("NFTA_BITWISE_LEN"),
        bitwise.get_attr("NFTA_BITWISE_OP") or BOOL,
        data_of(bitwise, "NFTA_BITWISE_XOR"),
        cmp.get_attr("NFTA_CMP_SREG"),
        cmp.get_attr("NFTA_CMP_OP"),
    )
    if shape != ((NETWORK_HEADER, offset, 4), REG, REG, 4, BOOL, bytes(4), REG, op):
        return None
    mask, address = data_of(bitwise, "NFTA_BITWISE_MASK"), data_of(cmp, "NFTA_CMP_DATA")
    try:
        return IPv4Network(f"{IPv4Address(address or b'')}/{IPv4Address(mask or b'')}")
    except ValueError:  # a mask that is not a prefix, host bits set, a short value
        return None
