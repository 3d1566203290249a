"""Reading a profile on the flow's command line: the Config parser (TOML text -> dict) and the
resources its decorators ask for.

Kept free of torch: Metaflow calls both while parsing the command line of every `run`, before
any step starts. A bad profile stops the command with one line (a MetaflowException), not
Metaflow's internal-error traceback.
"""
from __future__ import annotations

import re
import sys
import tomllib


def parse(text: str) -> dict:
    """The profile's TOML as a dict; invalid TOML stops the command with one line naming the
    file, line and column (Metaflow would print an internal error and a traceback)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        from metaflow.exception import MetaflowException

        where = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        place = f", line {where[1]}, column {where[2]}" if where else ""
        reason = re.sub(r"\s*\(at .*\)$", "", str(err))
        raise MetaflowException(f"invalid TOML in {profile_path(sys.argv)}{place}: {reason}") from None


def step_resources(raw: dict, train: bool = False, step: str = "") -> dict:
    """monollm.config.step_resources (every [resources] default applied) for the flow's
    @resources and @retry; a bad [resources] value stops the command with its ConfigError."""
    from monollm import config

    try:
        return config.step_resources(raw, train, step)
    except config.ConfigError as err:
        from metaflow.exception import MetaflowException

        raise MetaflowException(f"{profile_path(sys.argv)}: {err}") from None


def profile_path(argv: list[str]) -> str:
    """The profile file named on the command line (`--config config PATH`), else the default's."""
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "config":
            return argv[i + 2]
    return "the default profile (config/tiny.toml)"
