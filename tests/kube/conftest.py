"""A real control plane for the Kubernetes tests: etcd and kube-apiserver (plus the
controller-manager, which assigns podCIDRs, and the scheduler) from scripts/build-kubernetes's
binaries, in a scratch network namespace of their own. One per test session; skipped without
root or the binaries.

Everything that talks to the apiserver runs inside that namespace: ``Cluster.run(coro)`` runs a
coroutine on a thread that entered it. The agent's side gets a service account, ``weave-py`` in
kube-system, bound by the RBAC objects of deploy/daemonset.yaml and nothing else, so a call
the manifest does not grant fails the test with 403.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.models.core_v1 import NodeAddress, NodeSpec, NodeStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node

from agent.config import Config
from agent.lab.kube.control import ControlPlane
from agent.lab.kube.pki import Pki
from overlay import netlink
from overlay.netdev import LinkChange
from overlay.netlink import Netlink
from overlay.netns import run_in_netns

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
BIN = Path("/var/cache/weave-py/kubernetes-v1.20.2/bin")
APISERVER_IP = "172.31.250.1"
MANIFEST = ROOT / "deploy" / "daemonset.yaml"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@dataclasses.dataclass
class Cluster:
    """The running control plane and the agent's credentials."""

    netns: str
    control: ControlPlane
    account_dir: Path  # token, ca.crt, namespace: as kubelet mounts them in a pod

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` on an event loop of a thread inside the cluster's namespace."""
        return run_in_netns(self.netns, lambda: asyncio.run(_awaited(fn)))

    def agent_config(self, node_name: str, **changes: Any) -> Config:
        """An agent's configuration in cluster: the service account, the apiserver's address."""
        return dataclasses.replace(
            Config(), node_name=node_name, kubernetes="on", kube_api_host=APISERVER_IP,
            kube_api_port=6443, service_account_dir=str(self.account_dir), **changes,
        )  # fmt: skip

    def admin(self) -> AsyncClient:
        """A client with every right (system:masters); make it inside ``run``."""
        path = self.control.pki.kubeconfig("admin", self.control.server)
        return AsyncClient(KubeConfig.from_file(path), trust_env=False)

    def kubectl(self, *args: str) -> str:
        """kubectl as the admin; its output (fails the test on an error)."""
        done = self.control.kubectl(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


async def _awaited(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


def node_object(name: str, pod_cidr: str | None = None) -> Node:
    """A Node as kubelet would register it (the status is patched in by ``add_node``)."""
    spec = NodeSpec(podCIDR=pod_cidr, podCIDRs=[pod_cidr] if pod_cidr else None)
    return Node(metadata=ObjectMeta(name=name), spec=spec)


async def add_node(admin: AsyncClient, name: str, address: str) -> Node:
    """Create Node ``name`` with InternalIP ``address`` (as kubelet does: object, then status)."""
    node = await admin.create(node_object(name))
    status = NodeStatus(addresses=[NodeAddress(type="InternalIP", address=address)])
    await admin.patch(Node.Status, name, {"status": status.to_dict()})
    return node


async def delete_nodes(admin: AsyncClient, *names: str) -> None:
    """Delete Nodes, those already gone included."""
    for name in names:
        try:
            await admin.delete(Node, name)
        except Exception as exc:  # a 404 is the one expected
            if getattr(getattr(exc, "status", None), "code", None) != 404:
                raise


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if not (BIN / "kube-apiserver").exists():
        pytest.skip(f"no Kubernetes binaries in {BIN} (bash scripts/build-kubernetes)")
    netns = f"wp{secrets.token_hex(3)}-kcp"
    directory = tmp_path_factory.mktemp("kube")
    netlink.ensure_netns(netns)
    control = ControlPlane(netns, APISERVER_IP, directory / "cp", Pki(directory / "pki"), BIN)
    try:
        _loopback(netns)
        control.start()
        cluster = Cluster(netns, control, directory / "serviceaccount")
        _service_account(cluster)
        yield cluster
    finally:
        control.stop()
        netlink.remove_netns(netns)
        shutil.rmtree(directory, ignore_errors=True)


def _loopback(netns: str) -> None:
    """The namespace's loopback up, with the apiserver's address on it."""
    with Netlink(netns) as nl:
        lo = nl.link("lo")
        assert lo is not None
        nl.set_link_index(lo.index, LinkChange(up=True))
        nl.add_address_index(lo.index, ipaddress.IPv4Interface(f"{APISERVER_IP}/32"))


def _service_account(cluster: Cluster) -> None:
    """The manifest's RBAC objects applied; a token of its service account, with the CA and
    the namespace, where an in-cluster agent finds them."""
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    rbac = [d for d in documents if d["kind"] in RBAC_KINDS]
    path = cluster.control.directory / "rbac.yaml"
    path.write_text(yaml.safe_dump_all(rbac))
    cluster.kubectl("apply", "-f", str(path))
    token = _token(cluster)
    account = cluster.account_dir
    account.mkdir(parents=True, exist_ok=True)
    (account / "token").write_text(token)
    (account / "namespace").write_text("kube-system")
    shutil.copy(cluster.control.pki.ca_cert, account / "ca.crt")


def _token(cluster: Cluster) -> str:
    """A token of kube-system/weave-py: a TokenRequest posted with the cluster's own kubectl
    (1.20's has no ``create token``); retried while the account is new."""
    request = cluster.control.directory / "token-request.json"
    request.write_text(
        json.dumps(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            }
        )
    )
    path = "/api/v1/namespaces/kube-system/serviceaccounts/weave-py/token"
    for _ in range(50):
        done = cluster.control.kubectl("create", "--raw", path, "-f", str(request))
        if done.returncode == 0:
            token: str = json.loads(done.stdout)["status"]["token"]
            return token
        time.sleep(0.2)
    raise AssertionError(f"no token for weave-py: {done.stderr}")
