"""What only the real kernel has: namespaces by name, sysctls inside one, the TUN device, other
tools' nftables tables and rules of shapes we never make. Links, addresses, routes and our NAT
table are the netlink contract's (tests/overlay/test_netlink_contract.py), run on the kernel
too."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest
from pyroute2.netlink import NLM_F_APPEND, NLM_F_CREATE
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    nft_chain_msg,
    nft_rule_msg,
)

from overlay import netlink, nft_rules, nftables, tun
from overlay.netdev import Masquerade, NatTable, NetlinkFailure
from overlay.netlink import Netlink
from overlay.netns import NETNS_DIR, run_in_netns
from overlay.sysctl import ensure_sysctl, read_sysctl

pytestmark = pytest.mark.netns


def test_sysctl_in_namespace(scratch_netns) -> None:
    ns = scratch_netns("a")
    assert run_in_netns(ns, ensure_sysctl, "net.ipv4.ip_forward", "1") is True
    assert run_in_netns(ns, ensure_sysctl, "net.ipv4.ip_forward", "1") is False
    assert run_in_netns(ns, read_sysctl, "net.ipv4.ip_forward") == "1"


def test_namespaces_are_idempotent(run_id) -> None:
    name = f"wp{run_id}-ns"
    try:
        assert netlink.ensure_netns(name) is True
        assert netlink.ensure_netns(name) is False
        assert name in netlink.list_netns()
    finally:
        assert netlink.remove_netns(name) is True
    assert netlink.remove_netns(name) is False


def test_entering_a_namespace_that_is_not_one_is_refused(tmp_path) -> None:
    with pytest.raises(NetlinkFailure):
        run_in_netns(str(tmp_path), lambda: None)


def test_tun_offload_probe_and_reattach(scratch_netns) -> None:
    ns = scratch_netns("t")
    first = run_in_netns(ns, tun.open_tun, "wptun", True, True)
    assert first.offload in {name for name, _ in tun.OFFLOAD_MODES}
    first.close()
    with Netlink(ns) as nl:
        link = nl.link("wptun")  # persistent: survives the agent closing it
        assert link is not None and link.kind == "tun"
    plain = run_in_netns(ns, tun.open_tun, "wptun", False, True)
    assert plain.offload == "off"
    plain.close()


# -- our nftables table among others ------------------------------------------------------------


def _iptables(netns: str, *args: str) -> str:
    command = ["nsenter", f"--net={NETNS_DIR}/{netns}", "iptables-nft", "-w", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


def test_iptables_nft_tables_survive_ours(scratch_netns) -> None:
    ns = scratch_netns("nat")
    _iptables(ns, "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE")
    before = _iptables(ns, "-t", "nat", "-S")
    cluster = ipaddress.IPv4Network("10.32.0.0/12")
    with Netlink(ns) as nl:
        nl.replace_nat_table("weave-py", [Masquerade(cluster, cluster)])
        assert nl.nat_table("weave-py") == NatTable(True, (Masquerade(cluster, cluster),))
        nl.replace_nat_table("weave-py", [])
        nl.remove_nat_table("weave-py")
        assert nl.nat_table("weave-py") is None
    assert _iptables(ns, "-t", "nat", "-S") == before
    assert "-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE" in before


def test_what_we_do_not_make_in_our_table_reads_as_not_ours(scratch_netns) -> None:
    ns = scratch_netns("odd")
    cluster = ipaddress.IPv4Network("10.32.0.0/12")
    rule = Masquerade(cluster, cluster)
    with Netlink(ns) as nl:
        nl.replace_nat_table("weave-py", [rule])
        odd = nft_rules.masquerade_expressions(rule)[3:]  # no source match: every packet
        _append(ns, nftables._message(
            nft_rule_msg, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
            NFTA_RULE_TABLE="weave-py", NFTA_RULE_CHAIN="postrouting", NFTA_RULE_EXPRESSIONS=odd,
        ))  # fmt: skip
        assert nl.nat_table("weave-py") == NatTable(True, (rule, None))
        _append(ns, nftables._message(
            nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE,
            NFTA_CHAIN_TABLE="weave-py", NFTA_CHAIN_NAME="extra",
        ))  # fmt: skip
        assert nl.nat_table("weave-py") == NatTable(False, (rule, None))
        nl.replace_nat_table("weave-py", [rule])  # a replacement takes everything else away
        assert nl.nat_table("weave-py") == NatTable(True, (rule,))


def _append(ns: str, message: object) -> None:
    """One more message to a table, by hand (not through the seam, which makes only ours)."""
    run_in_netns(ns, nftables._with_socket, lambda nft: nftables._transaction(nft, [message]))
