"""What only the real kernel has: namespaces by name, sysctls inside one, the TUN device.
Links, addresses and routes are the netlink contract's (tests/overlay/test_netlink_contract.py),
run on the kernel too."""

from __future__ import annotations

import pytest

from overlay import netlink, tun
from overlay.netdev import NetlinkFailure
from overlay.netlink import Netlink
from overlay.netns import run_in_netns
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
