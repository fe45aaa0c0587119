"""Contract of overlay/netlink.py on the real kernel, in throwaway namespaces."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from overlay import netlink, node, tun
from overlay.netlink import Netlink, NetlinkFailure, Route

pytestmark = pytest.mark.netns

NET = ipaddress.IPv4Network
IFACE = ipaddress.IPv4Interface


def test_bridge_is_idempotent_and_kind_checked(scratch_netns) -> None:
    ns = scratch_netns("a")
    with Netlink(ns) as nl:
        first = nl.ensure_bridge("wpbr0")
        again = nl.ensure_bridge("wpbr0")
        assert first.index == again.index and again.kind == "bridge"
        nl.ensure_veth("wpv0", "wpv1")
        with pytest.raises(NetlinkFailure) as err:
            nl.ensure_bridge("wpv0")
        assert err.value.code == errno.EEXIST
        with pytest.raises(NetlinkFailure):
            nl.ensure_veth("wpbr0", "wpv2")
        assert sorted(link.name for link in nl.list_links() if link.name.startswith("wp")) == [
            "wpbr0",
            "wpv0",
            "wpv1",
        ]


def test_veth_across_namespaces_and_link_settings(scratch_netns) -> None:
    a, b = scratch_netns("a"), scratch_netns("b")
    with Netlink(a) as nla, Netlink(b) as nlb:
        nla.ensure_bridge("wpbr0")
        nla.ensure_veth("wpv0", "wpv1", b)
        nla.ensure_veth("wpv0", "wpv1", b)  # idempotent
        assert nlb.link("wpv1") is not None and nla.link("wpv1") is None
        nla.set_link("wpv0", mtu=1400, master="wpbr0", up=True)
        link = nla.link("wpv0")
        assert link is not None
        assert (link.mtu, link.up, link.master) == (1400, True, nla.link("wpbr0").index)
        nlb.set_link("wpv1", gso_max_size=32000)
        assert nlb.link("wpv1").gso_max_size == 32000
        assert nla.remove_link("wpv0") is True
        assert nla.remove_link("wpv0") is False
        assert nlb.link("wpv1") is None  # the peer goes with it


def test_addresses_are_idempotent(scratch_netns) -> None:
    with Netlink(scratch_netns("a")) as nl:
        nl.ensure_bridge("wpd0")
        addr = IFACE("10.99.1.1/24")
        assert nl.ensure_address("wpd0", addr) is True
        assert nl.ensure_address("wpd0", addr) is False
        assert nl.list_addresses("wpd0") == [addr]
        assert nl.remove_address("wpd0", addr) is True
        assert nl.remove_address("wpd0", addr) is False
        assert nl.list_addresses("wpd0") == []
        with pytest.raises(NetlinkFailure) as err:
            nl.list_addresses("wpmissing")
        assert err.value.code == errno.ENODEV


def test_routes_only_ours_and_idempotent(scratch_netns) -> None:
    with Netlink(scratch_netns("a")) as nl:
        for name in ("wpd0", "wpd1"):
            nl.ensure_bridge(name)
            nl.set_link(name, up=True)
        nl.ensure_address("wpd0", IFACE("10.99.1.1/24"))
        route = Route(NET("10.98.0.0/24"), "wpd0")
        assert nl.ensure_route(route) is True
        assert nl.ensure_route(route) is False
        assert nl.list_routes() == [route]  # the connected /24 is the kernel's, not listed
        assert any(r.destination == NET("10.99.1.0/24") for r in nl.list_routes(protocol=None))
        moved = Route(NET("10.98.0.0/24"), "wpd1")
        assert nl.ensure_route(moved) is True  # replaced, not duplicated
        assert nl.list_routes() == [moved]
        via = Route(NET("0.0.0.0/0"), "wpd0", ipaddress.IPv4Address("10.99.1.254"))
        nl.ensure_route(via)
        assert via in nl.list_routes()
        assert nl.remove_route(moved) is True
        assert nl.remove_route(moved) is False
        assert nl.route_device(ipaddress.IPv4Address("10.99.1.7")).name == "wpd0"


def test_sysctl_in_namespace(scratch_netns) -> None:
    ns = scratch_netns("a")
    assert netlink.run_in_netns(ns, netlink.ensure_sysctl, "net.ipv4.ip_forward", "1") is True
    assert netlink.run_in_netns(ns, netlink.ensure_sysctl, "net.ipv4.ip_forward", "1") is False
    assert netlink.run_in_netns(ns, netlink.read_sysctl, "net.ipv4.ip_forward") == "1"


def test_namespaces_are_idempotent(run_id) -> None:
    name = f"wp{run_id}-ns"
    try:
        assert netlink.ensure_netns(name) is True
        assert netlink.ensure_netns(name) is False
        assert name in netlink.list_netns()
    finally:
        assert netlink.remove_netns(name) is True
    assert netlink.remove_netns(name) is False


def _spec(remote: set[str], mtu: int = 1436) -> node.NodeSpec:
    return node.NodeSpec(
        bridge="wpbr",
        tun="wptun",
        mtu=mtu,
        gso_max_size=64000,
        gateways=(IFACE("10.244.1.1/24"),),
        remote_blocks=frozenset(NET(b) for b in remote),
    )


def test_node_reconcile_converges_and_repairs_drift(scratch_netns) -> None:
    ns = scratch_netns("node")
    dev = netlink.run_in_netns(ns, tun.open_tun, "wptun", True, True)
    try:
        with Netlink(ns) as nl:
            rec = node.Reconciler(nl)
            spec = _spec({"10.244.2.0/24", "10.244.3.0/24"})
            assert rec.run(spec)  # first run changes things
            assert rec.run(spec) == []  # then nothing
            assert sorted(str(r.destination) for r in nl.list_routes()) == [
                "10.244.2.0/24",
                "10.244.3.0/24",
            ]
            assert nl.list_addresses("wpbr") == [IFACE("10.244.1.1/24")]
            tun_link = nl.link("wptun")
            assert (tun_link.mtu, tun_link.gso_max_size, tun_link.up) == (1436, 64000, True)
            # drift: a route removed by hand, an MTU changed, a stray address
            nl.remove_route(Route(NET("10.244.2.0/24"), "wptun"))
            nl.set_link("wpbr", mtu=1300)
            nl.ensure_address("wpbr", IFACE("10.244.1.77/24"))
            assert len(rec.run(spec)) == 3
            assert rec.run(spec) == []
            # a peer leaves: its route goes, nothing else changes
            smaller = _spec({"10.244.3.0/24"})
            assert rec.run(smaller) == [node.RemoveRoute(Route(NET("10.244.2.0/24"), "wptun"))]
            assert [str(r.destination) for r in nl.list_routes()] == ["10.244.3.0/24"]
    finally:
        dev.close()


def test_tun_offload_probe_and_reattach(scratch_netns) -> None:
    ns = scratch_netns("t")
    first = netlink.run_in_netns(ns, tun.open_tun, "wptun", True, True)
    assert first.offload in {name for name, _ in tun.OFFLOAD_MODES}
    first.close()
    with Netlink(ns) as nl:
        assert nl.link("wptun") is not None  # persistent: survives the agent closing it
    plain = netlink.run_in_netns(ns, tun.open_tun, "wptun", False, True)
    assert plain.offload == "off"
    plain.close()
