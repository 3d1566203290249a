"""Reading a profile: the flow's Config parser (TOML text -> dict).

Kept free of torch and the rest of monollm: Metaflow calls it while parsing the command
line of every `run`, before any step starts.
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


def profile_path(argv: list[str]) -> str:
    """The profile file named on the command line (`--config config PATH`), else the default's."""
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "config":
            return argv[i + 2]
    return "the default profile (config/tiny.toml)"
