"""What only the real kernel has: namespaces by name, sysctls inside one, the TUN device, other
tools' nftables tables and rules of shapes we never make, and what packets do with the state
the seam sets up (the UDP guard's drops, a VTEP reached through forwarding entries). Links,
addresses, routes, neighbours and our table are the netlink contract's
(tests/overlay/test_netlink_contract.py), run on the kernel too."""

from __future__ import annotations

import ipaddress
import socket
import subprocess

import pytest
from pyroute2.netlink import NLM_F_APPEND, NLM_F_CREATE
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    nft_chain_msg,
    nft_rule_msg,
)

from overlay import netlink, nft_rules, nft_wire, tun
from overlay.netdev import (
    FdbEntry,
    LinkChange,
    Masquerade,
    NatTable,
    Neighbour,
    NetlinkFailure,
    UdpGuard,
    Vxlan,
)
from overlay.netlink import Netlink
from overlay.netns import NETNS_DIR, run_in_netns
from overlay.nftables import Nftables
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
        _append(ns, nft_wire.message(
            nft_rule_msg, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
            NFTA_RULE_TABLE="weave-py", NFTA_RULE_CHAIN="postrouting", NFTA_RULE_EXPRESSIONS=odd,
        ))  # fmt: skip
        assert nl.nat_table("weave-py") == NatTable(True, (rule, None))
        _append(ns, nft_wire.message(
            nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE,
            NFTA_CHAIN_TABLE="weave-py", NFTA_CHAIN_NAME="extra",
        ))  # fmt: skip
        assert nl.nat_table("weave-py") == NatTable(False, (rule, None))
        nl.replace_nat_table("weave-py", [rule])  # a replacement takes everything else away
        assert nl.nat_table("weave-py") == NatTable(True, (rule,))


def _append(ns: str, message: object) -> None:
    """One more message to a table, by hand (not through the seam, which makes only ours)."""
    nft_wire.run(ns, "append", lambda nft: nft_wire.transaction(nft, [message]))


def test_a_guard_rule_of_another_shape_reads_as_not_ours(scratch_netns) -> None:
    ns = scratch_netns("guard")
    host = ipaddress.IPv4Address("192.0.2.1")
    guard = UdpGuard.of(6784, [(host, ipaddress.IPv4Network(host))])
    with Netlink(ns) as nl:
        nl.replace_nat_table("weave-py", [], guard)
        assert nl.nat_table("weave-py") == NatTable(True, (), guard)
        second = nft_rules.guard_expressions(6785)  # two rules where we make one
        _append(ns, nft_wire.message(
            nft_rule_msg, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
            NFTA_RULE_TABLE="weave-py", NFTA_RULE_CHAIN="input", NFTA_RULE_EXPRESSIONS=second,
        ))  # fmt: skip
        assert nl.nat_table("weave-py") == NatTable(False, (), None)
        nl.replace_nat_table("weave-py", [], guard)
        assert nl.nat_table("weave-py") == NatTable(True, (), guard)


# -- what the kernel does with what the seam sets up ---------------------------------------------


def _pair(scratch_netns, here: str, there: str) -> tuple[str, str]:
    """Two namespaces joined by a veth pair ``wpu0`` (in the first) -- ``wpu1``, up."""
    a, b = scratch_netns(here), scratch_netns(there)
    with Netlink(a) as nl:
        nl.ensure_veth("wpu0", "wpu1", b)
        nl.set_link("wpu0", up=True)
        nl.set_link("lo", up=True)
    with Netlink(b) as nl:
        nl.set_link("wpu1", up=True)
        nl.set_link("lo", up=True)
    return a, b


