"""Key numbers across runs that differ in seed (or a deliberately varied key), with a 95% CI.

    python -m monollm.compare                          # runs like the latest one, up to the seed
    python -m monollm.compare 1712 1745 1790           # these runs
    python -m monollm.compare --tag profile:tiny --csv seeds.csv
    python -m monollm.compare 17 18 --vary monotonic.variant
    python -m monollm.compare --namespace user:alice   # only alice's runs (default: everyone's)
    python -m monollm.compare --tag sweep:attribution --vary monotonic.mode --where monotonic.mode=nonneg

From a notebook, `compare.compare(["1712", "1745"])` returns the same table as a DataFrame:
one row per key number, one column per run (labelled by its seed and the values of the varied
keys), then the mean, a 95% t-interval across runs (scipy) and the number of runs. Runs whose
configurations differ in anything but the seed (and the keys given to `vary`) are refused with
a message naming the differing keys. A run and its resumed copies (`resume` clones the steps
that had finished) are one computation and count once. `--where KEY=VALUE` (`where`) keeps only
the runs whose resolved_config has that value, however they were picked (a key no run has is
refused, named). Two runs started afresh with one seed and the same varied keys' values are not
two samples: picked by tag or likeness they are refused with a message listing them (choose by
giving run ids, or narrow with --where); given explicitly, they are compared with a warning.
Runs are looked up in Metaflow's global namespace unless `namespace` names one.
"""
from __future__ import annotations

import argparse
import math
import sys
import textwrap
import warnings

import pandas as pd

from monollm import stats
from monollm.experiments import across, flagged
from monollm.experiments.chains import first_run, one_per_computation  # noqa: F401 (compare.first_run)
from monollm.experiments.where import filter_where, parse_where
from monollm.results import wording
from monollm.schema import flatten

ALWAYS_VARY = ("seed",)
# where and how fast a run ran, not what it computed
# (several training processes give one process's history up to float summation order)
OPERATIONAL = ("resources", "threads", "parallel")


class IncompatibleRuns(ValueError):
    """Runs whose configurations differ in keys that may not vary."""


class DuplicateRuns(ValueError):
    """Runs picked by tag or likeness that share a seed and the varied keys' values: which one
    counts is the user's choice, so compare refuses rather than pick."""


class DuplicateSeeds(UserWarning):
    """Runs that share a seed (and the varied keys): the same computation repeated, e.g. a
    resumed or re-run seed, not an independent sample."""


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
    """The headline numbers of one run, by name, from its artifacts (run.data or the flow); the
    summary's text columns (kind, ranking, ...) are labels, never numbers."""
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
    for family, comp in f.get("worst_case", {}).items():  # a run from before it has none
        out[f"{WORST_CASE}{family} baseline - monotonic"] = comp["diff"]
    for key, comp in f["robustness"].items():
        out[f"dNLL {key} baseline - monotonic"] = comp["diff"]
    for attack, comp in f.get("robustness_above_control", {}).items():
        out[f"dNLL above control {attack} baseline - monotonic"] = comp["diff"]
    for attack, g in f.get("guidance", {}).items():  # a run from before it has none
        for model, rho in g["spearman"].items():  # only where measured
            out[f"gradient guidance Spearman {attack} {model}"] = rho
    out.update(downstream_numbers(data))
    return {k: float(v) for k, v in out.items()}


def downstream_numbers(data) -> dict:
    """Each downstream task's accuracy per model and monotonic minus baseline (findings); {} for a
    run without downstream tasks."""
    table, out = getattr(data, "downstream", None), {}
    if table is not None and len(table):
        for row in table[table.metric == "acc"].itertuples():
            out[f"downstream {row.task} acc {row.model}"] = row.value
    for task, c in data.findings.get("downstream", {}).items():
        out[f"downstream {task} {c['metric']} monotonic - baseline"] = c["diff"]
    return out


def select_runs(runs=None, tag=None, flow: str = "MonoFlow", like=None, vary=(), namespace: str | None = None,
                where: dict | None = None) -> list:
    """Run objects, oldest first: the given ids/pathspecs/Runs; else the successful runs with
    every tag in `tag` (a tag or a list); else the successful runs of `like`'s profile (default:
    the latest successful run) whose configuration matches its own up to the seed and `vary`.
    Then only those whose configuration has every `where` value (`filter_where`), however they
    were picked. Runs are looked up in `namespace` (None: Metaflow's global namespace)."""
    return filter_where(_select(runs, tag, flow, like, vary, namespace), where or {})


