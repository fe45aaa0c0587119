"""Start-up in Kubernetes: the configuration completed from one list of the Nodes, before IPAM
is built (agent/daemon.py's ``main``).

What configuration left open is filled in: gossip IPAM's quorum (``IPALLOC_INIT`` becomes
``consensus=<Node count>``, so N // 2 + 1 Nodes' agents seed the ring), kube IPAM's pod block
(the own Node's spec.podCIDR, waited for while the controller-manager has not assigned it),
the address to advertise (the own Node's InternalIP) and the first dial targets (the other
Nodes' InternalIPs). What configuration does set wins. The list is retried, with back-off,
until the apiserver answers and the own Node is registered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import replace
from typing import Any

from agent.config import Config
from agent.config_rules import validate
from agent.peers.kube_api import API_ERRORS, KubeApi, connect, why
from agent.peers.nodes import Backoff, NodeTable

log = logging.getLogger("weave-py.kube")
Net = ipaddress.IPv4Network


async def prepare(config: Config, api: KubeApi | None = None) -> Config:
    """``config`` completed from one list of the Nodes (see the module's docstring)."""
    api = api or connect(config)
    try:
        table = NodeTable(config.node_name, config.port)
        await _first_list(api, table)
        changes: dict[str, Any] = {}
        if not config.ipalloc_init:
            changes["ipalloc_init"] = f"consensus={table.count}"
        if config.ipam_mode == "kube" and config.pod_block is None:
            changes["pod_block"] = await _pod_cidr(api, config.node_name)
        mine = table.mine
        if not config.advertise_address and mine is not None and mine.address:
            changes["advertise_address"] = mine.address
        if not config.seeds:
            changes["seeds"] = tuple(host for host, _ in table.targets())
    finally:
        await api.close()
    prepared = replace(config, **changes)
    validate(prepared)
    log.info("list nodes: %d node(s), quorum %s, pod block %s, advertise %s", table.count,
             prepared.ipalloc_init, prepared.pod_block or "from gossip IPAM",
             prepared.advertise_address or "from the underlay")  # fmt: skip
    return prepared


async def _first_list(api: KubeApi, table: NodeTable) -> None:
    """List until it works and the own Node is in it."""
    backoff = Backoff()
    while True:
        try:
            table.listed(*await api.list_nodes())
            if table.mine is not None:
                return
            reason = f"node {table.own} is not registered yet"
        except API_ERRORS as exc:
            reason = why(exc)
        delay = backoff.failed()
        log.warning("list nodes: %s; retry in %.1fs", reason, delay)
        await asyncio.sleep(delay)


async def _pod_cidr(api: KubeApi, name: str) -> Net:
    """The own Node's podCIDR, waiting until the controller-manager assigns one."""
    backoff = Backoff(cap=10.0)
    while True:
        try:
            node = await api.get_node(name)
            if node.pod_cidr is not None:
                return node.pod_cidr
            reason = "no podCIDR assigned yet (kube-controller-manager --allocate-node-cidrs)"
        except API_ERRORS as exc:
            reason = why(exc)
        delay = backoff.failed()
        log.info("wait for podCIDR: node %s: %s; retry in %.1fs", name, reason, delay)
        await asyncio.sleep(delay)
