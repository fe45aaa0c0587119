"""The lab's container runtime: pods are added and deleted through the installed CNI plugin.

Each node has its own CNI bin and conf directories (``weave-py install-cni`` output: the
plugin binary built by scripts/build-plugin, and the conflist) and its agent its own CNI
socket. A call runs the installed plugin binary the way a runtime does: in the node's
("host's") network namespace, with the CNI_* environment and the network's plugin config on
stdin (the conflist's first plugin, with the list's name and cniVersion, as libcni sends it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from typing import Any

from agent.cni import install as install_cni
from agent.lab.plan import LabPlan
from overlay import netlink
from overlay.netlink import Netlink
from overlay.netns import NETNS_DIR

REFERENCE_PLUGINS = "/usr/lib/cni"


def install(plan: LabPlan, i: int) -> list[str]:
    """Node i's plugin and conflist, as ``weave-py install-cni`` writes them; the paths."""
    return install_cni.install(plan.cni_bin_dir(i), plan.cni_conf_dir(i), plan.cni_socket(i))


def network_config(plan: LabPlan, i: int) -> dict[str, Any]:
    """What a runtime sends our plugin: its entry of the conflist plus name and cniVersion."""
    with open(os.path.join(plan.cni_conf_dir(i), install_cni.CONFLIST_NAME)) as f:
        conflist = json.load(f)
    first = conflist["plugins"][0]
    return {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **first}


def plugin_path(plan: LabPlan, i: int) -> str:
    return os.path.join(plan.cni_bin_dir(i), install_cni.PLUGIN_TYPE)


def call(
    plan: LabPlan,
    i: int,
    command: str,
    container_id: str = "",
    netns: str = "",
    ifname: str = "eth0",
    config: dict[str, Any] | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run the plugin on node i; ``netns`` is a path (e.g. /run/netns/NAME) or empty."""
    conf = network_config(plan, i) if config is None else config
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    environ = {**_environment(plan, i, command, container_id, netns, ifname), **(env or {})}
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{plan.node_ns(i)}", plugin_path(plan, i)],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
    )


def _environment(
    plan: LabPlan, i: int, command: str, container_id: str, netns: str, ifname: str
) -> dict[str, str]:
    """The variables a runtime sets: CNI_* and its own PATH."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": f"{plan.cni_bin_dir(i)}:{REFERENCE_PLUGINS}",
    }


def add_pod(plan: LabPlan, i: int, j: int) -> ipaddress.IPv4Interface:
    """Pod j of node i: its namespace, attached through the node's CNI plugin (ADD) as a
    container runtime does it; the address the plugin answered."""
    ns = plan.pod_ns(i, j)
    netlink.ensure_netns(ns)
    done = call(plan, i, "ADD", container_id=ns, netns=f"{NETNS_DIR}/{ns}")
    if done.returncode != 0:
        raise OSError(f"node {i}: CNI ADD of {ns}: {done.stdout.strip() or done.stderr}")
    with Netlink(ns) as inside:  # the runtime's part (CNI's loopback plugin)
        inside.set_link("lo", up=True)
    result = json.loads(done.stdout)
    return ipaddress.IPv4Interface(result["ips"][0]["address"])
