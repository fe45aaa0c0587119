"""The underlay survey on the fake kernel: which interface carries peer traffic, so the node
advertises the right address and sizes the overlay MTU from the right device (never ``lo``)."""

from __future__ import annotations

import ipaddress

import pytest

from agent.kernel import DEFAULT_UNDERLAY_MTU, survey
from overlay.fake_kernel import FakeKernel
from overlay.fake_netns import FakeNetns
from overlay.netdev import LinkChange

OWN = "192.168.1.7"
OTHER = "192.168.1.8"


@pytest.fixture
def host() -> FakeNetns:
    ns = FakeKernel().host
    for name, address, mtu in (("eth0", f"{OWN}/24", 9000), ("eth1", "172.16.0.7/24", 1400)):
        link = ns.add_device(name, kind="veth")
        ns.set_link_index(link.index, LinkChange(mtu=mtu, up=True))
        ns.add_address_index(link.index, ipaddress.IPv4Interface(address))
    return ns


def test_a_seed_list_that_names_this_node_first_is_read_past_its_own_address(
    host: FakeNetns,
) -> None:
    lo = host.route_device(ipaddress.IPv4Address(OWN))
    assert lo is not None and lo.name == "lo" and lo.mtu == 65536  # the trap: route to self
    underlay = survey(host, [OWN, OTHER])
    assert (underlay.address, underlay.mtu) == (OWN, 9000)


def test_the_advertised_address_picks_its_interface(host: FakeNetns) -> None:
    underlay = survey(host, [], advertise="172.16.0.7")
    assert (underlay.address, underlay.mtu) == ("172.16.0.7", 1400)
    underlay = survey(host, [OWN], advertise=OWN)  # seeds that are only ourselves
    assert (underlay.address, underlay.mtu) == (OWN, 9000)


def test_the_advertised_address_wins_over_the_seed_route(host: FakeNetns) -> None:
    underlay = survey(host, [OTHER], advertise="172.16.0.7")
    assert (underlay.address, underlay.mtu) == ("172.16.0.7", 1400)


def test_an_advertised_address_held_elsewhere_keeps_the_route_s_mtu(host: FakeNetns) -> None:
    underlay = survey(host, [OTHER], advertise="203.0.113.9")  # a NAT's address, say
    assert (underlay.address, underlay.mtu) == ("203.0.113.9", 9000)


def test_only_ourselves_and_no_advertised_address_leaves_the_address_unknown(
    host: FakeNetns,
) -> None:
    underlay = survey(host, [OWN])
    assert (underlay.address, underlay.mtu) == (None, DEFAULT_UNDERLAY_MTU)
    underlay = survey(host, ["10.99.0.1"])  # no route at all
    assert underlay.address is None
