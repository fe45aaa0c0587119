"""The membership secrets of a configuration: ``password`` or the lines of ``password_file``.

Read once at start-up. A file that cannot be read, holds no secret, or breaks the rules of
gossip/secret.py's ``Secrets`` stops the start with a ``ConfigError`` that names the file and
what is wrong, never the secret itself.
"""

from __future__ import annotations

from agent.config import Config, ConfigError
from gossip.secret import MAX_SECRET, MAX_SECRETS, SecretError, Secrets

MAX_FILE = MAX_SECRETS * (MAX_SECRET + 2) + 4096  # bytes read from password_file at most


def load_secrets(config: Config) -> Secrets:
    """The node's accepted secrets, current first; ``Secrets.none()`` when none is configured.
    The stretched keys are computed here, at start-up, not in a handshake."""
    if config.password:
        secrets = _secrets([config.password.encode()], "password")
    elif config.password_file:
        secrets = _secrets(
            _read_lines(config.password_file), f"password_file {config.password_file}"
        )
    else:
        return Secrets.none()
    secrets.keys()
    return secrets


def _read_lines(path: str) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"password_file {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise ConfigError(f"password_file {path}: larger than {MAX_FILE} bytes")
    lines = [line.strip() for line in data.splitlines()]
    secrets = [line for line in lines if line]
    if not secrets:
        raise ConfigError(f"password_file {path}: no secret in it (empty or blank lines only)")
    return secrets


def _secrets(accepted: list[bytes], where: str) -> Secrets:
    try:
        return Secrets(tuple(accepted))
    except SecretError as exc:
        raise ConfigError(f"{where}: {exc}") from None
