"""A copy of a run's profile with its hub revisions pinned to the commits the run read.

    python -m monollm.experiments.pin RUN PROFILE.toml OUT.toml
    python -m monollm.experiments.pin 1712 config/pythia-160m.toml pythia-160m-1712.toml

A profile may name a branch (`model.revision = "step143000"`, `data.revision = "main"`): the
run then records the commit that branch pointed to when `setup` read it (`run.data.sources`).
This writes PROFILE to OUT with `model.revision` and `data.revision` replaced by those commits,
and nothing else changed (comments included), so that a second lab repeats the exact run. The
copy is checked: it loads (monollm.config.load_file) to the run's configuration but for the
revisions. PROFILE must be the profile the run was started with (checked against the run's
`resolved_config`; the seed may differ: a `--seed` override is named in the command printed).
A built model, the built-in corpus and local folders have no commits: nothing is pinned there,
and the output says so.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib

from monollm import config
from monollm.constants import COMMIT_PATTERN
from monollm.schema import flatten

KEYS = {"model": "model.revision", "data": "data.revision"}
"""Source (pipeline.sources) -> the profile key its revision is set by."""
NO_REVISION = {"build": "built from [model.build]", "builtin": "the built-in corpus", "local": "read from local disk"}
"""Sources that have no hub revision, in words."""
HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.\- ]+?)\s*\]\s*(#.*)?")
REVISION = re.compile(r"\s*revision\s*=")


def commits(sources: dict) -> tuple[dict, list[str], bool]:
    """({"model"/"data": (revision asked, commit)} to write into the profile, one line per source saying what is
    pinned or why not, whether every hub revision could be pinned). `sources`: a run's `sources`
    artifact (pipeline.sources)."""
    found, notes, complete = {}, [], True
    for what, key in KEYS.items():
        s = sources[what]
        where = s["name"] if what == "model" else s["path"]
        if s["source"] in NO_REVISION or not s["revision"] or _folder(where):
            notes.append(f"{key}: nothing to pin ({NO_REVISION.get(s['source'], 'a local folder')}: no hub commit)")
        elif re.fullmatch(COMMIT_PATTERN, s["revision"]):
            notes.append(f"{key}: already the commit {s['revision']}")
        elif not s["commit"]:
            complete = False
            notes.append(f"{key}: {s['revision']!r} cannot be pinned: the run recorded no commit for it (the "
                         f"hub cache or the hub did not say when setup ran); set a commit by hand")
        else:
            found[what] = (s["revision"], s["commit"])
            notes.append(f"{key}: {s['revision']!r} -> commit {s['commit']}")
    return found, notes, complete


def _folder(where: str) -> bool:
    """Whether a hub source's name is a local folder (a mirror): it has no revisions."""
    return os.path.isabs(where) or where.startswith(".") or os.path.exists(where)


def pinned_text(text: str, found: dict, run_id: str) -> str:
    """The profile's TOML `text` with `revision` of each table in `found` ("model", "data" ->
    (revision asked, commit)) set to that commit: its line replaced, or added under the table's header where the
    profile left the key to its default. Every other line is kept as it is. Raises ValueError when
    the profile has no such table (an inline or dotted-key table: set the commit by hand)."""
    lines = text.splitlines(keepends=True)
    for table, (asked, commit) in found.items():
        new = f'revision = "{commit}"  # {asked!r} as run {run_id} read it (monollm.experiments.pin)\n'
        at = _table_line(lines, table)
        if at is None:
            raise ValueError(f"the profile has no [{table}] table to write {table}.revision into: set "
                             f'{table}.revision = "{commit}" in a copy by hand')
        end = next((i for i in range(at + 1, len(lines)) if HEADER.fullmatch(lines[i].rstrip("\r\n"))), len(lines))
        old = next((i for i in range(at + 1, end) if REVISION.match(lines[i])), None)
        if old is None:
            lines.insert(at + 1, new)
        else:
            lines[old] = new
    return "".join(lines)


def _table_line(lines: list[str], table: str) -> int | None:
    """The index of the `[table]` header line in `lines`, None if there is none."""
    for i, line in enumerate(lines):
        m = HEADER.fullmatch(line.rstrip("\r\n"))
        if m and m[1].replace(" ", "") == table:
            return i
    return None


def differences(profile: dict, resolved: dict) -> list[str]:
    """`key: profile -> run` for every key both configurations have that differs, but the seed and
    the revisions (what a run may override, and what pinning changes)."""
    mine, theirs = flatten(profile), flatten(resolved)
    skip = {"seed", *KEYS.values()}
    return [f"{k}: {mine[k]!r} in the profile, {theirs[k]!r} in the run"
            for k in sorted(mine.keys() & theirs.keys()) if k not in skip and mine[k] != theirs[k]]


def pin(run, profile: str, out: str) -> tuple[list[str], bool]:
    """Write `profile` with the commits run `run` read to `out` (`run`: a Client Run or anything
    with `.id` and `.data`). Returns (lines to print, whether every hub revision was pinned).
    Raises ValueError when `profile` is not the run's profile or the copy would not load alike."""
    data = run.data
    sources = getattr(data, "sources", None)
    if not sources:
        return [f"run {run.id} recorded no sources (it predates them): there are no commits to pin"], False
    resolved = data.resolved_config
    diffs = differences(config.to_dict(config.load_file(profile, seed=resolved["seed"])), resolved)
    if diffs:
        raise ValueError(f"{profile} is not the profile run {run.id} was started with ({len(diffs)} keys differ; "
                         f"first: {diffs[0]}): give the profile that run used")
    found, notes, complete = commits(sources)
    if not found:
        return notes + [f"nothing written: {profile} already names everything run {run.id} read"], complete
    with open(profile, encoding="utf-8") as f:
        text = pinned_text(f.read(), found, run.id)
    check_copy(text, profile, resolved["seed"], found)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return notes + [f"written to {out}; repeat the run with: python flows/mono_flow.py --config config {out} run "
                    f"--seed {resolved['seed']}"], complete


def check_copy(text: str, profile: str, seed: int, found: dict):
    """The pinned `text` loads, and to `profile`'s configuration but for the pinned revisions."""
    original = config.to_dict(config.load_file(profile, seed=seed))
    for table, (_, commit) in found.items():
        original[table]["revision"] = commit
    copy = config.to_dict(config.load(tomllib.loads(text), seed=seed))
    if copy != original:
        changed = differences(copy, original) or ["(a key added or removed)"]
        raise ValueError(f"the pinned copy of {profile} would not load like the profile ({changed[0]}): set the "
                         f"revisions in a copy by hand")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monollm.experiments.pin", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run id or pathspec (MonoFlow/ID)")
    parser.add_argument("profile", help="the TOML profile the run was started with")
    parser.add_argument("out", help="where to write the pinned copy")
    parser.add_argument("--namespace", default=None, metavar="NS",
                        help="Metaflow namespace to look the run up in (default: every user's runs)")
    args = parser.parse_args(argv)
    from metaflow.exception import MetaflowNotFound

    from monollm.results.client import get_run

    try:
        lines, complete = pin(get_run(args.run, namespace=args.namespace), args.profile, args.out)
    except (ValueError, OSError, config.ConfigError, MetaflowNotFound) as err:
        print(f"pin: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
