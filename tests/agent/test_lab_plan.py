"""The lab's names and agent command lines (no namespaces built): the VXLAN device each node's
agent gets, per-node extra arguments, and ``lab up --no-fastdp-nodes``."""

from __future__ import annotations

import argparse

import pytest

from agent import cli
from agent.lab import run
from agent.lab.lab import Lab
from agent.lab.plan import LabPlan

IFNAMSIZ = 15  # the kernel's longest link name


def test_the_vxlan_device_is_the_labs_and_fits_a_link_name() -> None:
    plan = LabPlan("abcdefghij", 3, 2, "/tmp/unused")
    assert plan.vxlan == "wpabcdefghijvx"
    assert plan.vxlan.startswith(plan.prefix) and len(plan.vxlan) <= IFNAMSIZ
    assert len({plan.vxlan, plan.bridge, plan.tun}) == 3


def test_every_agent_gets_the_vxlan_device_and_only_its_own_extra_arguments() -> None:
    plan = LabPlan("x1", 3, 1, "/tmp/unused")
    lab = Lab(plan, agent_args=("--log-level", "debug"), node_args={3: ["--no-fastdp"]})
    for i in (1, 2, 3):
        command = lab.agent_command(i)
        at = command.index("--vxlan-device")
        assert command[at + 1] == "wpx1vx"
        assert command[-2:] == (["debug", "--no-fastdp"] if i == 3 else ["--log-level", "debug"])
        assert ("--no-fastdp" in command) == (i == 3)


def test_node_arguments_changed_later_apply_to_the_next_start() -> None:
    lab = Lab(LabPlan("x2", 2, 1, "/tmp/unused"), node_args={2: ["--no-fastdp"]})
    lab.node_args[2] = ()
    assert "--no-fastdp" not in lab.agent_command(2)


def test_no_fastdp_nodes_parse_as_a_comma_list() -> None:
    assert cli._node_list("3") == (3,)
    assert cli._node_list("1,3") == (1, 3)
    with pytest.raises(argparse.ArgumentTypeError):
        cli._node_list("one")


def test_a_no_fastdp_node_outside_the_lab_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.up("x3", 3, 1, "/tmp/unused-wp-lab-x3", no_fastdp=(4,)) == 2
    assert "no node 4" in capsys.readouterr().err


def test_the_cli_refuses_no_fastdp_nodes_for_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "up", "--kubernetes", "--no-fastdp-nodes", "2"]) == 2
    assert "--no-fastdp-nodes" in capsys.readouterr().err
