"""Key numbers across runs that differ in seed (or a deliberately varied key), with a 95% CI.

    python -m monollm.compare                          # runs like the latest one, up to the seed
    python -m monollm.compare 1712 1745 1790           # these runs
    python -m monollm.compare --tag profile:tiny --csv seeds.csv
    python -m monollm.compare 17 18 --vary monotonic.variant

From a notebook, `compare.compare(["1712", "1745"])` returns the same table as a DataFrame:
one row per key number, one column per run, then the mean, a 95% t-interval across runs
(scipy) and the number of runs. Runs whose configurations differ in anything but the seed
(and the keys given to `vary`) are refused with a message naming the differing keys.
"""
from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from monollm import stats

ALWAYS_VARY = ("seed",)
# where and how fast a run ran, not what it computed
# (several training processes give one process's history up to float summation order)
OPERATIONAL = ("resources", "threads", "parallel")


class IncompatibleRuns(ValueError):
    """Runs whose configurations differ in keys that may not vary."""


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"train.lr": ..., ...} (lists stay values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(configs: dict) -> dict:
    """{key: {run_id: value}} for every flattened key whose value is not the same in all runs.

    configs: run id -> resolved_config dict; a key missing from a run counts as None there.
    """
    flat = {rid: flatten(c) for rid, c in configs.items()}
    keys = sorted(set().union(*flat.values())) if flat else []
    diffs = {}
    for key in keys:
        values = {rid: f.get(key) for rid, f in flat.items()}
        if len({repr(v) for v in values.values()}) > 1:
            diffs[key] = values
    return diffs


def _covered(key: str, names) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def _bad_keys(configs: dict, vary=()) -> dict:
    allowed = (*ALWAYS_VARY, *vary, *OPERATIONAL)
    return {k: v for k, v in config_differences(configs).items() if not _covered(k, allowed)}


def check_compatible(configs: dict, vary=()):
    """Raise IncompatibleRuns naming every key that differs, other than the seed, `vary`
    (keys or sections, e.g. "monotonic.variant" or "monotonic") and operational settings."""
    bad = _bad_keys(configs, vary)
    if bad:
        lines = [f"  {k}: " + ", ".join(f"run {rid} = {v!r}" for rid, v in values.items())
                 for k, values in bad.items()]
        raise IncompatibleRuns(f"runs have incompatible configurations; {len(bad)} key(s) differ: "
                               f"{', '.join(bad)}\n" + "\n".join(lines) +
                               "\nonly the seed may differ; allow another key with --vary KEY (vary=[KEY])")


def key_numbers(data) -> dict:
    """The headline numbers of one run, by name, from its artifacts (run.data or the flow)."""
    out = {}
    for row in data.perplexity.itertuples():
        out[f"perplexity {row.model}"] = row.perplexity
    f = data.findings
    out["perplexity ratio monotonic/baseline"] = f["perplexity_ratio_monotonic_vs_baseline"]
    out["NLL cost monotonic - baseline (nats/token)"] = f["nll_cost_monotonic_minus_baseline"]["diff"]
    s, above = data.attack_summary, {}
    if len(s):
        for row in s[s.model == s.source_model].itertuples():
            out[f"dNLL {row.attack}/{row.kind} {row.model}"] = row.dnll_mean
            if row.kind == "attack" and math.isfinite(getattr(row, "above_control", math.nan)):
                above[f"dNLL above control {row.attack} {row.model}"] = row.above_control
    out.update(above)
    for key, comp in f["robustness"].items():
        out[f"dNLL {key} baseline - monotonic"] = comp["diff"]
    for attack, comp in f.get("robustness_above_control", {}).items():
        out[f"dNLL above control {attack} baseline - monotonic"] = comp["diff"]
    return {k: float(v) for k, v in out.items()}


def select_runs(runs=None, tag=None, flow: str = "MonoFlow", like=None, vary=()) -> list:
    """Run objects, oldest first: the given ids/pathspecs/Runs; else the successful runs with
    every tag in `tag` (a tag or a list); else the successful runs of `like`'s profile (default:
    the latest successful run) whose configuration matches its own up to the seed and `vary`."""
    from metaflow import Flow

    from monollm import results

    if runs and tag:
        raise ValueError("give run ids or a tag, not both")
    if runs:
        picked = {}
        for r in runs:
            run = results.get_run(r, flow=flow)
            picked.setdefault(run.pathspec, run)
        return list(picked.values())
    if tag:
        tags = [tag] if isinstance(tag, str) else list(tag)
        found = [r for r in Flow(flow).runs(*tags) if r.successful][::-1]
        if not found:
            raise LookupError(f"no successful {flow} run tagged {', '.join(tags)}")
        return found
    ref = results.get_run(like, flow=flow)
    base = ref.data.resolved_config
    same_profile = [t for t in ref.user_tags if t.startswith("profile:")]
    return [r for r in list(Flow(flow).runs(*same_profile))[::-1] if r.pathspec == ref.pathspec or (
        r.successful and not _bad_keys({ref.id: base, r.id: r.data.resolved_config}, vary))]


def compare(runs=None, tag=None, vary=(), flow: str = "MonoFlow", like=None) -> pd.DataFrame:
    """Key numbers per run, their mean and 95% t-interval across runs, and n.

    runs / tag / like: as `select_runs`; vary: config keys besides the seed that may differ.
    Returns a DataFrame indexed by metric with one column per run id, then mean, ci_low,
    ci_high, n; `.attrs["seeds"]` maps run id -> seed. Raises IncompatibleRuns.
    """
    selected = select_runs(runs, tag, flow, like, vary)
    for r in selected:
        if r.data is None or not hasattr(r.data, "findings"):
            raise LookupError(f"run {r.pathspec} has no results (did it finish?)")
    configs = {r.id: r.data.resolved_config for r in selected}
    check_compatible(configs, vary)
    table = pd.DataFrame({r.id: key_numbers(r.data) for r in selected})
    runs_cols = list(table.columns)
    ci = [stats.t_interval(row.dropna().to_numpy()) for _, row in table.iterrows()]
    table[["mean", "ci_low", "ci_high"]] = pd.DataFrame(ci, index=table.index)
    table["n"] = table[runs_cols].notna().sum(axis=1)
    table.index.name = "metric"
    table.attrs["seeds"] = {rid: c.get("seed") for rid, c in configs.items()}
    return table


def format_table(table: pd.DataFrame) -> str:
    seeds = table.attrs.get("seeds", {})
    head = f"{len(seeds)} run(s): " + ", ".join(f"{rid} (seed {s})" for rid, s in seeds.items())
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 60):
        return head + "\n" + table.to_string(float_format=lambda x: f"{x:.4g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monollm.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run ids or pathspecs (default: runs like the latest one)")
    parser.add_argument("--tag", action="append", help="every successful run with this tag (repeat: all of them), "
                        "e.g. --tag profile:tiny --tag variant:mlp_both")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY",
                        help="a config key (or section) besides the seed that may differ; repeatable")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    parser.add_argument("--flow", default="MonoFlow")
    args = parser.parse_args(argv)
    from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

    try:
        table = compare(args.runs or None, args.tag, args.vary, args.flow)
    except (IncompatibleRuns, LookupError, ValueError, MetaflowNotFound, MetaflowNamespaceMismatch) as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2
    print(format_table(table))
    if args.csv:
        table.to_csv(args.csv)
        print(f"written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
