"""The membership secrets of a configuration: ``password`` or the lines of ``password_file``.

Read at start-up, and again whenever the file changes while the agent runs
(agent/secret_watch.py). A file that cannot be read, holds no secret, or breaks the rules of
gossip/secret.py's ``Secrets`` is a ``ConfigError`` that names the file and what is wrong,
never the secret itself: at start-up it stops the start, later it changes nothing.
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
        secrets = parse_secrets(read_secrets_file(config.password_file), config.password_file)
    else:
        return Secrets.none()
    secrets.keys()
    return secrets


def read_secrets_file(path: str) -> bytes:
    """The content of the secrets file at ``path`` (at most ``MAX_FILE`` bytes); a
    ``ConfigError`` when it cannot be read or is larger."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"password_file {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise ConfigError(f"password_file {path}: larger than {MAX_FILE} bytes")
    return data


def parse_secrets(data: bytes, path: str) -> Secrets:
    """The secrets in a file's content ``data``: one a line, surrounding blanks and empty lines
    ignored, current first. A ``ConfigError`` naming ``path`` when they are unusable; the
    stretched keys are not computed here."""
    lines = [line.strip() for line in data.splitlines()]
    secrets = [line for line in lines if line]
    if not secrets:
        raise ConfigError(f"password_file {path}: no secret in it (empty or blank lines only)")
    return _secrets(secrets, f"password_file {path}")


def _secrets(accepted: list[bytes], where: str) -> Secrets:
    try:
        return Secrets(tuple(accepted))
    except SecretError as exc:
        raise ConfigError(f"{where}: {exc}") from None
