"""Errors shared by every module (no imports: any module can raise them)."""


class ConfigError(ValueError):
    """A profile that cannot run; the message names the key and what is allowed."""
