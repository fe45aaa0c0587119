"""Which peer source a configuration asks for: static peers when configured, else the gossip
mesh joined through the seeds, with the Nodes as its dial targets when the Kubernetes API is
used."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Set
from typing import Any

from agent.config import Config
from agent.peers import PeerSource, kube_api
from agent.peers.gossip import GossipPeers
from agent.peers.kube import KubePeers, Rmpeer
from agent.peers.static import StaticPeers
from gossip.identity import Identity
from gossip.secret import Secrets

Net = ipaddress.IPv4Network


def peer_source(
    config: Config,
    identity: Identity,
    incarnation: int,
    address: str | None,
    claim: dict[str, Any],
    routed: Callable[[], Set[Net]],
    rmpeer: Rmpeer,
    secrets: Secrets,
) -> PeerSource:
    """The source for ``config``. ``address``: where this node is reached when configuration
    does not say (the underlay's); ``routed``: the destinations routed in the kernel now;
    ``rmpeer``: how a dead peer's space is taken over (reclaims of deleted Nodes);
    ``secrets``: what peers must prove (agent/secrets.py reads them once)."""
    if config.peers:
        return StaticPeers(config.peers)
    address = config.advertise_address or address
    if address is None:
        raise ValueError(
            "advertise_address (WEAVE_ADVERTISE_ADDR) is not set and no seed route shows "
            "which address to use"
        )
    endpoint = (address, config.port)
    gossip = GossipPeers(identity, incarnation, endpoint, (config.bind_address, config.port),
                         config.seeds, config.conn_limit, claim, secrets)  # fmt: skip
    if not kube_api.enabled(config):
        return gossip
    reclaim = rmpeer if config.pod_block is None else None  # kube IPAM: nothing to reclaim
    return KubePeers(gossip, kube_api.connect(config), config.node_name, routed, reclaim)
