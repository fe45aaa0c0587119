"""Membership secrets from the configuration: the password, the file of secrets, and the
errors that stop a start without showing the secret."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent import config_rules, config_sources
from agent.config import Config, ConfigError
from agent.secrets import load_secrets
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
