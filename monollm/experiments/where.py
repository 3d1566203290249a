"""Runs kept by configuration: `--where KEY=VALUE` of monollm.experiments.compare, on each run's resolved_config."""
from __future__ import annotations

import tomllib

from monollm.schema import flatten


def parse_where(items) -> dict:
    """{"KEY": value} from "KEY=VALUE" strings; VALUE is read as a TOML value (0.002, true,
    "nonneg", [1, 2]), else taken as the text itself (monotonic.mode=nonneg needs no quotes)."""
    out = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--where {item!r}: give KEY=VALUE, e.g. monotonic.mode=nonneg")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out


def _same_value(a, b) -> bool:
    """Equal as configuration values: true is not 1, 2 is 2.0, a list equals a tuple."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def filter_where(runs: list, where: dict) -> list:
    """The runs whose resolved_config has every `where` key at its value (keys dotted, as
    `schema.flatten` writes them). Raises ValueError for a key no run's configuration has (or
    one that names a table) and LookupError when no run is left."""
    if not where:
        return runs
    flat = {id(r): flatten(getattr(getattr(r, "data", None), "resolved_config", None) or {}) for r in runs}
    keys = set().union(*flat.values()) if flat else set()
    for key in where:
        if key not in keys:
            inside = sorted(k for k in keys if k.startswith(key + "."))
            raise ValueError(f"--where {key}: " + (f"'{key}' is a table; name one of its settings, e.g. {inside[0]}"
                                                   if inside else f"unknown key '{key}': no selected run's "
                                                   "resolved_config has it"))
    kept = [r for r in runs if all(k in flat[id(r)] and _same_value(flat[id(r)][k], v) for k, v in where.items())]
    if not kept:
        raise LookupError(f"no run left after --where {', '.join(f'{k}={v!r}' for k, v in where.items())} "
                          f"(of {len(runs)} selected)")
    return kept
