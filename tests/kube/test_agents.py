"""Two real agents (``python -m agent run``) on a real apiserver, told nothing of each other:
no seed, no advertised address, no IPALLOC_INIT. One runs as in a pod (the service account's
directory, KUBERNETES_SERVICE_HOST's setting), the other out of cluster (a kubeconfig). They
find each other in the Node list, seed gossip IPAM with the Node count as quorum, clear their
Nodes' NetworkUnavailable, and when one Node is deleted and its agent gone, the other reclaims
its space.

Layout: each node a namespace of its own, wired by a veth to a bridge in the control plane's
namespace (172.31.250.0/24, where the apiserver's address also answers)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import client
from overlay import netlink
from overlay.netlink import Netlink
from tests.kube.conftest import ROOT, Cluster, add_node, delete_nodes

pytestmark = pytest.mark.netns
BRIDGE_ADDRESS = "172.31.250.254/24"


class Node:
    """One node's namespace and agent."""

    def __init__(self, cluster: Cluster, tag: str, i: int, directory: Path) -> None:
        self.name = f"n{tag}-{i}"
        self.netns = f"wp{tag}-n{i}"
        self.address = f"172.31.250.{10 + i}"
        self.directory = directory / self.name
        self.directory.mkdir(parents=True)
        self.socket = str(self.directory / "api.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.cluster = cluster

    def wire(self, bridge: str, tag: str, i: int) -> None:
        netlink.ensure_netns(self.netns)
        outer, inner = f"wp{tag}u{i}", f"wp{tag}e{i}"
        with Netlink(self.cluster.netns) as cp:
            cp.ensure_veth(outer, inner, self.netns)
            cp.set_link(outer, master=bridge, up=True)
        with Netlink(self.netns) as nl:
            nl.set_link("lo", up=True)
            nl.set_link(inner, up=True)
            nl.ensure_address(inner, _interface(f"{self.address}/24"))

    def start(self, *how: str) -> None:
        argv = [sys.executable, "-m", "agent", "run", "--netns", self.netns,
                "--node-name", self.name, "--kubernetes", "on",
                "--ipalloc-range", "10.40.0.0/16", "--bridge", "wpkb", "--tun", "wpkt",
                "--socket", self.socket, "--cni-socket", "", "--http-addr", "",
                "--metrics-addr", "", "--state-dir", str(self.directory / "state"),
                "--heartbeat-timeout", "6", *how]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "WEAVE_"))}
        with open(self.directory / "agent.log", "ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env=env,
            )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def report(self) -> dict[str, Any]:
        try:
            return client.report(self.socket, timeout=2.0)
        except OSError:
            return {}

    def log(self) -> str:
        return (self.directory / "agent.log").read_text(errors="replace")


def _interface(text: str) -> Any:
    import ipaddress

    return ipaddress.IPv4Interface(text)


def wait(check: Callable[[], bool], what: str, nodes: list[Node], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for node in nodes:
            assert node.process is None or node.process.poll() is None, node.log()[-3000:]
        time.sleep(0.3)
    logs = "\n".join(f"== {n.name}\n{n.log()[-3000:]}" for n in nodes)
    raise AssertionError(f"not {what} after {timeout:.0f}s\n{logs}")


def owners(node: Node) -> dict[str, int]:
    """Nickname -> addresses owned, as the node's IPAM status says."""
    ipam = node.report().get("ipam") or {}
    return {o["nickname"]: o["addresses"] for o in ipam.get("owners", [])}


def condition(cluster: Cluster, name: str) -> str:
    path = '{.status.conditions[?(@.type=="NetworkUnavailable")].status}'
    done = cluster.control.kubectl("get", "node", name, "-o", f"jsonpath={path}")
    return done.stdout.strip()


@pytest.fixture
def nodes(cluster: Cluster, tmp_path: Path) -> Iterator[list[Node]]:
    tag = secrets.token_hex(2)
    bridge = f"wp{tag}br"
    made = [Node(cluster, tag, i, tmp_path) for i in (1, 2)]
    try:
        with Netlink(cluster.netns) as cp:
            cp.ensure_bridge(bridge)
            cp.set_link(bridge, up=True)
            cp.ensure_address(bridge, _interface(BRIDGE_ADDRESS))
        for i, node in enumerate(made, 1):
            node.wire(bridge, tag, i)
        yield made
    finally:
        for node in made:
            node.stop()
        for node in made:
            netlink.remove_netns(node.netns)
        with Netlink(cluster.netns) as cp:
            cp.remove_link(bridge)

        async def forget() -> None:
            admin = cluster.admin()
            await delete_nodes(admin, *(n.name for n in made))
            await admin.close()

        cluster.run(forget)


def test_agents_find_each_other_in_the_node_list_and_one_reclaims_a_deleted_node(
    cluster: Cluster, nodes: list[Node], tmp_path: Path
) -> None:
    one, two = nodes

    async def register() -> None:
        admin = cluster.admin()
        for node in nodes:
            await add_node(admin, node.name, node.address)
        await admin.close()

    cluster.run(register)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster.control.server,
            "certificate-authority": str(cluster.account_dir / "ca.crt")}}],
        "users": [{"name": "u", "user": {"tokenFile": str(cluster.account_dir / "token")}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    one.start("--kube-api-host", "172.31.250.1", "--kube-api-port", "6443",
              "--service-account-dir", str(cluster.account_dir))  # fmt: skip
    two.start("--kubeconfig", str(kubeconfig))

    def both_own_space() -> bool:
        return all(set(owners(n)) == {one.name, two.name} for n in nodes)

    wait(both_own_space, "sharing the range", nodes)
    wait(lambda: condition(cluster, one.name) == condition(cluster, two.name) == "False",
         "NetworkUnavailable=False on both Nodes", nodes)  # fmt: skip
    assert "quorum consensus=2" in one.log() and f"advertise {one.address}" in one.log()

    two.stop()

    async def delete_two() -> None:
        admin = cluster.admin()
        await delete_nodes(admin, two.name)
        await admin.close()

    cluster.run(delete_two)
    wait(lambda: set(owners(one)) == {one.name}, "the deleted node's space reclaimed", [one])
    assert owners(one)[one.name] == 65536  # the whole range
    log = one.log()
    assert f"reclaim node {two.name}: lease" in log and "is ours" in log
    assert re.search(rf"reclaim node {two.name}: rmpeer \S+\({two.name}\) took 10\.40\.", log)