def _select(runs, tag, flow: str, like, vary, namespace) -> list:
    from metaflow import Flow

    from monollm.results import client

    if runs and tag:
        raise ValueError("give run ids or a tag, not both")
    with client.in_namespace(namespace):
        if runs:
            picked = {}
            for r in runs:
                run = client.get_run(r, flow=flow, namespace=namespace)
                picked.setdefault(run.pathspec, run)
            return list(picked.values())
        if tag:
            tags = [tag] if isinstance(tag, str) else list(tag)
            found = [r for r in Flow(flow).runs(*tags) if r.successful][::-1]
            if not found:
                raise LookupError(f"no successful {flow} run tagged {', '.join(tags)}"
                                  + (f" in namespace {namespace!r}" if namespace else ""))
            return found
        ref = client.get_run(like, flow=flow, namespace=namespace)
        base = ref.data.resolved_config
        same_profile = [t for t in ref.user_tags if t.startswith("profile:")]
        return [r for r in list(Flow(flow).runs(*same_profile))[::-1] if r.pathspec == ref.pathspec or (
            r.successful and not _bad_keys({ref.id: base, r.id: r.data.resolved_config}, vary))]


def compare(runs=None, tag=None, vary=(), flow: str = "MonoFlow", like=None,
            namespace: str | None = None, where: dict | None = None) -> pd.DataFrame:
    """Key numbers per run, their mean and 95% t-interval across runs, and n.

    runs / tag / like / namespace / where: as `select_runs`; vary: config keys besides the seed
    that may differ. Runs picked by tag or likeness (no `runs`) that share a seed and the varied
    keys' values are refused (DuplicateRuns); given explicitly, they are compared with a warning.
    Returns a DataFrame indexed by metric with one column per run, labelled by its seed and the
    varied keys' values (`run_labels`), then mean, ci_low, ci_high, n.
    `.attrs["runs"]` maps label -> pathspec, `.attrs["seeds"]` label -> seed and
    `.attrs["warnings"]` lists the DuplicateSeeds messages (also issued as warnings) and
    `.attrs["resumed"]` the runs left out as resumed copies of another (`one_per_computation`),
    `.attrs["varied"]` the keys besides the seed whose values differ between the runs,
    `.attrs["flags"]` in how many runs each verdict was flagged (flagged.count) and `.attrs["caveat"]`
    the profile's pipeline-check line ("" for a profile that answers the question), `.attrs["compute"]`
    each run's findings["compute"] ({} where none).
    Raises IncompatibleRuns, DuplicateRuns.
    """
    selected, resumed = one_per_computation(select_runs(runs, tag, flow, like, vary, namespace, where), flow)
    for r in selected:
        if r.data is None or not hasattr(r.data, "findings"):
            raise LookupError(f"run {r.pathspec} has no results (did it finish?)")
    configs = {r.id: r.data.resolved_config for r in selected}
    check_compatible(configs, vary)
    repeated = duplicate_seeds(configs, {r.id: r.pathspec for r in selected})
    if repeated and not runs:
        raise DuplicateRuns(refusal(repeated))
    labels = run_labels(configs)
    table = pd.DataFrame({labels[r.id]: key_numbers(r.data) for r in selected})
    runs_cols = list(table.columns)
    ci = [stats.t_interval(row.dropna().to_numpy()) for _, row in table.iterrows()]
    table[["mean", "ci_low", "ci_high"]] = pd.DataFrame(ci, index=table.index)
    table["n"] = table[runs_cols].notna().sum(axis=1)
    table.index.name = "metric"
    table.attrs["runs"] = {labels[r.id]: r.pathspec for r in selected}
    table.attrs["seeds"] = {labels[rid]: c.get("seed") for rid, c in configs.items()}
    table.attrs["warnings"] = repeated
    table.attrs["resumed"] = resumed
    table.attrs["varied"] = sorted({k for cond in _condition(configs).values() for k, _ in cond})
    table.attrs["compute"] = [across.run_compute(r.data) for r in selected]  # findings["compute"], {} where none
    table.attrs["flags"] = flagged.count([flagged.run_flags(r.data.findings) for r in selected])
    table.attrs["caveat"] = wording.pipeline_check_line(next(iter(configs.values()), None))
    for message in table.attrs["warnings"]:
        warnings.warn(message, DuplicateSeeds, stacklevel=2)
    return table


