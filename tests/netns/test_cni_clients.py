"""The installed CNI plugin (the static binary) driven by real clients on the real kernel: the
reference plugins as the oracle for errors and edge cases, cnitool (libcni), podman with its CNI
backend, a runtime-like storm of parallel ADD/DEL, and a node with no /usr at all (no python3,
no libc). Recipes: ../shared/CNI.md.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent.lab import cni
from overlay import netlink
from overlay.netlink import Netlink
from overlay.netns import NETNS_DIR

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
CNITOOL = ROOT / ".venv" / "bin" / "cnitool"
REFERENCE = Path("/usr/lib/cni")


def netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def pod_ports(lab, i: int = 1) -> list[str]:
    """Interfaces attached to node i's bridge: the host sides of pod veths."""
    with Netlink(lab.plan.node_ns(i)) as nl:
        bridge = nl.link(lab.plan.bridge)
        assert bridge is not None
        return sorted(link.name for link in nl.list_links() if link.master == bridge.index)


def error_of(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode != 0, done.stdout
    return json.loads(done.stdout)


# -- the reference plugins as the oracle -------------------------------------------------------

CASES = {
    # name: (env changes, config transform) -- the same bad input for both plugins
    "missing CNI_IFNAME": ({"CNI_IFNAME": None}, None),
    "unknown command": ({"CNI_COMMAND": "BOGUS"}, None),
    "unsupported cniVersion": ({}, lambda c: {**c, "cniVersion": "9.9.9"}),
    "config not JSON": ({}, lambda c: "not json"),
}


def run_plugin(binary: str, host_ns: str, env: dict[str, str | None], config: object):
    environ = {"PATH": os.environ["PATH"], "CNI_PATH": str(REFERENCE)}
    environ.update({k: v for k, v in env.items() if v is not None})
    for k, v in env.items():
        if v is None:
            environ.pop(k, None)
    stdin = config if isinstance(config, str) else json.dumps(config)
    return subprocess.run(
        ["nsenter", f"--net={netns_path(host_ns)}", binary],
        input=stdin, capture_output=True, text=True, env=environ, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_errors_match_the_reference_bridge_plugin(lab_factory, scratch_netns, tmp_path, case):
    lab = lab_factory(nodes=1, pods=0)
    pod = scratch_netns("pod")
    base_env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "oracle", "CNI_NETNS": netns_path(pod),
                "CNI_IFNAME": "eth0"}  # fmt: skip
    env_change, transform = CASES[case]
    env = {**base_env, **env_change}
    ours = cni.network_config(lab.plan, 1)
    theirs = {"cniVersion": "1.0.0", "name": "wpref", "type": "bridge", "bridge": "wpref0",
              "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                       "dataDir": str(tmp_path / "ipam")}}  # fmt: skip
    if transform:
        ours, theirs = transform(ours), transform(theirs)
    mine = run_plugin(cni.plugin_path(lab.plan, 1), lab.plan.node_ns(1), env, ours)
    ref = run_plugin(str(REFERENCE / "bridge"), lab.plan.node_ns(1), env, theirs)
    assert mine.returncode == ref.returncode == 1
    assert error_of(mine)["code"] == error_of(ref)["code"], (mine.stdout, ref.stdout)
    assert error_of(mine)["msg"]


def test_del_edge_cases_succeed_like_the_reference(lab_factory, scratch_netns) -> None:
    lab = lab_factory(nodes=1, pods=0)
    p = lab.plan
    pod = scratch_netns("pod")
    added = cni.call(p, 1, "ADD", "edge", netns_path(pod))
    assert added.returncode == 0, added.stdout
    for netns in (netns_path(pod), "", netns_path(pod), "/run/netns/wp-never-existed"):
        done = cni.call(p, 1, "DEL", "edge", netns)  # repeated, empty, missing netns
        assert done.returncode == 0 and done.stdout == "", done.stdout
    assert lab.report(1)["ipam"]["used"] == 0


def test_version_with_dummy_env_lists_what_conflists_use(lab_factory) -> None:
    lab = lab_factory(nodes=1, pods=0)
    done = cni.call(lab.plan, 1, "VERSION", "dummy", "dummy", "dummy", config="")
    versions = json.loads(done.stdout)["supportedVersions"]
    assert {"0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(versions)


def test_the_plugin_wires_a_pod_on_a_node_without_usr(lab_factory, scratch_netns) -> None:
    """The runtime's mount namespace without /usr (so without python3, a shell or libc; /bin and
    /lib are links into it on Debian): ADD and DEL work all the same."""
    lab = lab_factory(nodes=1, pods=0)
    pod = scratch_netns("bare")
    environ = {"PATH": "/usr/bin:/bin", "CNI_CONTAINERID": "bare", "CNI_NETNS": netns_path(pod),
               "CNI_IFNAME": "eth0", "CNI_PATH": lab.plan.cni_bin_dir(1)}  # fmt: skip
    bare = (
        'mount -t tmpfs wpbare /usr && [ ! -e /usr/bin/python3 ] && [ ! -e /bin/sh ] && exec "$0"'
    )
    node = f"--net={netns_path(lab.plan.node_ns(1))}"
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bare]
    command = ["nsenter", node, *unshare, cni.plugin_path(lab.plan, 1)]
    stdin = json.dumps(cni.network_config(lab.plan, 1))

    def call(operation: str) -> str:
        env = {**environ, "CNI_COMMAND": operation}
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    address = ipaddress.IPv4Interface(json.loads(call("ADD"))["ips"][0]["address"])
    with Netlink(pod) as inside:
        assert address in inside.list_addresses("eth0")
    assert call("DEL") == ""
    with Netlink(pod) as inside:
        assert inside.link("eth0") is None
    assert lab.report(1)["ipam"]["used"] == 0
    assert pod_ports(lab) == []


# -- cnitool (libcni) --------------------------------------------------------------------------


def cnitool(lab, command: str, pod: str, caps: dict | None = None):
    p = lab.plan
    env = {"PATH": os.environ["PATH"], "NETCONFPATH": p.cni_conf_dir(1),
           "CNI_PATH": f"{p.cni_bin_dir(1)}:{REFERENCE}"}  # fmt: skip
    if caps is not None:
        env["CAP_ARGS"] = json.dumps(caps)
    return subprocess.run(
        ["nsenter", f"--net={netns_path(p.node_ns(1))}", str(CNITOOL), command, "weave-py",
         netns_path(pod)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.skipif(not CNITOOL.exists(), reason="cnitool not built (scripts/setup-test-tools)")
def test_cnitool_add_check_del_through_the_conflist(lab_factory, scratch_netns) -> None:
    lab = lab_factory(nodes=1, pods=0)
    pod = scratch_netns("tool")
    added = cnitool(lab, "add", pod)
    assert added.returncode == 0, added.stdout + added.stderr
    result = json.loads(added.stdout)
    address = ipaddress.IPv4Interface(result["ips"][0]["address"])
    with Netlink(pod) as inside:
        assert address in inside.list_addresses("eth0")
    checked = cnitool(lab, "check", pod)  # libcni hands the cached result as prevResult
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with Netlink(pod) as inside:
        inside.remove_address("eth0", address)
    broken = cnitool(lab, "check", pod)
    assert broken.returncode != 0 and str(address.ip) in broken.stdout + broken.stderr
    for _ in range(2):
        gone = cnitool(lab, "del", pod)
        assert gone.returncode == 0, gone.stdout + gone.stderr
    with Netlink(pod) as inside:
        assert inside.link("eth0") is None
    assert lab.report(1)["ipam"]["used"] == 0


# -- podman with the CNI backend ---------------------------------------------------------------


def podman_env(tmp: Path, lab, i: int) -> dict[str, str]:
    p = lab.plan
    conf = tmp / f"containers-{i}.conf"
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        "[network]\n"
        'network_backend = "cni"\n'
        f'cni_plugin_dirs = ["{p.cni_bin_dir(i)}", "{REFERENCE}"]\n'
        f'network_config_dir = "{p.cni_conf_dir(i)}"\n'
        "[engine]\n"
        'runtime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    return {"PATH": os.environ["PATH"], "CONTAINERS_CONF": str(conf)}


@pytest.fixture
def short_dir(run_id):
    """podman refuses a runroot longer than 50 characters: pytest's tmp_path is too long."""
    path = Path(tempfile.mkdtemp(prefix=f"wp{run_id}", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def podman(tmp: Path, lab, i: int, *args: str, timeout: float = 60):
    storage = tmp / f"s{i}"
    cmd = ["nsenter", f"--net={netns_path(lab.plan.node_ns(i))}", "podman",
           "--root", str(storage / "root"), "--runroot", str(storage / "run"),
           "--storage-driver", "vfs", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=podman_env(tmp, lab, i),
                          timeout=timeout, check=False)  # fmt: skip


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
def test_podman_containers_on_two_nodes_ping_each_other(lab_factory, short_dir, run_id) -> None:
    tmp_path = short_dir
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    subprocess.run(["chroot", str(rootfs), "/bin/busybox", "--install", "-s", "/bin"], check=True)
    lab = lab_factory(nodes=2, pods=0)
    name = f"wp{run_id}srv"
    server = podman(tmp_path, lab, 2, "run", "-d", "--name", name, "--network", "weave-py",
                    "--rootfs", str(rootfs), "/bin/sleep", "120")  # fmt: skip
    try:
        assert server.returncode == 0, server.stderr
        shown = podman(tmp_path, lab, 2, "inspect", name)
        ip = json.loads(shown.stdout)[0]["NetworkSettings"]["Networks"]["weave-py"]["IPAddress"]
        assert ipaddress.IPv4Address(ip) in ipaddress.ip_network("10.244.0.0/16")
        client = podman(tmp_path, lab, 1, "run", "--rm", "--network", "weave-py", "--rootfs",
                        str(rootfs), "/bin/ping", "-c", "3", "-W", "2", ip)  # fmt: skip
        assert client.returncode == 0, client.stdout + client.stderr
        assert "3 packets received" in client.stdout or " 0% packet loss" in client.stdout
    finally:
        podman(tmp_path, lab, 2, "rm", "-f", "-t", "0", name)
    assert lab.report(1)["ipam"]["used"] == 0  # podman's DEL released the client's address
    assert lab.report(2)["ipam"]["used"] == 0


# -- runtime-like load -------------------------------------------------------------------------


def test_two_hundred_pods_eight_at_a_time_leave_nothing(lab_factory, run_id) -> None:
    lab = lab_factory(nodes=1, pods=0)
    p = lab.plan
    names = [f"wp{run_id}s{k}" for k in range(200)]
    addresses: dict[str, str] = {}

    def add(ns: str) -> str:
        netlink.ensure_netns(ns)
        done = cni.call(p, 1, "ADD", ns, netns_path(ns))
        assert done.returncode == 0, done.stdout
        return json.loads(done.stdout)["ips"][0]["address"]

    def delete(ns: str) -> None:
        done = cni.call(p, 1, "DEL", ns, netns_path(ns))
        assert done.returncode == 0, done.stdout
        netlink.remove_netns(ns)

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for ns, address in zip(names, pool.map(add, names), strict=True):
                addresses[ns] = address
            assert len(set(addresses.values())) == 200, "two pods share an address"
            assert lab.report(1)["ipam"]["used"] == 200
            list(pool.map(delete, names))
    finally:
        for ns in names:
            if ns in netlink.list_netns():
                netlink.remove_netns(ns)
    ipam = lab.report(1)["ipam"]
    assert ipam["used"] == 0
    assert pod_ports(lab) == []
    with open(f"{p.node_dir(1)}/state/ipam.json") as f:
        assert json.load(f)["pool"]["allocations"] == []


def test_del_after_a_failed_add_cleans_up(lab_factory, scratch_netns) -> None:
    lab = lab_factory(nodes=1, pods=0)
    pod = scratch_netns("half")
    with Netlink(pod) as inside:
        inside.ensure_bridge("eth0")  # CNI_IFNAME already taken: ADD must fail
    failed = cni.call(lab.plan, 1, "ADD", "half", netns_path(pod))
    assert failed.returncode == 1 and "eth0" in error_of(failed)["msg"] + error_of(failed).get(
        "details", ""
    )
    done = cni.call(lab.plan, 1, "DEL", "half", netns_path(pod))
    assert done.returncode == 0
    assert lab.report(1)["ipam"]["used"] == 0
    assert pod_ports(lab) == []


def test_agent_down_add_fails_fast_and_status_is_not_ready(lab_factory, scratch_netns) -> None:
    lab = lab_factory(nodes=1, pods=0)
    pod = scratch_netns("down")
    assert (
        cni.call(
            lab.plan, 1, "STATUS", config={**cni.network_config(lab.plan, 1), "cniVersion": "1.1.0"}
        ).returncode
        == 0
    )
    lab.stop_agent(1, signal.SIGTERM)
    started = time.monotonic()
    done = cni.call(lab.plan, 1, "ADD", "late", netns_path(pod))
    took = time.monotonic() - started
    error = error_of(done)
    assert error["code"] == 11 and "not running" in error["msg"], error
    assert took < 10, f"ADD took {took:.1f}s with the agent down"  # no hang (generous bound)
    status = cni.call(
        lab.plan, 1, "STATUS", config={**cni.network_config(lab.plan, 1), "cniVersion": "1.1.0"}
    )
    assert error_of(status)["code"] == 50
