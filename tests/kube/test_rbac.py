"""RBAC: the table of the calls the agent makes (agent/peers/kube_api.py) is exactly what
deploy/daemonset.yaml grants, and every call the code makes goes through it: a recording fake
of lightkube's client fails on any call the table lacks."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube.models.core_v1 import NodeAddress, NodeSpec, NodeStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node

from agent.config import Config
from agent.peers.kube_api import RBAC, KubeApi, Rule, permission
from agent.peers.startup import prepare

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "daemonset.yaml"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def manifest() -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc:
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}  # fmt: skip


def table(namespaced: bool) -> set[tuple[str, str, str]]:
    return {(r.group, r.resource, v) for r in RBAC if r.namespaced == namespaced for v in r.verbs}


def test_the_cluster_role_grants_exactly_the_table_s_cluster_wide_calls() -> None:
    (role,) = manifest()["ClusterRole"]
    assert granted(role) == table(namespaced=False)


def test_the_role_grants_exactly_the_table_s_calls_in_the_agent_s_namespace() -> None:
    (role,) = manifest()["Role"]
    assert granted(role) == table(namespaced=True)
    assert role["metadata"]["namespace"] == Config().kube_namespace


def test_both_are_bound_to_the_daemon_set_s_service_account() -> None:
    docs = manifest()
    (account,) = docs["ServiceAccount"]
    (daemonset,) = docs["DaemonSet"]
    name, namespace = account["metadata"]["name"], account["metadata"]["namespace"]
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert daemonset["metadata"]["namespace"] == namespace
    for kind, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        (binding,) = docs[kind]
        assert binding["roleRef"]["kind"] == role
        assert binding["roleRef"]["name"] == docs[role][0]["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                        "namespace": namespace}]  # fmt: skip


class Listing:
    def __init__(self, items: list[Node]) -> None:
        self.items = items
        self.resourceVersion = "7"

    async def __aiter__(self) -> AsyncIterator[Node]:
        for item in self.items:
            yield item


class RecordingClient:
    """lightkube's AsyncClient as far as the agent uses it; every call must be in the table."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.calls: list[tuple[str, str, str]] = []

    def _record(self, resource: type, verb: str) -> None:
        call = permission(resource, verb)
        group, plural, _ = call
        rules = [r for r in RBAC if (r.group, r.resource) == (group, plural)]
        assert rules and verb in rules[0].verbs, f"{call} is not in the RBAC table"
        self.calls.append(call)

    def list(self, res: type, **kw: Any) -> Listing:
        self._record(res, "list")
        return Listing(self.nodes)

    async def _events(self) -> AsyncIterator[tuple[str, Node]]:
        for node in self.nodes:
            yield "MODIFIED", node

    def watch(self, res: type, **kw: Any) -> AsyncIterator[tuple[str, Node]]:
        self._record(res, "watch")
        return self._events()

    async def get(self, res: type, name: str, **kw: Any) -> Node:
        self._record(res, "get")
        return next(n for n in self.nodes if n.metadata and n.metadata.name == name)

    async def patch(self, res: type, name: str, obj: Any, **kw: Any) -> None:
        self._record(res, "patch")

    async def create(self, obj: Any, **kw: Any) -> Any:
        self._record(type(obj), "create")
        return obj

    async def delete(self, res: type, name: str, **kw: Any) -> None:
        self._record(res, "delete")

    async def close(self) -> None:
        pass


def node(name: str, address: str, cidr: str) -> Node:
    status = NodeStatus(addresses=[NodeAddress(type="InternalIP", address=address)])
    meta = ObjectMeta(name=name, uid=f"uid-{name}", resourceVersion="5")
    return Node(metadata=meta, spec=NodeSpec(podCIDR=cidr), status=status)


@pytest.fixture
def client() -> RecordingClient:
    return RecordingClient([node("a", "192.168.1.7", "10.244.1.0/24"),
                            node("b", "192.168.1.8", "10.244.2.0/24")])  # fmt: skip


async def test_every_call_the_agent_makes_is_in_the_table_and_each_is_used(
    client: RecordingClient,
) -> None:
    api = KubeApi(client, "kube-system")
    nodes, version = await api.list_nodes()
    assert [n.name for n in nodes] == ["a", "b"] and version == "7"
    assert [e[1].name async for e in api.watch_nodes(version, 60)] == ["a", "b"]
    assert (await api.get_node("b")).address == "192.168.1.8"
    await api.set_network_available("a", NOW)
    assert await api.take_lease("weave-py-reclaim.b.uid", "b", "a", NOW)
    await api.delete_lease("weave-py-reclaim.b.uid")
    assert set(client.calls) == table(False) | table(True)  # none granted in vain


async def test_start_up_calls_only_through_the_table(client: RecordingClient) -> None:
    config = dataclasses.replace(
        Config(),
        node_name="a",
        kubernetes="on",
        ipam_mode="kube",
        ipalloc_range=Config().ipalloc_range.supernet(new_prefix=8),
    )
    prepared = await prepare(config, KubeApi(client, "kube-system"))
    assert str(prepared.pod_block) == "10.244.1.0/24" and prepared.seeds == ("192.168.1.8",)
    assert {c[2] for c in client.calls} == {"list", "get"}


def test_a_call_outside_the_table_is_refused_before_it_is_made() -> None:
    api = KubeApi(RecordingClient([]), "kube-system")
    with pytest.raises(PermissionError):
        api._may(Node, "delete")
    assert Rule("", "nodes", ("delete",)) not in RBAC
