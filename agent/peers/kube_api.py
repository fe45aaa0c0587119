"""The Kubernetes API as the agent uses it: every call it makes, the RBAC each needs, and the
client it makes them with (lightkube's ``AsyncClient``).

``RBAC`` is the one table of what the agent may do; deploy/daemonset.yaml's ClusterRole and
Role grant exactly that (tests/kube/test_rbac.py compares the two), and ``KubeApi`` checks
every call against it before making it, so a call the table lacks fails in every test rather
than as 403 Forbidden in a cluster. Only APIs stable from Kubernetes 1.20 to today: v1 Node and
coordination.k8s.io/v1 Lease.

Configuration: out of cluster from ``kubeconfig``; in cluster from ``kube_api_host``/``_port``
(kubelet's KUBERNETES_SERVICE_* variables) and the service account's directory, whose token
file is read again when the apiserver refuses it (bound tokens rotate). Nothing here reads the
environment: lightkube is given a complete configuration and ``trust_env=False``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node

from agent.config import Config
from agent.peers.nodes import NodeInfo

REQUEST_TIMEOUT = 10.0  # seconds for one request (a watch's reads are not bounded by it)
FIELD_MANAGER = "weave-py"
CONDITION_REASON = "WeavePyIsUp"  # as Weave's "WeaveIsUp"
# What a failed call raises: an answer other than 2xx (ApiError), or no answer at all.
API_ERRORS = (httpx2.HTTPError, OSError)


@dataclass(frozen=True)
class Rule:
    """One RBAC rule: ``verbs`` on ``resource`` (``nodes/status`` for a subresource) of API
    group ``group``; ``namespaced`` rules belong in a Role of the agent's namespace."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    namespaced: bool = False


RBAC: tuple[Rule, ...] = (
    Rule("", "nodes", ("get", "list", "watch")),  # peers, podCIDR, the quorum
    Rule("", "nodes/status", ("patch",)),  # NetworkUnavailable=False
    Rule("coordination.k8s.io", "leases", ("create", "delete"), namespaced=True),  # reclaims
)


def permission(resource: type, verb: str) -> tuple[str, str, str]:
    """(group, resource, verb) of a lightkube resource class and a verb."""
    info = resource._api_info  # type: ignore[attr-defined]
    plural = f"{info.plural}/{info.action}" if info.action else info.plural
    return info.resource.group, plural, verb


def allowed(resource: type, verb: str) -> bool:
    """Whether ``RBAC`` grants ``verb`` on ``resource``."""
    group, plural, _ = permission(resource, verb)
    return any(r.group == group and r.resource == plural and verb in r.verbs for r in RBAC)


class Client(Protocol):
    """What ``KubeApi`` needs of lightkube's ``AsyncClient`` (a test passes a recording fake)."""

    def list(self, *args: Any, **kw: Any) -> Any: ...
    def watch(self, *args: Any, **kw: Any) -> Any: ...
    async def get(self, *args: Any, **kw: Any) -> Any: ...
    async def patch(self, *args: Any, **kw: Any) -> Any: ...
    async def create(self, *args: Any, **kw: Any) -> Any: ...
    async def delete(self, *args: Any, **kw: Any) -> Any: ...
    async def close(self) -> None: ...