def _condition(configs: dict) -> dict:
    """run id -> ((key, value), ...) of the keys other than the seed whose values differ
    between the runs, operational settings left out: what a reader needs to tell runs apart."""
    diffs = {k: v for k, v in config_differences(configs).items()
             if k not in ALWAYS_VARY and not _covered(k, OPERATIONAL)}
    return {rid: tuple((k, values[rid]) for k, values in diffs.items()) for rid in configs}


def run_labels(configs: dict) -> dict:
    """run id -> column label: "seed N", plus "key=value" for every varied key (e.g.
    "seed 0, monotonic.variant=mlp_in"); runs that would share a label get their run id too."""
    cond = _condition(configs)
    base = {rid: ", ".join([f"seed {c.get('seed')}"] + [f"{k}={v}" for k, v in cond[rid]])
            for rid, c in configs.items()}
    counts = pd.Series(list(base.values())).value_counts()
    return {rid: f"{label} (run {rid})" if counts[label] > 1 else label for rid, label in base.items()}


def duplicate_seeds(configs: dict, names: dict | None = None) -> list[str]:
    """One message per group of runs that share a seed and the varied keys' values.

    configs: run id -> resolved_config; names: run id -> how to call the run (its pathspec)."""
    names = names or {rid: rid for rid in configs}
    cond, groups = _condition(configs), {}
    for rid, c in configs.items():
        groups.setdefault((repr(c.get("seed")), cond[rid]), []).append(rid)
    return [f"runs {', '.join(names[r] for r in rids)} share seed {configs[rids[0]].get('seed')}"
            + (" and " + ", ".join(f"{k}={v}" for k, v in c) if c else "")
            + ": they are not independent samples (a resumed or re-run seed repeats the same computation), "
              "yet the interval counts each of them; compare one run per seed"
            for (_, c), rids in groups.items() if len(rids) > 1]


def refusal(messages: list[str]) -> str:
    """The DuplicateRuns message: each group of runs sharing a seed, and how to choose."""
    groups = [m.split(": they are not independent")[0] for m in messages]
    return ("the runs picked (by tag or like the latest) repeat a seed: " + "; ".join(groups) + ". Which of "
            "them counts is your choice: give the run ids to compare (make compare RUNS=\"ID ID ...\", one "
            "run per seed), or narrow the selection with --where KEY=VALUE or another --tag")


WORST_CASE = "worst case above control "
"""Key-number prefix of the worst-case verdicts (+ "<family> baseline - monotonic"): the answer."""
DIFFERENCES = {"baseline - monotonic": wording.ROBUSTNESS, "acc monotonic - baseline": wording.ACCURACY,
               "NLL cost monotonic - baseline (nats/token)": wording.NLL_COST}
"""Metric suffix -> the verdict words of an interval above and below 0 (wording)."""


def words(metric: str) -> tuple[str, str] | None:
    """The verdict words of a key number that is a difference between the models; None for the others."""
    return next((w for suffix, w in DIFFERENCES.items() if metric.endswith(suffix)), None)