def _udp(ns: str, address: str, port: int = 0) -> socket.socket:
    """A UDP socket of namespace ``ns`` bound to ``address``."""
    sock = run_in_netns(ns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(0.5)
    return sock


def _arrivals(receiver: socket.socket) -> set[bytes]:
    seen: set[bytes] = set()
    try:
        while True:
            seen.add(receiver.recv(100))
    except TimeoutError:
        return seen


def _vxlan(tag: bytes, inner_source: str, ethertype: int = 0x0800) -> bytes:
    """A VXLAN datagram's payload: header, an inner Ethernet frame of ``ethertype`` holding
    an IPv4 header from ``inner_source`` (to 10.40.2.2), then ``tag``."""
    ip = bytes([0x45, 0, 0, 20 + len(tag), 0, 0, 0, 0, 64, 17, 0, 0])
    ip += ipaddress.IPv4Address(inner_source).packed + ipaddress.IPv4Address("10.40.2.2").packed
    frame = bytes(6) + bytes(6) + ethertype.to_bytes(2, "big") + ip + tag
    return bytes([8, 0, 0, 0]) + (6784).to_bytes(3, "big") + bytes(1) + frame


def test_the_guard_takes_from_a_peer_host_only_frames_from_its_space(scratch_netns) -> None:
    a, b = _pair(scratch_netns, "ga", "gb")
    with Netlink(a) as nl:
        for address in ("192.168.77.1/24", "192.168.77.3/24"):
            nl.ensure_address("wpu0", ipaddress.IPv4Interface(address))
    peer_host = ipaddress.IPv4Address("192.168.77.1")
    with Netlink(b) as nl:
        nl.ensure_address("wpu1", ipaddress.IPv4Interface("192.168.77.2/24"))
        spaces = [(peer_host, ipaddress.IPv4Network("10.40.1.0/24")),
                  (peer_host, ipaddress.IPv4Network(peer_host))]  # fmt: skip
        nl.replace_nat_table("weave-py", [], UdpGuard.of(6784, spaces))
    guarded, open_port = _udp(b, "192.168.77.2", 6784), _udp(b, "192.168.77.2", 6785)
    peer, stranger = _udp(a, "192.168.77.1"), _udp(a, "192.168.77.3")
    sent = {
        (peer, _vxlan(b"pod", "10.40.1.7")),  # from the peer's space: in
        (peer, _vxlan(b"last", "10.40.1.255")),
        (peer, _vxlan(b"host", "192.168.77.1")),  # its host address (host-network pods)
        (peer, _vxlan(b"outside", "10.40.2.7")),  # another's space: dropped
        (peer, _vxlan(b"arp", "10.40.1.7", ethertype=0x0806)),  # not IPv4: dropped
        (stranger, _vxlan(b"stranger", "10.40.1.7")),  # not a peer's host: dropped
    }
    try:
        for sender, payload in sent:
            sender.sendto(payload, ("192.168.77.2", 6784))
            sender.sendto(payload, ("192.168.77.2", 6785))
        assert {p[42:] for p in _arrivals(guarded)} == {b"pod", b"last", b"host"}  # the tags
        assert len(_arrivals(open_port)) == len(sent)  # other ports: untouched
        assert Nftables(b).guard_drops("weave-py") == 3  # the rule counts what it drops
        with Netlink(b) as nl:
            nl.replace_nat_table("weave-py", [], UdpGuard(6784, frozenset()))
        peer.sendto(_vxlan(b"again", "10.40.1.7"), ("192.168.77.2", 6784))
        assert _arrivals(guarded) == set()  # no pairs: nobody
        assert Nftables(b).guard_drops("weave-py") == 1  # a table made anew counts from zero
        with Netlink(b) as nl:
            nl.replace_nat_table("weave-py", [])
        assert Nftables(b).guard_drops("weave-py") is None  # no guard
        assert Nftables(b).guard_drops("wp-none") is None  # no table
    finally:
        for sock in (guarded, open_port, peer, stranger):
            sock.close()


def test_a_vtep_answers_through_forwarding_entries_alone(scratch_netns) -> None:
    """The fast path's kernel state, made with the seam's primitives only: a VXLAN device
    without a remote or learning on each side, the peer's VTEP routed on it with a permanent
    neighbour and a forwarding entry to the peer's host; a ping crosses, source bound to our
    VTEP on a bridge, and the peer's kernel answers the same way -- unless the peer's guard
    leaves our host out, or the VTEP's space as a source of our host's frames."""
    a, b = _pair(scratch_netns, "va", "vb")
    hosts = {a: "192.168.78.1", b: "192.168.78.2"}
    vteps = {a: "10.40.1.1", b: "10.40.2.1"}
    macs = {a: "02:00:00:00:0a:01", b: "02:00:00:00:0b:01"}
    for ns, other, uplink in ((a, b, "wpu0"), (b, a, "wpu1")):
        _fast_side(ns, uplink, hosts[ns], vteps[ns], macs[ns], hosts[other], vteps[other],
                   macs[other])  # fmt: skip
    assert _ping(a, vteps[a], vteps[b]), "no answer through the VXLAN devices"
    with Netlink(b) as nl:  # the guard holds the VXLAN port too: only listed hosts get in
        nl.replace_nat_table("weave-py", [], UdpGuard(6784, frozenset()))
        assert not _ping(a, vteps[a], vteps[b], count=1)
        host = ipaddress.IPv4Address(hosts[a])  # a's host, but not the VTEP's space
        alone = UdpGuard.of(6784, [(host, ipaddress.IPv4Network(host))])
        nl.replace_nat_table("weave-py", [], alone)
        assert not _ping(a, vteps[a], vteps[b], count=1)
        space = ipaddress.IPv4Network(f"{vteps[a]}/24", strict=False)
        nl.replace_nat_table("weave-py", [], UdpGuard.of(6784, [(host, space)]))
        assert _ping(a, vteps[a], vteps[b])


def _ping(ns: str, source: str, destination: str, count: int = 2) -> bool:
    """Whether ``destination`` answers an echo from ``source`` in namespace ``ns``."""
    ping = ["ping", "-c", str(count), "-W", "2", "-I", source, destination]
    done = subprocess.run(["nsenter", f"--net={NETNS_DIR}/{ns}", *ping], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    return done.returncode == 0


def _fast_side(ns: str, uplink: str, host: str, vtep: str, mac: str, peer_host: str,
               peer_vtep: str, peer_mac: str) -> None:  # fmt: skip
    iface = ipaddress.IPv4Interface
    with Netlink(ns) as nl:
        nl.ensure_address(uplink, iface(f"{host}/24"))
        bridge = nl.ensure_bridge("wpbr").index
        nl.set_link_index(bridge, LinkChange(up=True))
        nl.add_address_index(bridge, iface(f"{vtep}/24"))
        nl.add_link(Vxlan("wpvx", 6784, ipaddress.IPv4Address(host), None, 6784, False, mac, 1400))
        index = nl.index("wpvx")
        nl.set_link_index(index, LinkChange(up=True))
        peer = ipaddress.IPv4Address(peer_vtep)
        nl.replace_neighbour_index(index, Neighbour(peer, peer_mac))
        nl.replace_fdb_index(index, FdbEntry(peer_mac, ipaddress.IPv4Address(peer_host)))
        nl.replace_route_index(ipaddress.IPv4Network(f"{peer}/32"), index)
        assert nl.list_neighbours_index(index) == [Neighbour(peer, peer_mac)]
