"""What a CNI request says and what ADD answers, as pure data (agent/cni/spec.py and
agent/cni/result.py): every malformed input is one CniError with the spec's code."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.cni import result, spec
from agent.cni.spec import CniError, Code

MAC = "0a:58:0a:20:00:05"


def conf(version: str = "1.0.0", **extra: Any) -> str:
    return json.dumps({"cniVersion": version, "name": "weave", "type": "weave-py", **extra})


# -- configuration, environment, arguments -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", Code.DECODE),
        ("[1, 2]", Code.DECODE),
        ("[" * 100_000, Code.DECODE),
        (conf("0.5.0"), Code.INCOMPATIBLE_VERSION),
        (conf(cniVersion=1), Code.INVALID_CONFIG),
        (json.dumps({"cniVersion": "1.0.0", "type": "weave-py"}), Code.INVALID_CONFIG),
        (conf(name="-leading-dash"), Code.INVALID_CONFIG),
        (json.dumps({"cniVersion": "1.0.0", "name": "weave"}), Code.INVALID_CONFIG),
        (conf(mtu="1400"), Code.INVALID_CONFIG),
        (conf(mtu=True), Code.INVALID_CONFIG),
        (conf(mtu=20), Code.INVALID_CONFIG),
        (conf(ipam="host-local"), Code.INVALID_CONFIG),
        (conf(ipam={"type": "../evil"}), Code.INVALID_CONFIG),
        (conf(runtimeConfig=[]), Code.INVALID_CONFIG),
        (conf(runtimeConfig={"mac": "01:00:5e:00:00:01"}), Code.INVALID_CONFIG),  # multicast
        (conf(runtimeConfig={"mac": "nonsense"}), Code.INVALID_CONFIG),
        (conf(prevResult="x"), Code.INVALID_CONFIG),
        (conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": 1}]}), Code.INVALID_CONFIG),
    ],
)
def test_config_errors_carry_the_spec_code(text: str, code: Code) -> None:
    with pytest.raises(CniError) as info:
        spec.parse_config(text)
    assert info.value.code == code


def test_config_tolerates_unknown_keys_and_defaults_the_version() -> None:
    parsed = spec.parse_config(
        json.dumps(
            {
                "name": "weave",
                "type": "weave-py",
                "capabilities": {"portMappings": True},
                "args": {"cni": {"labels": []}},
                "somethingNew": 1,
                "ipam": {"type": "weave-py"},
                "mtu": 1400,
            }
        )
    )
    assert parsed.version == "0.1.0"  # libcni's default
    assert parsed.ipam_type is None
    assert parsed.mtu == 1400


def test_unsupported_version_names_the_supported_ones() -> None:
    with pytest.raises(CniError) as info:
        spec.parse_config(conf("2.0.0"))
    assert "1.1.0" in info.value.details and "0.1.0" in info.value.details


def test_runtime_config_keys_match_case_insensitively() -> None:
    runtime = {"MAC": MAC.upper(), "PortMappings": [{"HostPort": 80, "ContainerPort": 8080}]}
    parsed = spec.parse_config(conf(runtimeConfig=runtime | {"Bandwidth": {}, "DNS": {}}))
    assert parsed.mac == MAC


def test_cni_args_in_any_order() -> None:
    a = spec.parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;;MAC=0a:58:0a:20:00:05;X=a=b")
    b = spec.parse_args("X=a=b;MAC=0a:58:0a:20:00:05;K8S_POD_NAME=web;IgnoreUnknown=1;")
    assert a == b == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "MAC": MAC, "X": "a=b"}


def test_ipam_result_of_every_shape() -> None:
    old = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.7/16", "routes": [{"dst": "0.0.0.0/0"}]}}
    a = result.parse_ipam_result(old, "x")
    assert (str(a.address), str(a.gateway), a.routes) == (
        "10.1.0.7/16",
        "10.1.0.1",  # no gateway given: the subnet's first address
        ((result.DEFAULT_ROUTE, None),),
    )
    with pytest.raises(CniError) as info:
        result.parse_ipam_result({"ips": [{"address": "not-an-address"}]}, "x")
    assert info.value.code == Code.DELEGATE


@pytest.mark.parametrize(
    ("version", "allowed"),
    [("0.3.1", {"ADD", "DEL"}), ("0.4.0", {"ADD", "DEL", "CHECK"}), ("1.1.0", set(spec.COMMANDS))],
)
def test_commands_each_version_allows(version: str, allowed: set[str]) -> None:
    parsed = spec.parse_config(conf(version))
    assert {c for c in spec.COMMANDS if parsed.allows(c)} == allowed


def test_the_agent_serves_every_command_but_version() -> None:
    """(The plugin's versions, codes and limits are compared with spec's in
    tests/agent/test_cni_plugin.py, on the built binary.)"""
    assert set(spec.COMMANDS) == {"ADD", "DEL", "CHECK", "GC", "STATUS"}