class KubeApi:
    """The agent's calls, each checked against ``RBAC``; ``namespace`` holds the Leases."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def _may(self, resource: type, verb: str) -> None:
        if not allowed(resource, verb):
            raise PermissionError(f"{permission(resource, verb)} is not in the RBAC table")

    async def list_nodes(self) -> tuple[list[NodeInfo], str]:
        """Every Node, and the resourceVersion of the list."""
        self._may(Node, "list")
        listing = self.client.list(Node)
        nodes = [node_info(n) async for n in listing]
        return nodes, listing.resourceVersion

    async def watch_nodes(
        self, version: str, timeout: int
    ) -> AsyncIterator[tuple[str, NodeInfo, str]]:
        """Changes to Nodes after ``version`` as (type, node, resourceVersion); the server ends
        the watch after ``timeout`` seconds. ApiError 410 when ``version`` is too old."""
        self._may(Node, "watch")
        events = self.client.watch(Node, resource_version=version, server_timeout=timeout)
        async for kind, node in events:
            yield kind, node_info(node), node.metadata.resourceVersion

    async def get_node(self, name: str) -> NodeInfo:
        """One Node (ApiError 404 when there is none)."""
        self._may(Node, "get")
        return node_info(await self.client.get(Node, name))

    async def set_network_available(self, name: str, now: datetime.datetime) -> None:
        """Node ``name``'s NetworkUnavailable condition to False (routes are in place)."""
        self._may(Node.Status, "patch")
        stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": "NetworkUnavailable", "status": "False",
                     "reason": CONDITION_REASON, "message": "weave-py is running on this node",
                     "lastTransitionTime": stamp, "lastHeartbeatTime": stamp}  # fmt: skip
        await self.client.patch(Node.Status, name, {"status": {"conditions": [condition]}})

    async def take_lease(self, lease: str, node: str, holder: str, now: datetime.datetime) -> bool:
        """Create Lease ``lease`` held by ``holder`` for Node ``node``; False when it exists
        (409: another agent created it first)."""
        self._may(Lease, "create")
        meta = ObjectMeta(name=lease, namespace=self.namespace, labels={"app": "weave-py"},
                          annotations={"weave-py/reclaims-node": node})  # fmt: skip
        spec = LeaseSpec(holderIdentity=holder, acquireTime=now, renewTime=now)
        try:
            await self.client.create(Lease(metadata=meta, spec=spec), namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        return True

    async def delete_lease(self, lease: str) -> None:
        """Delete Lease ``lease`` (one already gone is no error)."""
        self._may(Lease, "delete")
        try:
            await self.client.delete(Lease, lease, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()


def node_info(node: Any) -> NodeInfo:
    """What the agent reads of a Node: name, uid, InternalIP and podCIDR."""
    addresses = (node.status.addresses or []) if node.status else []
    internal = next((a.address for a in addresses if a.type == "InternalIP"), None)
    cidr = node.spec.podCIDR if node.spec else None
    pod_cidr = ipaddress.IPv4Network(cidr) if cidr and ":" not in cidr else None
    return NodeInfo(node.metadata.name, node.metadata.uid or "", internal, pod_cidr)


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of a failed call (an error event in a watch carries one too)."""
    if isinstance(exc, ApiError):
        return exc.status.code
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code
    return None


def why(exc: BaseException) -> str:
    """A failed call in a log line: the status and the apiserver's message, or the error."""
    if isinstance(exc, ApiError):
        return f"{exc.status.code} {exc.status.reason}: {exc.status.message}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- configuration --------------------------------------------------------------------------


def in_cluster(config: Config) -> bool:
    """Whether the agent runs in a pod with a service account (kubelet's variables set)."""
    token = Path(config.service_account_dir) / "token"
    return bool(config.kube_api_host) and os.path.exists(token)


def enabled(config: Config) -> bool:
    """Whether the agent uses the Kubernetes API (``kubernetes``: on, off or auto)."""
    if config.kubernetes != "auto":
        return config.kubernetes == "on"
    return bool(config.kubeconfig) or in_cluster(config)


def kube_config(config: Config) -> KubeConfig:
    """The client configuration: the kubeconfig file when one is set, else in-cluster."""
    if config.kubeconfig:
        return KubeConfig.from_file(config.kubeconfig)
    if not config.kube_api_host:
        raise ValueError("kube_api_host (KUBERNETES_SERVICE_HOST) is not set and no kubeconfig is")
    account = Path(config.service_account_dir)
    host = config.kube_api_host
    host = f"[{host}]" if ":" in host else host
    cluster = Cluster(server=f"https://{host}:{config.kube_api_port}",
                      certificate_auth=str(account / "ca.crt"))  # fmt: skip
    return KubeConfig.from_one(cluster=cluster, user=User(token_file=str(account / "token")))


def connect(config: Config) -> KubeApi:
    """A client for ``config`` (no request is made yet). The HTTP library's line per request
    stays out of the agent's log; failures are logged where they are handled."""
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    client = AsyncClient(kube_config(config), timeout=httpx2.Timeout(REQUEST_TIMEOUT),
                         field_manager=FIELD_MANAGER, trust_env=False)  # fmt: skip
    return KubeApi(client, config.kube_namespace)
