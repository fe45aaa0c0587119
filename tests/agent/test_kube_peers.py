"""The Kubernetes source without a cluster: its settings, when it is used, what the daemon
builds, when routes count as in place, and rmpeer through the agent's own API."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent import config_sources
from agent.config import Config, ConfigError
from agent.lab.kube.pki import Pki
from agent.peers import Member, View, startup
from agent.peers.gossip import GossipPeers
from agent.peers.kube import KubePeers
from agent.peers.kube_api import KubeApi, enabled, kube_config
from agent.peers.nodes import NodeInfo
from agent.peers.source import peer_source
from gossip.identity import new_identity
from gossip.secret import Secrets
from gossip.topology import PeerRecord

Net = ipaddress.IPv4Network


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    config_sources.add_arguments(parser)
    return config_sources.load(parser.parse_args(list(argv)), env or {})


@pytest.fixture
def account(tmp_path: Path) -> Path:
    """A service account's directory as kubelet mounts it."""
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("a-token")
    pki = Pki(tmp_path / "pki")
    pki.make("10.96.0.1", [])
    shutil.copy(pki.ca_cert, directory / "ca.crt")
    (directory / "namespace").write_text("kube-system")
    return directory


def test_kubelet_s_variables_and_the_switch_are_read(account: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
           "WEAVE_KUBERNETES": "auto", "WEAVE_IPAM_MODE": "kube"}  # fmt: skip
    c = load("--service-account-dir", str(account), env=env)
    assert (c.kube_api_host, c.kube_api_port, c.ipam_mode) == ("10.96.0.1", 443, "kube")
    assert enabled(c)
    assert kube_config(c).get().cluster.server == "https://10.96.0.1:443"
    assert not enabled(dataclasses.replace(c, kubernetes="off"))


def test_auto_is_off_outside_a_cluster(tmp_path: Path) -> None:
    c = load("--service-account-dir", str(tmp_path / "none"), env={})
    assert c.kubernetes == "auto" and not enabled(c)
    assert enabled(dataclasses.replace(c, kubeconfig="/etc/kubeconfig"))
    token_missing = load("--service-account-dir", str(tmp_path / "none"),
                         env={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})  # fmt: skip
    assert not enabled(token_missing)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kubernetes", "maybe"], "kubernetes: 'maybe'"),
        (["--ipam-mode", "dhcp"], "ipam_mode: 'dhcp'"),
        (["--kube-api-port", "0"], "kube_api_port: 0"),
        (["--ipam-mode", "kube", "--kubernetes", "off"], "needs the Kubernetes API"),
    ],
)
def test_bad_kubernetes_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(*argv)


async def no_rmpeer(name: str) -> dict[str, Any]:
    raise AssertionError(f"rmpeer {name} was not expected")


def build(config: Config, blocks: tuple[str, ...] = ()) -> Any:
    claim = {"blocks": blocks, "meta": b""}
    identity = new_identity(config.node_name)
    return peer_source(config, identity, 1, "192.168.1.7", claim, set, no_rmpeer, Secrets.none())


def test_the_daemon_builds_the_kubernetes_source_only_when_it_is_used(account: Path) -> None:
    base = dataclasses.replace(Config(), node_name="node-1", port=0, kube_api_host="10.96.0.1",
                               service_account_dir=str(account))  # fmt: skip
    kube = build(base)
    assert isinstance(kube, KubePeers) and kube.rmpeer is not None
    assert kube.gossip.topology.local.data_endpoint == ("192.168.1.7", 0)
    assert isinstance(build(dataclasses.replace(base, kubernetes="off")), GossipPeers)
    fixed = build(dataclasses.replace(base, pod_block=Net("10.32.1.0/24")))
    assert fixed.rmpeer is None  # kube IPAM: the controller-manager frees podCIDRs


class NoApi(KubeApi):
    def __init__(self) -> None:
        pass


