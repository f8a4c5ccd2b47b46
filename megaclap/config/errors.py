"""ConfigError: a flag has a bad value. Raised before any collective, so every rank stops with
the same one-line message that names the flag to change (exit code 2 at the entry point)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A flag has a bad value; the message names the flag to change."""


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok."""
    if not ok:
        raise ConfigError(message)
