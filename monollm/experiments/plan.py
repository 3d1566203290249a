"""A sweep's plan: its file, the grid of cells it expands to, and what each (cell, seed) needs.

A sweep file names a profile, seeds and a grid of config keys (monollm.experiments.sweep runs it):

    name = "attribution"
    profile = "../tiny.toml"          # relative to the sweep file
    seeds = [0, 1, 2]
    [grid]
    "monotonic.mode" = ["nonneg", "sign_frozen", "abs_init_free"]
    [set]                             # optional: the same value in every cell
    "attacks" = ["hotflip"]

Every key is checked against the profile schema (monollm.config) and every cell is loaded with
the project's own loader before any run starts. `plan` decides, from records of earlier runs,
which (cell, seed) pairs are done (skip), failed (resume) or new (run); it takes plain records,
so it needs no Metaflow.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass

from monollm import config
from monollm.experiments.compare import OPERATIONAL, config_differences
from monollm.constants import MAX_SEED
from monollm.schema import flatten, join

SWEEP_KEYS = ("name", "profile", "seeds", "grid", "set")
NAME = re.compile(r"[A-Za-z0-9_.-]+")


class SweepError(ValueError):
    """A sweep file or grid that cannot run; the message names the key."""


@dataclass(frozen=True)
class Sweep:
    """A parsed, checked sweep file."""
    name: str
    """Names the sweep's folder and its runs' tag `sweep:<name>`."""
    profile: str
    """Absolute path of the profile every cell starts from."""
    seeds: tuple[int, ...]
    """Seeds each cell runs with (an empty file list: the profile's own seed)."""
    grid: dict
    """Dotted config key -> tuple of values, in the file's order; the first value of a key is
    the one its other values are contrasted with."""
    fixed: dict
    """Dotted config key -> value set in every cell (the file's [set] table)."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: the profile with the grid's values (and [set]) applied."""
    name: str
    """"key=value" for every grid key, joined by ","; file- and tag-safe."""
    values: tuple
    """((key, value), ...) in grid order."""
    raw: dict = dataclasses.field(compare=False, repr=False)
    """The cell's profile as a TOML-shaped dict."""


@dataclass(frozen=True)
class RunRecord:
    """What the plan needs to know of an earlier run of the sweep."""
    id: str
    successful: bool
    config: dict | None
    """The run's resolved_config (None: it failed before `start` stored one)."""
    run: object = dataclasses.field(default=None, compare=False, repr=False)
    """The Client Run, where there is one (for the report)."""


@dataclass(frozen=True)
class Task:
    """What to do for one (cell, seed): "skip" (done: `runs` are its successful runs, oldest
    first), "resume" (`runs[0]` is the newest failed run of it) or "run" (nothing to go on)."""
    cell: Cell
    seed: int
    action: str
    runs: tuple = ()


def check_key(key: str) -> None:
    """Raise SweepError unless `key` is one setting (a leaf) of the profile schema, e.g.
    "monotonic.mode" or "attack.hotflip.max_flips"; the seed is set by `seeds`, not the grid."""
    from monollm.attacks import ATTACKS

    if key == "seed":
        raise SweepError("key 'seed' cannot be set in a sweep's grid or [set]: list the seeds in `seeds`")
    cls, where = config.ExperimentConfig, ""
    for part in key.split("."):
        if cls is None:
            raise SweepError(f"unknown key '{key}': '{where}' is a setting, not a table")
        fields = {f.name for f in dataclasses.fields(cls) if f.name != getattr(cls, "EXTRA_TABLES", None)}
        if cls is config.AttackConfig and part in ATTACKS:
            cls = ATTACKS[part][0]
        elif part in fields:
            hint = typing.get_type_hints(cls)[part]
            cls = hint if dataclasses.is_dataclass(hint) else None
        else:
            extra = sorted(ATTACKS) if cls is config.AttackConfig else []
            raise SweepError(f"unknown key '{join(where, part)}' (allowed: {', '.join(sorted(fields) + extra)})")
        where = join(where, part)
    if cls is not None:
        raise SweepError(f"key '{key}' is a table; name one of its settings, e.g. "
                         f"'{key}.{dataclasses.fields(cls)[0].name}'")


def load_sweep(path: str) -> Sweep:
    """Parse and check a sweep file: its keys, the profile's path, seeds and every grid key."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(SWEEP_KEYS)})")
    name, profile = raw.get("name"), raw.get("profile")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SweepError(f"{path}: 'name' must be letters, digits, '_', '.' or '-', got {name!r}")
    if not isinstance(profile, str):
        raise SweepError(f"{path}: 'profile' must be the path of a profile, got {profile!r}")
    profile = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), profile))
    if not os.path.isfile(profile):
        raise SweepError(f"{path}: 'profile' {raw['profile']!r}: no such file ({profile})")
    grid, fixed = _grid(raw.get("grid", {}), path), _table(raw.get("set", {}), "set", path)
    for key in (*grid, *fixed):
        _named(check_key, key, path)
    both = sorted(set(grid) & set(fixed))
    if both:
        raise SweepError(f"{path}: key '{both[0]}' is both in [grid] and in [set]")
    seeds = _seeds(raw, profile, path)
    if not grid and len(seeds) < 2:
        raise SweepError(f"{path}: nothing to vary: no [grid] and one seed; list keys in [grid] or several `seeds`")
    return Sweep(name, profile, seeds, grid, fixed)


def _named(check, key: str, path: str):
    try:
        check(key)
    except SweepError as err:
        raise SweepError(f"{path}: {err}") from None


def _table(table, what: str, path: str) -> dict:
    if not isinstance(table, dict):
        raise SweepError(f"{path}: '{what}' must be a table of config keys")
    return flatten(table)  # "monotonic.mode" quoted or monotonic.mode dotted: the same key


def _grid(table, path: str) -> dict:
    grid = _table(table, "grid", path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid key '{key}' must be a non-empty list of values, got {values!r}")
    return {key: tuple(values) for key, values in grid.items()}


def _seeds(raw: dict, profile: str, path: str) -> tuple[int, ...]:
    if "seeds" not in raw:
        with open(profile, "rb") as f:
            return (tomllib.load(f).get("seed", config.ExperimentConfig.seed),)
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
        raise SweepError(f"{path}: 'seeds' must be a non-empty list of integers in 0 .. {MAX_SEED}, got {seeds!r}")
    if len(set(seeds)) < len(seeds):
        raise SweepError(f"{path}: 'seeds' lists a seed twice: {seeds!r}")
    return tuple(seeds)


def set_key(raw: dict, key: str, value) -> dict:
    """A copy of the TOML-shaped dict `raw` with the dotted `key` set to `value` (tables made as needed)."""
    out = copy.deepcopy(raw)
    *tables, leaf = key.split(".")
    node = out
    for t in tables:
        node = node.setdefault(t, {})
        if not isinstance(node, dict):
            raise SweepError(f"key '{key}': '{t}' is not a table in the profile")
    node[leaf] = value
    return out


def _label(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def expand(sweep: Sweep, profile_raw: dict) -> list[Cell]:
    """The grid's cells in order (the last key varies fastest); one cell, "base", without a grid."""
    base = profile_raw
    for key, value in sweep.fixed.items():
        base = set_key(base, key, value)
    cells = []
    for combo in itertools.product(*sweep.grid.values()):
        values = tuple(zip(sweep.grid, combo))
        raw = base
        for key, value in values:
            raw = set_key(raw, key, value)
        name = ",".join(f"{key}={_label(v)}" for key, v in values) or "base"
        cells.append(Cell(name, values, raw))
    return cells


def resolved(cell: Cell, seed: int) -> dict:
    """The resolved configuration a run of `cell` with `seed` records (its `resolved_config`);
    raises SweepError naming the cell when the project's loader refuses the cell's profile."""
    try:
        cfg = config.load(cell.raw, seed=seed)
        if cfg.model.source == "build":  # what `start` checks from the settings alone
            config.block_limit(cfg, cfg.model.build.max_position)
            config.layer_limit(cfg, cfg.model.build.num_layers)
    except config.ConfigError as err:
        raise SweepError(f"cell {cell.name}: {err}") from None
    return config.to_dict(cfg)


def same_computation(a: dict, b: dict) -> bool:
    """Whether two resolved configurations differ only where a run ran (resources, threads, parallel)."""
    return not [k for k in config_differences({"a": a, "b": b}) if not _operational(k)]


def _operational(key: str) -> bool:
    return any(key == n or key.startswith(n + ".") for n in OPERATIONAL)


def check_cells(cells: list[Cell], seed: int) -> dict:
    """{cell name: resolved configuration at `seed`}; raises SweepError for a cell the loader
    refuses, two cells with one name, or two cells that resolve to the same computation."""
    out = {}
    for cell in cells:
        if cell.name in out:
            raise SweepError(f"two cells are named {cell.name!r}: grid values that differ only in characters "
                             "a file name cannot hold")
        out[cell.name] = resolved(cell, seed)
    names = list(out)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if same_computation(out[a], out[b]):
                raise SweepError(f"cells {a} and {b} resolve to the same configuration (up to resources, threads "
                                 "and parallel): a grid value repeated, or one the loader resolves to another")
    return out


def plan(cells: list[Cell], seeds, records: list[RunRecord], expected: dict) -> list[Task]:
    """One Task per (cell, seed), cells in order then seeds. records: earlier runs of the sweep,
    newest first; expected: {(cell name, seed): resolved configuration}. A run counts for a
    (cell, seed) when its configuration is that one up to where it ran, whatever its tags say."""
    tasks = []
    for cell, seed in itertools.product(cells, seeds):
        want = expected[(cell.name, seed)]
        mine = [r for r in records if r.config is not None and same_computation(r.config, want)]
        done = [r for r in mine if r.successful][::-1]
        failed = [r for r in mine if not r.successful]
        if done:
            tasks.append(Task(cell, seed, "skip", tuple(done)))
        elif failed:
            tasks.append(Task(cell, seed, "resume", (failed[0],)))
        else:
            tasks.append(Task(cell, seed, "run"))
    return tasks


def toml_text(table: dict, prefix: str = "") -> str:
    """A TOML-shaped dict (tables, strings, numbers, booleans, lists of them) as TOML text."""
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    lines = [f"[{prefix}]"] if prefix and (scalars or not tables) else []
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars]
    text = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        text += ("\n" if text else "") + toml_text(v, join(prefix, _toml_key(k)))
    return text


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise SweepError(f"cannot write {v!r} to TOML")


def write_cell(cell: Cell, folder: str) -> str:
    """Write the cell's profile to `folder`/<cell>.toml, read it back through the project's loader
    (as the flow will) and return its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{cell.name}.toml")
    text = toml_text(cell.raw)
    if tomllib.loads(text) != json.loads(json.dumps(cell.raw)):  # tuples as lists, as TOML reads them
        raise SweepError(f"cell {cell.name}: its profile does not survive TOML writing")
    with open(path, "w") as f:
        f.write(f"# cell {cell.name} of a sweep: written by monollm.experiments.sweep, rewritten on every sweep\n" + text)
    try:
        config.load_file(path)
    except config.ConfigError as err:
        raise SweepError(f"cell {cell.name} ({path}): {err}") from None
    return path
