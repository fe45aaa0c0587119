"""Who may hold a peer's name among our connections (sans-IO): the rule the mesh applies when a
second connection claims a name a connection already holds.

Without a secret a handshake proves nothing about a name: a uid is public (every record shows
it), a nickname and a HELLO are whatever the sender writes. So a name is tied to the connection
that holds it while that connection lives, never to what a newcomer claims:

- The holder is live: the newcomer is refused ("refuse"; the mesh counts it as name_in_use),
  whatever its uid -- even the holder's own.
- The holder has been silent for the silence timeout (its peer keeps connections alive and
  nothing came for that long: a frozen or vanished process): the newcomer takes the name
  ("take"; the mesh closes the holder as silent). A restarted peer whose old connection never
  closed is thus back within about the silence timeout; one whose old connection closed is back
  at once, since a closed holder holds nothing.
- Both ends dialled each other at once: the newcomer has the holder's uid, comes from the
  holder's host, and the holder came up less than the settle interval ago ("settle": the mesh's
  tie-break keeps the same connection at both ends). Past that interval, or from another host,
  it is refused like any other claim.

With a secret the handshake binds the name to the session (gossip/handshake.py) and these
rules still hold on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["refuse", "take", "settle"]


@dataclass(frozen=True)
class Origin:
    """What we know of where one established connection came from."""

    label: str  # how refusals and log lines name it: "address|name(nickname)"
    uid: int | None = None  # the uid its handshake gave
    host: str | None = None  # the address it came from (accepted) or went to (dialled)
    up_at: float = float("-inf")  # when it was established


def claim(
    holder: Origin,
    newcomer: Origin,
    silent: float,
    silence_timeout: float,
    settle_interval: float,
) -> Verdict:
    """The verdict on ``newcomer`` claiming the name ``holder`` holds, the holder silent for
    ``silent`` seconds (0 when its peer does not keep connections alive) at the newcomer's
    ``up_at`` (see the module rules)."""
    if silent >= silence_timeout:
        return "take"
    simultaneous = (
        holder.uid is not None and newcomer.uid == holder.uid
        and holder.host is not None and newcomer.host == holder.host
        and newcomer.up_at - holder.up_at < settle_interval
    )  # fmt: skip
    return "settle" if simultaneous else "refuse"
