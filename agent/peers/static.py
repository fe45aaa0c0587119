"""The static peer source: remote nodes and their blocks from configuration (``--peer``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import StaticPeer
from agent.peers import Member, View
from gossip.identity import name_for
from gossip.secret import Secrets


class StaticPeers:
    """Every configured peer, always; nothing to publish, no connections."""

    kind = "static"

    def __init__(self, peers: tuple[StaticPeer, ...]) -> None:
        members = tuple(
            Member(name_for(p.name), p.name, (p.host, p.port), blocks=p.blocks) for p in peers
        )
        self._view = View(members)

    def view(self) -> View:
        return self._view

    def publish(self, fields: Mapping[str, Any]) -> None:
        pass

    async def run(self, changed: Callable[[], None]) -> None:
        await asyncio.Event().wait()  # nothing changes until the agent stops

    def leave(self) -> None:
        pass

    def connections(self) -> list[dict[str, str]]:
        return []

    def terminations(self) -> int:
        return 0

    def rejections(self) -> Mapping[str, int]:
        return {}

    def accept_secrets(self, secrets: Secrets) -> None:
        pass  # no control connections: nothing proves a secret