def decimals(metric: str) -> int:
    """How many decimals a key number is shown with (wording): the NLL cost has more."""
    return wording.NLL_DECIMALS if metric.startswith("NLL cost") else wording.DECIMALS


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per difference in `table` (robustness: baseline - monotonic, the worst case first,
    then each attack's damage above control; the NLL cost; downstream costs): mean, 95%
    t-interval across runs, n, how many seeds (or runs, where a key besides the seed varied)
    stand behind it and the verdict it supports (wording.across_seeds), led by "not evidence of
    robustness" and in how many runs it was flagged where any run flagged it (flagged.reading)."""
    unit = "run" if table.attrs.get("varied") else "seed"
    rows = []
    for metric in sorted(table.index, key=lambda m: (not m.startswith(WORST_CASE), not m.startswith("dNLL above control"),
                                                     not m.startswith("dNLL"))):
        if words(metric) is None:
            continue
        r, n = table.loc[metric], int(table.loc[metric, "n"])
        rows.append({"metric": metric, "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": n,
                     "seeds": wording.count(n, unit),
                     "verdict": flagged.reading(wording.across_seeds(n, r["ci_low"], r["ci_high"], words(metric)),
                                                table.attrs.get("flags", {}).get(metric), unit)})
    return pd.DataFrame(rows, columns=["metric", "mean", "ci_low", "ci_high", "n", "seeds", "verdict"])


def _numbers_text(table: pd.DataFrame) -> str:
    """The table with each row's numbers to its metric's fixed decimals, signed where it is a difference."""
    shown = pd.DataFrame({c: [wording.number(table.loc[m, c], decimals(m), words(m) is not None) for m in table.index]
                          for c in table.columns if c != "n"}, index=table.index)
    shown["n"] = table["n"].astype(int)
    return shown.to_string()


def format_table(table: pd.DataFrame) -> str:
    """The table as text: which run each column is, warnings, the numbers, then the verdicts."""
    runs = table.attrs.get("runs", {})
    head = [f"{len(runs)} run(s): " + "; ".join(f"{label} = {path}" for label, path in runs.items())]
    head += textwrap.wrap(table.attrs["caveat"], 120) if table.attrs.get("caveat") else []
    head += [f"WARNING: {w}" for w in table.attrs.get("warnings", [])]
    head += [f"NOTE: {n}" for n in table.attrs.get("resumed", [])]
    v = verdicts(table)
    # '<metric>: +0.150 [+0.026, +0.274], 3 seeds: monotonic more robust'
    lines = [f"  {r.metric}: {wording.interval(r.mean, r.ci_low, r.ci_high, decimals(r.metric))}, {r.seeds}: "
             f"{r.verdict}" for r in v.itertuples()]
    if len(v) and (v["n"] < 2).all():  # one seed: no verdict across runs, say what would give one
        lines = [f"  none: every difference comes from one run ({wording.seeds(1)}); a t-interval needs two:",
                 "  run more seeds (make run SEED=N) and compare them (make compare)."]
    tail = ["", *textwrap.wrap(f"Verdicts (mean and 95% t-interval across runs). {wording.SIGNS}", 120)] + [
        w for line in lines for w in textwrap.wrap(line, 120, subsequent_indent="      ")] if lines else []
    return "\n".join(head + [_numbers_text(table)] + tail + across.compare_lines(table, WORST_CASE))


def not_found(err: Exception, flow: str) -> str:
    """One line for a lookup that found nothing: where it looked when the local datastore has no run
    of `flow` (cli.no_runs_message), else Metaflow's own words."""
    import os

    from metaflow.metaflow_config import DATASTORE_SYSROOT_LOCAL, DEFAULT_DATASTORE

    from monollm import cli

    where = cli.no_runs_message("compare", flow, cli.datastore_root(), os.getcwd(), DATASTORE_SYSROOT_LOCAL) \
        if DEFAULT_DATASTORE == "local" else None
    return where or f"compare: {err}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monollm.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run ids or pathspecs (default: runs like the latest one)")
    parser.add_argument("--tag", action="append", help="every successful run with this tag (repeat: all of them), "
                        "e.g. --tag profile:tiny --tag variant:mlp_both")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY",
                        help="a config key (or section) besides the seed that may differ; repeatable")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only runs whose resolved_config has this value (a TOML value, e.g. "
                             "monotonic.mode=nonneg or train.lr=0.002); repeatable, all must hold")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    parser.add_argument("--flow", default="MonoFlow")
    parser.add_argument("--namespace", default=None, metavar="NS",
                        help="Metaflow namespace to look runs up in, e.g. user:alice "
                             "(default: the global namespace, every user's runs)")
    args = parser.parse_args(argv)
    from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DuplicateSeeds)
            table = compare(args.runs or None, args.tag, args.vary, args.flow, namespace=args.namespace,
                            where=parse_where(args.where))
    except MetaflowNotFound as err:
        print(not_found(err, args.flow), file=sys.stderr)
        return 2
    except (IncompatibleRuns, LookupError, ValueError, MetaflowNamespaceMismatch) as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2
    for w in caught:
        if issubclass(w.category, DuplicateSeeds):
            print(f"compare: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(format_table(table))
    if args.csv:
        table.to_csv(args.csv)
        print(f"written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
