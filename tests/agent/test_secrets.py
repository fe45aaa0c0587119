"""Membership secrets from the configuration: the password, the file of secrets, and the
errors that stop a start without showing the secret; then two gossip sources on 127.0.0.1
through the real mesh driver, with the same, rotated, different or missing secrets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import config_rules, config_sources
from agent.config import Config, ConfigError
from agent.peers.gossip import GossipPeers
from agent.secrets import load_secrets
from gossip.identity import new_identity
from gossip.secret import MAX_SECRET, MAX_SECRETS, Secrets

PASSWORD = "correct horse battery staple"


def with_(**changes: str) -> Config:
    return dataclasses.replace(Config(), **changes)


def test_no_password_is_open_membership() -> None:
    secrets = load_secrets(Config())
    assert secrets == Secrets.none()
    assert not secrets.enabled


def test_the_password_is_the_one_secret() -> None:
    secrets = load_secrets(with_(password=PASSWORD))
    assert secrets.accepted == (PASSWORD.encode(),)
    assert secrets.enabled and secrets.current == PASSWORD.encode()


def test_the_file_gives_the_secrets_in_order(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_bytes(b"  new-secret \r\n\n old-secret\n")
    secrets = load_secrets(with_(password_file=str(path)))
    assert secrets.accepted == (b"new-secret", b"old-secret")
    assert secrets.current == b"new-secret"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "no secret in it"),
        (b"\n  \n", "no secret in it"),
        (b"same\nsame\n", "listed twice"),
        (b"".join(b"s%d\n" % i for i in range(MAX_SECRETS + 1)), f"at most {MAX_SECRETS}"),
        (b"x" * (MAX_SECRET + 1), f"longer than {MAX_SECRET} bytes"),
    ],
)
def test_a_bad_file_stops_the_start(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "password"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=why) as caught:
        load_secrets(with_(password_file=str(path)))
    assert str(path) in str(caught.value)


def test_a_missing_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(ConfigError, match=f"password_file {path}: No such file"):
        load_secrets(with_(password_file=str(path)))


def test_the_variables_and_the_flag() -> None:
    env = {"WEAVE_PASSWORD": PASSWORD}
    assert config_sources.load(None, env).password == PASSWORD
    env = {"WEAVE_PASSWORD_FILE": "/run/secrets/weave/password"}
    assert config_sources.load(None, env).password_file == "/run/secrets/weave/password"


def test_password_and_file_together_are_refused() -> None:
    env = {"WEAVE_PASSWORD": PASSWORD, "WEAVE_PASSWORD_FILE": "/etc/weave-password"}
    with pytest.raises(ConfigError, match="password_file") as caught:
        config_sources.load(None, env)
    assert PASSWORD not in str(caught.value)


def test_a_password_too_long_is_refused_without_showing_it() -> None:
    assert config_rules.MAX_PASSWORD == MAX_SECRET
    long = "p" * (MAX_SECRET + 1)
    with pytest.raises(ConfigError, match="password: longer than") as caught:
        config_sources.load(None, {"WEAVE_PASSWORD": long})
    assert long not in str(caught.value)


def test_the_secret_never_shows_in_repr() -> None:
    c = with_(password=PASSWORD)
    assert PASSWORD not in repr(c)
    secrets = load_secrets(c)
    assert PASSWORD not in repr(secrets) and repr(secrets) == "Secrets(1 accepted)"


# -- two gossip sources on 127.0.0.1, through the real mesh driver ----------------------------


class Node:
    """A gossip source on 127.0.0.1 holding ``secrets``, run until ``stop``."""

    def __init__(self, nickname: str, secrets: Secrets, seed: Node | None = None) -> None:
        here = ("127.0.0.1", free_port())
        seeds = (f"127.0.0.1:{seed.port}",) if seed else ()
        claim = {"blocks": (), "meta": b""}
        self.port = here[1]
        self.source = GossipPeers(new_identity(nickname), 1, here, here, seeds, 8, claim, secrets)
        self.task = asyncio.create_task(self.source.run(lambda: None))

    def states(self) -> list[str]:
        return [c["state"] for c in self.source.connections()]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def run_pair(
    ours: tuple[bytes, ...], theirs: tuple[bytes, ...], check: Callable[[Node, Node], bool]
) -> tuple[Node, Node]:
    """Node ``a`` (``ours``) and node ``b`` (``theirs``, dialling ``a``) until ``check``."""
    a = Node("node-a", Secrets(ours))
    b = Node("node-b", Secrets(theirs), seed=a)
    try:
        await until(lambda: check(a, b))
    finally:
        await a.stop()
        await b.stop()
    return a, b


def joined(a: Node, b: Node) -> bool:
    members = len(a.source.view().members) == len(b.source.view().members) == 1
    return members and a.states() == b.states() == ["established"]


async def test_nodes_with_the_same_password_join(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = b"s3cr3t-0xfeed"
    await run_pair((secret,), (secret,), joined)
    line = "start mesh: peers must prove the password (1 accepted); communication between peers "
    assert caplog.messages.count(line + "is encrypted") == 2
    assert not any("s3cr3t" in m for m in caplog.messages)


async def test_a_rolling_change_joins_old_and_new(caplog: pytest.LogCaptureFixture) -> None:
    await run_pair((b"old",), (b"new", b"old"), joined)


async def test_a_different_password_never_joins(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="weave-py.mesh")

    def refused(a: Node, b: Node) -> bool:
        text = "\n".join(caplog.messages)
        return text.count("uses a different password") >= 2 and "failed" in b.states()

    a, b = await run_pair((b"pw",), (b"other",), refused)
    assert a.source.view().members == b.source.view().members == ()
    (failed,) = [c for c in b.source.connections() if c["state"] == "failed"]
    assert failed["detail"].endswith("(node-a) uses a different password")
    assert not any(c["state"] == "established" for c in a.source.connections())


async def test_no_password_on_one_side_never_joins(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="weave-py.mesh")

    def refused(a: Node, b: Node) -> bool:
        text = "\n".join(caplog.messages)
        return "has no password but we do" in text and "has a password but we do not" in text

    a, b = await run_pair((b"pw",), (), refused)
    assert a.source.view().members == b.source.view().members == ()
    assert (
        "start mesh: no password, any host that reaches the port may join; communication "
        "between peers is unencrypted" in caplog.messages
    )


def test_a_password_needs_gossip() -> None:
    env = {"WEAVE_PASSWORD": PASSWORD, "WEAVE_PEERS": "node-2@192.0.2.2=10.32.2.0/24",
           "WEAVE_POD_BLOCK": "10.32.1.0/24"}  # fmt: skip
    with pytest.raises(ConfigError, match="static peers") as caught:
        config_sources.load(None, env)
    assert PASSWORD not in str(caught.value)
