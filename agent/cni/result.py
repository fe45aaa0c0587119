"""What ADD answers and what CHECK expects, shaped by the configuration's cniVersion; and a
delegated IPAM plugin's answer, read in any version's shape. Pure data."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from agent.cni.spec import CniError, Code, NetConf, Request
from overlay import pods

DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")

Routes = tuple[tuple[IPv4Network, IPv4Address | None], ...]


@dataclass(frozen=True)
class Addressing:
    """The pod's address: from our IPAM or a delegated plugin's (abbreviated) result."""

    address: IPv4Interface
    gateway: IPv4Address
    routes: Routes = ()  # besides the default route via the gateway; None: via the gateway
    dns: Mapping[str, Any] | None = None


def parse_ipam_result(doc: Any, plugin: str) -> Addressing:
    """The first IPv4 address of an IPAM result (any cniVersion's shape)."""
    try:
        if isinstance(doc, dict) and "ip4" in doc:  # 0.1.0 / 0.2.0
            ip4 = doc["ip4"]
            entries = [{"address": ip4["ip"], "gateway": ip4.get("gateway")}]
            routes = ip4.get("routes") or []
        else:
            entries = [e for e in doc.get("ips") or [] if e.get("version", "4") == "4"]
            routes = doc.get("routes") or []
        entries = [e for e in entries if ipaddress.ip_interface(e["address"]).version == 4]
        if not entries:
            raise CniError(Code.DELEGATE, f"ipam plugin {plugin} returned no IPv4 address")
        address = IPv4Interface(entries[0]["address"])
        gw = entries[0].get("gateway")
        gateway = IPv4Address(gw) if gw else address.network.network_address + 1
        parsed = tuple(
            (IPv4Network(r["dst"]), IPv4Address(r["gw"]) if r.get("gw") else None)
            for r in routes
            if ipaddress.ip_network(r["dst"]).version == 4
        )
        dns = doc.get("dns") if isinstance(doc.get("dns"), dict) else None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CniError(
            Code.DELEGATE,
            f"ipam plugin {plugin} returned a malformed result",
            f"{type(exc).__name__}: {exc}",
        ) from None
    return Addressing(address, gateway, parsed, dns)


def add_result(
    conf: NetConf, sandbox: str, ifname: str, a: Addressing, attached: pods.Attached
) -> dict[str, Any]:
    """The ADD result in the configuration's cniVersion, after the prevResult's entries."""
    routes = [{"dst": str(dst), **({"gw": str(gw)} if gw else {})} for dst, gw in a.routes]
    if not any(dst == DEFAULT_ROUTE for dst, _ in a.routes):
        routes.insert(0, {"dst": str(DEFAULT_ROUTE), "gw": str(a.gateway)})
    if not conf.at_least("0.3.0"):
        ip4 = {"ip": str(a.address), "gateway": str(a.gateway), "routes": routes}
        return {"cniVersion": conf.version, "ip4": ip4, "dns": dict(a.dns or {})}
    prev = conf.prev_result or {}
    interfaces = list(prev.get("interfaces") or [])
    ours = len(interfaces)
    interfaces += [
        {"name": attached.host, "mac": attached.host_mac},
        {"name": ifname, "mac": attached.pod_mac, "sandbox": sandbox},
    ]
    ip: dict[str, Any] = {} if conf.at_least("1.0.0") else {"version": "4"}
    ip |= {"address": str(a.address), "gateway": str(a.gateway), "interface": ours + 1}
    return {
        "cniVersion": conf.version,
        "interfaces": interfaces,
        "ips": [*(prev.get("ips") or []), ip],
        "routes": [*(prev.get("routes") or []), *routes],
        "dns": dict(a.dns or prev.get("dns") or {}),
    }


def expected_from(conf: NetConf, request: Request, bridge: str, fd: int) -> pods.Expected:
    """What CHECK verifies: our interface in prevResult, its addresses, the IPv4 routes."""
    prev = conf.prev_result or {}
    try:
        interfaces = prev.get("interfaces") or []
        ours = [
            i
            for i, e in enumerate(interfaces)
            if e.get("name") == request.ifname and e.get("sandbox")
        ]
        if not ours:
            raise CniError(Code.CHECK_FAILED, f"prevResult has no interface {request.ifname}")
        addresses = tuple(
            IPv4Interface(e["address"])
            for e in prev.get("ips") or []
            if e.get("interface") == ours[-1] and ipaddress.ip_interface(e["address"]).version == 4
        )
        if not addresses:
            raise CniError(Code.CHECK_FAILED, f"prevResult has no address for {request.ifname}")
        routes = tuple(
            (IPv4Network(r["dst"]), IPv4Address(r["gw"]) if r.get("gw") else None)
            for r in prev.get("routes") or []
            if ipaddress.ip_network(r["dst"]).version == 4
        )
        mac = interfaces[ours[-1]].get("mac") or None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CniError(Code.INVALID_CONFIG, f"prevResult is malformed: {exc}") from None
    return pods.Expected(fd, request.container_id, request.ifname, bridge, addresses, routes, mac)
