"""The one error type for bad input: a config key, its value, and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input, reported as one line: `key=value: what is allowed`."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")