def kube_source(blocks: tuple[str, ...], routed: set[Net]) -> KubePeers:
    identity = new_identity("node-1")
    gossip = GossipPeers(identity, 1, ("192.168.1.7", 6783), ("127.0.0.1", 0), (), 8,
                         {"blocks": blocks, "meta": b""})  # fmt: skip
    return KubePeers(gossip, NoApi(), "node-1", lambda: routed, None)


def member(name: str, *blocks: str) -> Member:
    record = PeerRecord(name=name, nickname=name, incarnation=1, version=1, uid=1,
                        data_endpoint=("192.168.1.8", 6783),
                        control_endpoint=("192.168.1.8", 6783), blocks=blocks)  # fmt: skip
    return Member(name, name, ("192.168.1.8", 6783), record=record)


def test_routes_are_in_place_once_every_member_s_space_is_routed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routed = {Net("10.32.2.0/24")}
    peers = kube_source(("10.32.1.0/24",), routed)
    members = [member("node-2", "10.32.2.0/24")]
    monkeypatch.setattr(peers.gossip, "view", lambda: View(tuple(members)))
    assert peers.routes_in_place(grace_over=False)
    members.append(member("node-3", "10.32.3.0/24"))
    assert not peers.routes_in_place(grace_over=True)  # node-3's space is not routed yet
    routed.add(Net("10.32.3.0/24"))
    assert peers.routes_in_place(grace_over=False)


def test_a_node_alone_is_ready_after_the_grace_and_never_without_space() -> None:
    alone = kube_source(("10.32.1.0/24",), set())
    assert not alone.routes_in_place(grace_over=False)
    assert alone.routes_in_place(grace_over=True)
    assert not kube_source((), set()).routes_in_place(grace_over=True)


def test_a_peer_maps_to_its_node_by_nickname() -> None:
    peers = kube_source((), set())
    assert peers.peer_name("node-2") == new_identity("node-2").name  # no record: derived


class ScriptedApi(NoApi):
    """Answers from a script: each list or get takes the next answer (an exception raises)."""

    def __init__(self, lists: list[Any], gets: list[Any]) -> None:
        self.lists, self.gets = lists, gets

    async def list_nodes(self) -> tuple[list[NodeInfo], str]:
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer, "1"

    async def get_node(self, name: str) -> NodeInfo:
        answer = self.gets.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, NodeInfo)
        return answer

    async def close(self) -> None:
        pass


async def test_start_up_waits_for_its_node_and_its_pod_cidr(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(startup.asyncio, "sleep", sleep)
    other = NodeInfo("node-2", "u2", "192.168.1.8")
    mine = NodeInfo("node-1", "u1", "192.168.1.7")
    cidr = Net("10.244.1.0/24")
    api = ScriptedApi(
        lists=[OSError("connection refused"), [other], [mine, other]],
        gets=[mine, dataclasses.replace(mine, pod_cidr=cidr)],
    )
    config = dataclasses.replace(Config(), node_name="node-1", ipam_mode="kube",
                                 ipalloc_range=Net("10.244.0.0/16"))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="weave-py.kube"):
        prepared = await startup.prepare(config, api)
    assert (prepared.pod_block, prepared.ipalloc_init) == (cidr, "consensus=2")
    assert (prepared.advertise_address, prepared.seeds) == ("192.168.1.7", ("192.168.1.8",))
    assert len(slept) == 3  # refused, not registered, no podCIDR yet
    assert "list nodes: OSError: connection refused; retry" in caplog.text
    assert "list nodes: node node-1 is not registered yet" in caplog.text
    assert "wait for podCIDR: node node-1: no podCIDR assigned yet" in caplog.text


async def test_a_pod_cidr_outside_the_range_is_a_configuration_error() -> None:
    mine = NodeInfo("node-1", "u1", "192.168.1.7", Net("10.244.1.0/24"))
    api = ScriptedApi(lists=[[mine]], gets=[mine])
    config = dataclasses.replace(Config(), node_name="node-1", ipam_mode="kube")
    with pytest.raises(ConfigError, match=r"pod_block: '10\.244\.1\.0/24' is not inside"):
        await startup.prepare(config, api)
