"""Links in pyroute2's terms, for ``overlay.netlink``: the RTM_NEWLINK attributes of the seam's
new links and link changes (``overlay.netdev``), and the ``Link`` a link message reads as.

Nothing here sends a request; the attribute names are pyroute2's (``vxlan_id``, ``state``...),
which it turns into IFLA_* attributes, a veth's peer and a port's bridge data nested.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from overlay.netdev import Bridge, Link, LinkChange, NewLink, Veth, Vxlan, VxlanInfo

IFF_UP = 1
BR_HAIRPIN_MODE = 1  # IFLA_BRPORT_MODE

Message = Any  # a pyroute2 ifinfmsg


def new_link(new: NewLink) -> dict[str, Any]:
    """The RTM_NEWLINK attributes of ``new``."""
    if isinstance(new, Bridge):
        return {"ifname": new.name, "kind": "bridge"}
    if isinstance(new, Veth):
        return _new_veth(new)
    return _new_vxlan(new)


def _new_vxlan(new: Vxlan) -> dict[str, Any]:
    request: dict[str, Any] = {"ifname": new.name, "kind": "vxlan", "vxlan_id": new.vni,
                               "vxlan_local": str(new.local), "vxlan_port": new.port,
                               "vxlan_learning": int(new.learning)}  # fmt: skip
    if new.remote is not None:
        request["vxlan_group"] = str(new.remote)  # a unicast "group" is the remote
    if new.mac is not None:
        request["address"] = new.mac
    if new.mtu is not None:
        request["mtu"] = new.mtu
    return request


def _new_veth(new: Veth) -> dict[str, Any]:
    peer: dict[str, Any] = {"ifname": new.peer}
    request: dict[str, Any] = {"ifname": new.name, "kind": "veth", "peer": peer}
    if new.peer_netns is not None:
        peer["net_ns_fd"] = new.peer_netns
    if new.mtu is not None:
        request["mtu"] = peer["mtu"] = new.mtu
    if new.master is not None:
        request["master"] = new.master
    if new.up:
        request["state"] = "up"
    if new.mac is not None:
        request["address"] = new.mac
    if new.peer_mac is not None:
        peer["address"] = new.peer_mac
    if new.peer_gso_max_size is not None:
        peer["gso_max_size"] = new.peer_gso_max_size
    return request


def change(change: LinkChange) -> dict[str, Any]:
    """The RTM_NEWLINK attributes that set what ``change`` names."""
    out: dict[str, Any] = {}
    if change.mtu is not None:
        out["mtu"] = change.mtu
    if change.up is not None:
        out["state"] = "up" if change.up else "down"
    if change.master is not None:
        out["master"] = change.master
    if change.gso_max_size is not None:
        out["gso_max_size"] = change.gso_max_size
    if change.mac is not None:
        out["address"] = change.mac
    if change.hairpin is not None:  # the port's side of its bridge: "bridge_slave" data
        port = [("IFLA_BRPORT_MODE", BR_HAIRPIN_MODE if change.hairpin else 0)]
        out["IFLA_LINKINFO"] = {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"),
                                          ("IFLA_INFO_SLAVE_DATA", {"attrs": port})]}  # fmt: skip
    return out


def read_link(msg: Message) -> Link:
    """The ``Link`` an RTM_NEWLINK message (a dump's or a get's) describes."""
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    bridged = info is not None and info.get("IFLA_INFO_SLAVE_KIND") == "bridge"
    port = info.get("IFLA_INFO_SLAVE_DATA") if bridged else None
    return Link(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        kind=kind or "",
        mtu=msg.get("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        master=msg.get("IFLA_MASTER") or 0,
        gso_max_size=msg.get("IFLA_GSO_MAX_SIZE") or 0,
        mac=msg.get("IFLA_ADDRESS") or "",
        hairpin=bool(port is not None and port.get("IFLA_BRPORT_MODE") == BR_HAIRPIN_MODE),
        vxlan=_vxlan_info(info.get("IFLA_INFO_DATA")) if kind == "vxlan" else None,
    )


def _vxlan_info(data: Message | None) -> VxlanInfo | None:
    if data is None:
        return None
    local = data.get("IFLA_VXLAN_LOCAL")
    return VxlanInfo(
        vni=data.get("IFLA_VXLAN_ID") or 0,
        local=IPv4Address(local) if local else None,
        port=data.get("IFLA_VXLAN_PORT") or 0,
        learning=bool(data.get("IFLA_VXLAN_LEARNING")),
    )
