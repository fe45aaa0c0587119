"""Shared fixtures. Network-namespace tests need root; each run gets unique ``wp`` names and
removes everything it made, also when the test fails."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from overlay import netlink

if TYPE_CHECKING:
    from agent.lab.kube.cluster import Cluster

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    for item in items:
        if "netns" in item.keywords and not IS_ROOT:
            item.add_marker(skip)


@pytest.fixture
def run_id() -> str:
    """A unique lowercase tag: names made by this test start with ``wp<run_id>``."""
    return "t" + secrets.token_hex(3)


@pytest.fixture
def scratch_netns(run_id: str) -> Iterator[Callable[[str], str]]:
    """Factory of throwaway namespaces ``wp<run_id>-<suffix>``, all removed afterwards."""
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"wp{run_id}-{suffix}"
        netlink.ensure_netns(name)
        made.append(name)
        return name

    yield make
    for name in made:
        netlink.remove_netns(name)


@pytest.fixture
def lab_factory(
    run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Lab]]:
    """Build labs (``lab_factory(nodes=2, pods=1)``); every one is torn down afterwards."""
    labs: list[Lab] = []

    def make(
        nodes: int = 2,
        pods: int = 1,
        start: int | None = None,
        agent_args: tuple[str, ...] = (),
        gossip: bool = True,
        line: bool = False,
    ) -> Lab:
        name = f"{run_id}{len(labs)}"
        directory = str(tmp_path_factory.mktemp(f"lab-{name}"))
        lab = Lab(LabPlan(name, nodes, pods, directory), agent_args, gossip, line)
        labs.append(lab)
        lab.up(start=start)
        return lab

    yield make
    for lab in labs:
        lab.down()
        leftovers = [ns for ns in netlink.list_netns() if ns.startswith(lab.plan.prefix + "-")]
        assert not leftovers, f"lab teardown left {leftovers}"
        shutil.rmtree(lab.plan.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real Kubernetes cluster shared by the tests that need one (tests/kube): 3 nodes, one
    echo pod on each, weave-py from deploy/daemonset.yaml; removed afterwards, and checked to
    leave no namespace behind."""
    from agent.lab.kube import images, rollout, session
    from agent.lab.kube.cluster import Cluster
    from agent.lab.kube.plan import BIN_DIR, KubePlan

    if not IS_ROOT:
        pytest.skip("needs root for network namespaces")
    if not (BIN_DIR / "kubelet").exists():
        pytest.skip(f"no Kubernetes binaries in {BIN_DIR} (bash scripts/build-kubernetes)")
    plan = KubePlan("k" + secrets.token_hex(3), 3, 1, str(tmp_path_factory.mktemp("kube-lab")))
    cluster = Cluster(plan)
    try:
        reference, archive = session.agent_image()
        cluster.up([images.archive(plan.images_dir), archive])
        rollout.apply_weave(cluster, reference)
        rollout.apply_workload(cluster)
        session.wait_deployed(cluster)
        yield cluster
    finally:
        cluster.down()
        leftovers = [ns for ns in netlink.list_netns() if ns.startswith(plan.prefix + "-")]
        assert not leftovers, f"cluster lab teardown left {leftovers}"
