"""Agent configuration: defaults, file < environment < flags, and errors that name the setting."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from agent import config, config_sources
from agent.config import Config, ConfigError, StaticPeer
from overlay import frame

NET = ipaddress.IPv4Network
BLOCK = "10.32.1.0/24"


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config_sources.add_arguments(parser)
    return parser.parse_args(list(argv))


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    return config_sources.load(flags(*argv), env or {})


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "weave.toml"
    path.write_text(text)
    return str(path)


# -- defaults --------------------------------------------------------------------------------


def test_defaults() -> None:
    c = config_sources.load(None, {})
    assert c.node_name == socket.gethostname() == c.nickname
    assert c.ipalloc_range == NET("10.32.0.0/12")
    assert c.pod_block is None and c.peers == () and c.mtu is None
    assert (c.port, c.bind_address) == (6783, "0.0.0.0")
    assert (c.bridge, c.tun) == ("weave", "weave-tun")
    assert c.offload is True
    # A super-packet of the default size must fit one UDP datagram with our headers.
    assert 1024 <= c.gso_max_size <= frame.MAX_RECORD_PACKET
    assert (c.heartbeat_interval, c.heartbeat_slow_interval, c.heartbeat_timeout) == (
        0.5,
        5.0,
        15.0,
    )
    assert (c.http_addr, c.metrics_addr) == ("127.0.0.1:6784", "0.0.0.0:6782")
    assert (c.log_format, c.log_level) == ("text", "info")
    assert c.netns is None


def test_empty_flags_equal_defaults() -> None:
    assert load() == config_sources.load(None, {})


def test_config_is_frozen() -> None:
    c = config_sources.load(None, {})
    with pytest.raises(FrozenInstanceError):
        c.port = 1  # type: ignore[misc]


def test_load_does_not_read_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAVE_PORT", "7000")
    monkeypatch.setenv("HOSTNAME", "from-os-environ")
    c = config_sources.load(None, {})
    assert c.port == 6783
    assert c.node_name == socket.gethostname()


# -- precedence ------------------------------------------------------------------------------


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'port = 7001\nbridge = "br-file"\ntun = "tun-file"\nmtu = 1400\n'
        'log_level = "debug"\noffload = false\n',
    )
    env = {"WEAVE_PORT": "7002", "WEAVE_BRIDGE": "br-env", "WEAVE_MTU": "1300"}
    c = load("--config", path, "--port", "7003", env=env)
    assert c.port == 7003  # flag beats env beats file
    assert c.bridge == "br-env"  # env beats file
    assert c.mtu == 1300
    assert c.tun == "tun-file"  # only the file sets it
    assert c.log_level == "debug"
    assert c.offload is False  # a TOML boolean


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = 7005\n")
    assert load(env={"WEAVE_CONFIG": path}).port == 7005
    other = tmp_path / "other.toml"
    other.write_text("port = 7006\n")
    assert load("--config", str(other), env={"WEAVE_CONFIG": path}).port == 7006


def test_every_field_has_a_working_flag() -> None:
    """Each flag reaches its field (catches a mistyped dest or flag name)."""
    parser = argparse.ArgumentParser()
    config_sources.add_arguments(parser)
    for f in fields(Config):
        flag = f.metadata["flag"]
        assert flag.startswith("--")
        assert parser.parse_args([flag, "x"]).__dict__[f.name] in ("x", ["x"])


def test_env_names_map_one_to_one() -> None:
    envs = [f.metadata["env"] for f in fields(Config) if f.metadata["env"]]
    assert len(envs) == len(set(envs))
    for weave_name in (
        "IPALLOC_RANGE",
        "WEAVE_MTU",
        "WEAVE_HTTP_ADDR",
        "WEAVE_METRICS_ADDR",
        "HOSTNAME",
    ):
        assert weave_name in envs


def test_environment_values() -> None:
    c = load(
        env={
            "HOSTNAME": "node-7",
            "IPALLOC_RANGE": "10.0.0.0/8",
            "WEAVE_POD_BLOCK": "10.9.0.0/24",
            "WEAVE_OFFLOAD": "off",
            "WEAVE_HEARTBEAT_INTERVAL": "0.25",
            "WEAVE_METRICS_ADDR": "",
            "WEAVE_MTU": "",
        }
    )
    assert c.node_name == c.nickname == "node-7"
    assert c.ipalloc_range == NET("10.0.0.0/8")
    assert c.pod_block == NET("10.9.0.0/24")
    assert c.offload is False
    assert c.heartbeat_interval == 0.25
    assert c.metrics_addr == ""  # empty disables the metrics listener
    assert c.mtu is None  # empty means "detect"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        (" Yes ", True),
        ("ON", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_bool_spellings(text: str, value: bool) -> None:
    assert load(env={"WEAVE_OFFLOAD": text}).offload is value
    assert load("--offload", text).offload is value


# -- peers -----------------------------------------------------------------------------------


def test_weave_peers_separators() -> None:
    env = {
        "WEAVE_POD_BLOCK": BLOCK,
        "WEAVE_PEERS": " a@192.0.2.1=10.32.2.0/24;b@192.0.2.2:7000=10.32.3.0/24,10.32.4.0/24 ;"
        "  c@192.0.2.3=10.32.5.0/24\n\td@192.0.2.4=10.32.6.0/24;;",
    }
    c = load(env=env)
    assert c.peers == (
        StaticPeer("a", "192.0.2.1", 6783, (NET("10.32.2.0/24"),)),
        StaticPeer("b", "192.0.2.2", 7000, (NET("10.32.3.0/24"), NET("10.32.4.0/24"))),
        StaticPeer("c", "192.0.2.3", 6783, (NET("10.32.5.0/24"),)),
        StaticPeer("d", "192.0.2.4", 6783, (NET("10.32.6.0/24"),)),
    )
    assert str(c.peers[1]) == "b@192.0.2.2:7000=10.32.3.0/24,10.32.4.0/24"


def test_repeated_peer_flag_replaces_environment() -> None:
    c = load(
        "--peer",
        "x@192.0.2.8=10.32.8.0/24",
        "--peer",
        "y@192.0.2.9:6000=10.32.9.0/24",
        "--pod-block",
        BLOCK,
        env={"WEAVE_PEERS": "a@192.0.2.1=10.32.2.0/24"},
    )
    assert [(p.name, p.host, p.port) for p in c.peers] == [
        ("x", "192.0.2.8", 6783),
        ("y", "192.0.2.9", 6000),
    ]


def test_peers_from_file_list(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'pod_block = "10.32.1.0/24"\n'
        'peers = ["a@192.0.2.1=10.32.2.0/24", "b@192.0.2.2=10.32.3.0/24"]\n',
    )
    assert [p.name for p in load("--config", path).peers] == ["a", "b"]


def test_empty_peers_variable() -> None:
    assert load(env={"WEAVE_PEERS": " ; "}).peers == ()


@pytest.mark.parametrize(
    "peer",
    [
        "nobody",
        "a@192.0.2.1",  # no block
        "a@host.example=10.32.2.0/24",  # not an address
        "a@300.0.2.1=10.32.2.0/24",
        "a@192.0.2.1=10.32.2.1/24",  # host bits set
        "a@192.0.2.1=banana",
        "a@192.0.2.1:port=10.32.2.0/24",
    ],
)
def test_bad_peer_names_field_and_value(peer: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(env={"WEAVE_PEERS": peer})
    assert "peers" in str(exc.value) and "WEAVE_PEERS" in str(exc.value)
    assert peer in str(exc.value)


def test_peer_overlapping_own_block() -> None:
    with pytest.raises(ConfigError) as exc:
        load("--pod-block", BLOCK, "--peer", "a@192.0.2.1=10.32.0.0/16")
    message = str(exc.value)
    assert message.startswith("peers:")
    assert "a@192.0.2.1:6783=10.32.0.0/16" in message and BLOCK in message


# -- validation errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "field", "value"),
    [
        (["--mtu", "575"], {}, "mtu", "575"),
        (["--mtu", "65001"], {}, "mtu", "65001"),
        ([], {"WEAVE_MTU": "big"}, "mtu", "big"),
        (["--port", "0"], {}, "port", "0"),
        (["--port", "65536"], {}, "port", "65536"),
        ([], {"WEAVE_PORT": "http"}, "port", "http"),
        (["--bridge", "a-very-long-name"], {}, "bridge", "a-very-long-name"),
        (["--tun", "bad/name"], {}, "tun", "bad/name"),
        (["--tun", ""], {}, "tun", "''"),
        (["--bridge", "same", "--tun", "same"], {}, "tun", "same"),
        (["--pod-block", "10.64.0.0/24"], {}, "pod_block", "10.64.0.0/24"),
        (["--pod-block", "10.32.1.0/31"], {}, "pod_block", "10.32.1.0/31"),
        (["--pod-block", "10.32.1.1/24"], {}, "pod_block", "10.32.1.1/24"),
        ([], {"IPALLOC_RANGE": "10.32.0.0/33"}, "ipalloc_range", "10.32.0.0/33"),
        (["--offload", "maybe"], {}, "offload", "maybe"),
        ([], {"WEAVE_UDP_GSO": "2"}, "udp_gso", "2"),
        (["--gso-max-size", "100"], {}, "gso_max_size", "100"),
        (["--heartbeat-interval", "0"], {}, "heartbeat_slow_interval", "5.0"),
        (["--heartbeat-slow-interval", "0.1"], {}, "heartbeat_slow_interval", "0.1"),
        (["--heartbeat-timeout", "5"], {}, "heartbeat_timeout", "5.0"),
        (["--heartbeat-timeout", "soon"], {}, "heartbeat_timeout", "soon"),
        (["--log-format", "xml"], {}, "log_format", "xml"),
        (["--log-level", "loud"], {}, "log_level", "loud"),
        (["--http-addr", "localhost"], {}, "http_addr", "localhost"),
        ([], {"WEAVE_METRICS_ADDR": "0.0.0.0:99999"}, "metrics_addr", "0.0.0.0:99999"),
        (["--metrics-addr", "host:"], {}, "metrics_addr", "host:"),
    ],
)
def test_errors_name_field_and_value(
    argv: list[str], env: dict[str, str], field: str, value: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load(*argv, env=env)
    message = str(exc.value)
    assert message.startswith(field), message
    assert value in message, message


def test_conversion_error_says_where_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^port \(from WEAVE_PORT\): bad value 'x'"):
        load(env={"WEAVE_PORT": "x"})
    with pytest.raises(ConfigError, match=r"^port \(from --port\): bad value 'y'"):
        load("--port", "y")
    path = toml(tmp_path, 'port = "z"\n')
    with pytest.raises(ConfigError, match=rf"^port \(from {re.escape(path)}:port\): bad value 'z'"):
        load("--config", path)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = 7000\nprot = 7001\nzzz = 1\n")
    with pytest.raises(ConfigError) as exc:
        load("--config", path)
    assert path in str(exc.value)
    assert "prot, zzz" in str(exc.value)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as exc:
        load("--config", missing)
    assert missing in str(exc.value) and os.strerror(2) in str(exc.value)
    with pytest.raises(ConfigError, match=r"config file .*: Is a directory"):
        load("--config", str(tmp_path))


def test_malformed_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, "port = = 1\n")
    with pytest.raises(ConfigError, match=f"config file {re.escape(path)}"):
        load("--config", path)


@pytest.mark.parametrize(
    ("argv", "env", "toml_text", "field"),
    [
        pytest.param(
            ["--peer", "a@192.0.2.1:70000=10.33.0.0/24"],
            {},
            None,
            "peers",
            id="peer-port-70000",
        ),
        pytest.param(
            [],
            {},
            "port = true\n",
            "port",
            id="toml-bool-as-port",
        ),
        pytest.param(
            [],
            {},
            "port = 6783.9\n",
            "port",
            id="toml-float-as-port",
        ),
        pytest.param(
            ["--reconcile-interval", "-1"],
            {},
            None,
            "reconcile_interval",
            id="reconcile-interval-negative",
        ),
    ],
)
def test_values_that_should_be_rejected(
    tmp_path: Path, argv: list[str], env: dict[str, str], toml_text: str | None, field: str
) -> None:
    if toml_text is not None:
        argv = [*argv, "--config", toml(tmp_path, toml_text)]
    with pytest.raises(ConfigError, match=f"^{field}"):
        load(*argv, env=env)


# -- reference -------------------------------------------------------------------------------


def test_reference_lists_every_field() -> None:
    text = config.reference()
    lines = text.splitlines()
    assert lines[0].startswith("| setting |")
    assert len(lines) == 2 + len(fields(Config))
    for f, line in zip(fields(Config), lines[2:], strict=True):
        assert line.startswith(f"| `{f.name}` |")
        if f.metadata["env"]:
            assert f"`{f.metadata['env']}`" in line
        assert f"`{f.metadata['flag']}`" in line
        assert f.metadata["doc"] in line
    assert "| `6783` |" in text and "`10.32.0.0/12`" in text


def test_split_hostport() -> None:
    assert config.split_hostport("127.0.0.1:6784") == ("127.0.0.1", 6784)
    assert config.split_hostport(":6782") == ("0.0.0.0", 6782)
    assert config.split_hostport("[::1]:80") == ("[::1]", 80)
    assert config.split_hostport("6784") is None
    assert config.split_hostport("h:-1") is None
    assert config.split_hostport("h:65536") is None


# -- IPAM --------------------------------------------------------------------------------------


def test_ipam_defaults_and_init_count() -> None:
    c = load()
    assert c.pod_block is None and c.ipalloc_block == 24 and c.ipam_timeout == 10.0
    assert config.init_count(c) == 1  # no seeds: a lone node seeds its range
    assert config.init_count(load("--seed", "192.0.2.1", "--seed", "192.0.2.2")) == 3
    assert config.init_count(load(env={"IPALLOC_INIT": "consensus=5"})) == 5


@pytest.mark.parametrize(
    ("argv", "env", "field"),
    [
        (["--ipalloc-block", "31"], {}, "ipalloc_block"),
        (["--ipalloc-block", "8", "--ipalloc-range", "10.32.0.0/12"], {}, "ipalloc_block"),
        ([], {"IPALLOC_INIT": "consensus=0"}, "ipalloc_init"),
        ([], {"IPALLOC_INIT": "seed=a,b"}, "ipalloc_init"),
        (["--ipam-timeout", "0"], {}, "ipam_timeout"),
        (["--peer", "a@192.0.2.1=10.32.2.0/24"], {}, "pod_block"),
    ],
)
def test_bad_ipam_settings_name_the_field(argv: list[str], env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}"):
        load(*argv, env=env)


def test_no_fastdp_is_a_bare_flag_a_flag_with_a_value_and_a_variable() -> None:
    parser = argparse.ArgumentParser()
    config_sources.add_arguments(parser)
    load = config_sources.load
    assert load(parser.parse_args(["--no-fastdp"])).no_fastdp is True
    assert load(parser.parse_args(["--no-fastdp", "false"])).no_fastdp is False
    assert load(None, {"WEAVE_NO_FASTDP": "true"}).no_fastdp is True
    assert load(None, {}).no_fastdp is False


def test_vxlan_device_must_be_a_name_of_its_own() -> None:
    for name in ("weave", "x" * 16):
        with pytest.raises(ConfigError, match="vxlan_device"):
            config_sources.load(None, {"WEAVE_VXLAN_DEVICE": name})
