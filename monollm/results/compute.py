"""Robustness as attack compute: how many forward passes an attacker must spend on each model to
reach a given damage, and the ratio monotonic / baseline (the attacker's compute multiplier).

The input is a per-example curve table `curve`, one row per model, example and budget point:

    model         "baseline" or "monotonic"
    example       int, the test example
    passes        int, forward passes per model the family's searches had spent at that point
                  (one grid for both models, log-spaced by doubling)
    above_control float, that example's worst-case damage above control at that point (nats/token)

The mean over examples per model and passes is the family's damage curve (`mean_curve`). The
passes a model needs for a target damage are read off that curve at its first crossing,
interpolated linearly in log(passes) (`passes_to_reach`): damage grows roughly linearly in the
log of the search's compute, so that is where a straight line between two points is honest.

What `multiplier` returns, and what a run stores under findings["compute"] (one entry per
threat-model family, keyed as findings["worst_case"] is):

    {family: {target key: {"target": float,          # nats per token above control
                           "baseline": float,        # passes the baseline needs (or its bound)
                           "monotonic": float,       # passes the monotonic model needs (or its bound)
                           "ratio": float,           # monotonic / baseline, or the bound's value; NaN: none
                           "ci_low": float, "ci_high": float,  # 95% paired bootstrap over examples
                           "bound": str,             # what "ratio" is: see BOUNDS
                           "baseline_bound": str, "monotonic_bound": str}}}  # each Reach's bound

The target key names the target: "1/4" and "1/2" for `default_targets` (shares of the weaker
model's final damage, so runs of different seeds pair by share), else the target to 3 decimals.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd

from monollm import stats
from monollm.results import wording

MODELS = ("baseline", "monotonic")
BOUNDS = {"=": "the ratio itself", ">": "a lower bound: the monotonic model never reaches the target",
          "<": "an upper bound: the baseline never reaches the target",
          "<=": "an upper bound: the monotonic model reaches it at the first point",
          ">=": "a lower bound: the baseline reaches it at the first point",
          "none": "no ratio: both models reach it at the first point, or neither within the budget"}
"""The `bound` of a ratio: how its value reads."""
SHARES = {"1/4": 0.25, "1/2": 0.5}
"""Default targets: shares of the final-budget mean damage of the model damaged more."""


@dataclasses.dataclass(frozen=True)
class Reach:
    """Passes a model needs for a target. bound "=": `value` is the interpolated crossing; "<=": the
    target is met at the first point, `value` is that point's passes (an upper bound); ">": never
    reached, `value` is the largest passes (the budget; a strict lower bound)."""
    value: float
    bound: str


def mean_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """Columns model, passes, above_control: the mean over examples per model and passes, sorted by passes."""
    out = curve.groupby(["model", "passes"], sort=True)["above_control"].mean().reset_index()
    return out.sort_values(["model", "passes"], ignore_index=True)


def passes_to_reach(points, target: float) -> Reach:
    """The first crossing of `target` by a damage curve. points: (passes, damage) pairs, passes
    ascending (a DataFrame with columns passes and above_control works too). Between the last
    point below the target and the first at or above it, log(passes) is linear in damage."""
    p, d = _arrays(points)
    hit = np.flatnonzero(d >= target)
    if not len(hit):
        return Reach(float(p[-1]), ">")
    i = int(hit[0])
    if i == 0:
        return Reach(float(p[0]), "<=")
    share = (target - d[i - 1]) / (d[i] - d[i - 1])  # d[i-1] < target <= d[i], so 0 < share <= 1
    return Reach(float(np.exp(np.log(p[i - 1]) + share * (np.log(p[i]) - np.log(p[i - 1])))), "=")


def _arrays(points) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(points, pd.DataFrame):
        return points["passes"].to_numpy(float), points["above_control"].to_numpy(float)
    arr = np.asarray(list(points), dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def ratio_of(monotonic: Reach, baseline: Reach) -> tuple[float, str]:
    """(value, bound) of monotonic / baseline from the two reaches: each reach is an interval of
    passes ("=": a point, "<=": up to the first point, ">": beyond the budget), so the ratio is one
    too; a point reads "=", one open end reads as the bound at the other, both open ends as "none"."""
    lo_m, hi_m = _interval(monotonic)
    lo_b, hi_b = _interval(baseline)
    low, high = lo_m / hi_b, hi_m / lo_b if lo_b > 0 else math.inf
    if low == high:
        return low, "="
    if low > 0 and math.isinf(high):
        return low, ">" if monotonic.bound == ">" else ">="
    if low == 0 and math.isfinite(high):
        return high, "<" if baseline.bound == ">" else "<="
    return math.nan, "none"


def _interval(reach: Reach) -> tuple[float, float]:
    return {"=": (reach.value, reach.value), "<=": (0.0, reach.value), ">": (reach.value, math.inf)}[reach.bound]


def _replicate_ratio(monotonic: Reach, baseline: Reach) -> float:
    """One bootstrap replicate's ratio, censored: +inf where the monotonic model never reaches the
    target, 0 where only the baseline never does (NaN where neither does); a target met at the first
    point counts at the first point's passes."""
    if monotonic.bound == ">":
        return math.inf if baseline.bound != ">" else math.nan
    return 0.0 if baseline.bound == ">" else monotonic.value / baseline.value


def _cube(curve: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(passes (P,), damage (2, N, P)): the curve table as an array, models in MODELS order, N
    examples (those either model has; a missing cell is NaN and left out of the means)."""
    table = curve.pivot_table(index=["model", "example"], columns="passes", values="above_control", aggfunc="mean")
    passes = np.asarray(sorted(table.columns), dtype=float)
    examples = sorted(set(curve["example"]))
    index = pd.MultiIndex.from_product([MODELS, examples], names=["model", "example"])
    cube = table.reindex(index=index, columns=sorted(table.columns)).to_numpy(float)
    return passes, cube.reshape(len(MODELS), len(examples), len(passes))


def _mean_over_examples(cube: np.ndarray, axis: int = 1) -> np.ndarray:
    """np.nanmean over the examples: a model has no point at the passes of the other model's curve,
    so an all-NaN column is expected there and stays NaN, without numpy's "Mean of empty slice"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(cube, axis=axis)


def resampled_means(cube: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, 2, P): the mean curves of each bootstrap replicate; a replicate draws N example
    indices with replacement once and uses them for both models (paired)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cube.shape[1], size=(n_boot, cube.shape[1]))
    return np.stack([_mean_over_examples(cube[:, row, :]) for row in idx])


def curve_bands(curve: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Columns model, passes, above_control (mean over examples), ci_low, ci_high: the mean curve with a
    95% percentile bootstrap band per point (examples resampled, paired across models)."""
    passes, cube = _cube(curve)
    boot = resampled_means(cube, n_boot, seed)
    mean = _mean_over_examples(cube)
    with warnings.catch_warnings():  # all-NaN where a model has no point at those passes: NaN, said once above
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    return pd.DataFrame([{"model": m, "passes": p, "above_control": mean[i, j], "ci_low": lo[i, j],
                          "ci_high": hi[i, j]} for i, m in enumerate(MODELS) for j, p in enumerate(passes)])


def default_targets(curve: pd.DataFrame) -> dict[str, float]:
    """{"1/4": t, "1/2": t}: SHARES of the final-budget mean damage of the model damaged more there
    (the weaker one, which reaches them within the budget by construction), rounded to 3 decimals;
    {} when that damage is <= 0. A share that rounds to 0 is left out (every curve starts above it)."""
    means = mean_curve(curve)
    final = means[means.passes == means.passes.max()]["above_control"].max()
    if not final > 0:
        return {}
    return {key: round(float(share * final), 3) for key, share in SHARES.items() if round(share * final, 3) > 0}


def target_keys(targets) -> dict[str, float]:
    """{key: target}: a dict as given; a list keyed by each target to 3 decimals."""
    return dict(targets) if isinstance(targets, dict) else {f"{t:.3f}": float(t) for t in targets}


def multiplier(curve: pd.DataFrame, targets, n_boot: int = 2000, seed: int = 0) -> dict:
    """{target key: entry} (the entry is documented at the top of this module) for `targets` (a list
    of damages or `default_targets`' dict). The point estimate reads both mean curves
    (`passes_to_reach`, `ratio_of`). The 95% CI: a paired percentile bootstrap over examples that
    redoes the mean curves and the interpolation in every replicate. Censoring: a replicate in which
    the monotonic model never reaches the target counts as ratio +inf, one in which only the baseline
    never does as 0, so the percentiles stay defined (an infinite end means that more than 2.5% of the
    replicates never reach it); replicates in which neither does are left out. The percentiles are
    taken outward (the order statistic at or beyond each end), never interpolated towards infinity."""
    passes, cube = _cube(curve)
    mean, boot = _mean_over_examples(cube), resampled_means(cube, n_boot, seed)
    out = {}
    for key, target in target_keys(targets).items():
        base, mono = (passes_to_reach(zip(passes, mean[i]), target) for i in range(2))
        ratio, bound = ratio_of(mono, base)
        reps = np.array([_replicate_ratio(passes_to_reach(zip(passes, b[1]), target),
                                          passes_to_reach(zip(passes, b[0]), target)) for b in boot])
        reps = reps[~np.isnan(reps)]
        lo, hi = (float(np.quantile(reps, q, method=m)) for q, m in ((0.025, "lower"), (0.975, "higher"))) \
            if len(reps) and bound != "none" else (math.nan, math.nan)
        out[key] = {"target": float(target), "baseline": base.value, "monotonic": mono.value, "ratio": ratio,
                    "ci_low": lo, "ci_high": hi, "bound": bound, "baseline_bound": base.bound,
                    "monotonic_bound": mono.bound}
    return out


def times(x: float) -> str:
    """A multiplier to two significant digits: '2.4', '12', '0.43', '0.043'; 'inf' for a censored end."""
    if math.isinf(x):
        return "inf"
    if not x > 0:
        return wording.number(x, 0, sign=False)
    return wording.number(x, max(0, 1 - math.floor(math.log10(x))), sign=False)


def _passes(x: float) -> str:
    return f"{x:,.0f}"


def sentence(result: dict, family: str) -> str:
    """The answer's sentence for one `multiplier` entry: 'universal triggers: an attacker needs 2.4x
    [1.3, 5.0] the compute to reach 0.050 nats above control against the monotonic model: more compute
    than against the baseline (9,600 against 4,000 forward passes)'; a bound reads as one ('more than
    12x ...: it never reaches that within the budget'), never as a number."""
    r, bound = result, result["bound"]
    target = f"{wording.number(r['target'], sign=False)} nats above control"
    if bound == "none":
        how = ("neither model reaches", "within the budget") if r["monotonic_bound"] == ">" else \
            ("both models reach", "at the first point")
        return f"{family}: {how[0]} {target} {how[1]} ({_passes(r['monotonic'])} forward passes): no compute multiplier"
    reach = f"to reach {target}"
    head = f"{family}: an attacker needs "
    if bound == "=":
        more = "more compute than" if r["ratio"] > 1 else "less compute than" if r["ratio"] < 1 else "as much as"
        ci = f"[{times(r['ci_low'])}, {times(r['ci_high'])}]"
        return (head + f"{times(r['ratio'])}x {ci} the compute {reach} against the monotonic model: {more} against "
                f"the baseline ({_passes(r['monotonic'])} against {_passes(r['baseline'])} forward passes)")
    words, why = {">": ("more than", "the monotonic model never reaches that within the budget"),
                  "<": ("less than", "the baseline never reaches that within the budget"),
                  "<=": ("at most", "the monotonic model reaches it at the first point"),
                  ">=": ("at least", "the baseline reaches it at the first point")}[bound]
    return (head + f"{words} {times(r['ratio'])}x the compute {reach} against the monotonic model: {why} "
            f"(monotonic {_passes(r['monotonic'])}, baseline {_passes(r['baseline'])} forward passes)")


ACROSS = ["family", "target", "target_mean", "runs", "n", "ratio", "ci_low", "ci_high", "lower_bounds",
          "upper_bounds", "no_ratio"]


def multiplier_across_seeds(per_run: list) -> pd.DataFrame:
    """One row per family and target key (columns ACROSS) from the runs' findings["compute"] dicts
    (None or {} for a run without one): n runs whose ratio is a number ("="), their geometric mean
    `ratio` and the exp of a 95% t-interval of their log ratios (ci_low, ci_high); the runs whose ratio
    is a bound are counted apart, never averaged: lower_bounds (">", ">="), upper_bounds ("<", "<=")
    and no_ratio ("none"). target_mean: the mean target in nats (runs pair by key, e.g. "1/4")."""
    entries = {}
    for compute in per_run:
        for family, by_target in (compute or {}).items():
            for key, entry in by_target.items():
                entries.setdefault((family, key), []).append(entry)
    rows = []
    for (family, key), got in entries.items():
        logs = [math.log(e["ratio"]) for e in got if e["bound"] == "=" and e["ratio"] > 0]
        mean, lo, hi = stats.t_interval(logs)
        rows.append({"family": family, "target": key, "target_mean": float(np.mean([e["target"] for e in got])),
                     "runs": len(got), "n": len(logs), "ratio": math.exp(mean) if logs else math.nan,
                     "ci_low": math.exp(lo) if math.isfinite(lo) else math.nan,
                     "ci_high": math.exp(hi) if math.isfinite(hi) else math.nan,
                     "lower_bounds": sum(e["bound"] in (">", ">=") for e in got),
                     "upper_bounds": sum(e["bound"] in ("<", "<=") for e in got),
                     "no_ratio": sum(e["bound"] == "none" for e in got)})
    return pd.DataFrame(rows, columns=ACROSS)


def across_line(row) -> str:
    """'universal triggers, target 1/4 (0.031 nats above control on average): compute multiplier 2.4x
    [1.3, 5.0], 3 seeds (geometric mean, t-interval of log ratios)', then the bound-valued runs' counts."""
    head = f"{row['family']}, target {row['target']} ({wording.number(row['target_mean'], sign=False)} nats above " \
           f"control{' on average' if row['runs'] > 1 else ''}): compute multiplier "
    if row["n"]:
        ci = f" [{times(row['ci_low'])}, {times(row['ci_high'])}]" if math.isfinite(row["ci_low"]) else ""
        head += f"{times(row['ratio'])}x{ci}, {wording.seeds(int(row['n']))} (geometric mean, t-interval of log ratios)"
    else:
        head += "no run gives a number"
    kinds = (("lower_bounds", "a lower bound"), ("upper_bounds", "an upper bound"), ("no_ratio", "no ratio"))
    apart = [f"{wording.count(int(row[c]), 'run')} with {what}" for c, what in kinds if row[c]]
    return head + ("; bound-valued runs, left out: " + ", ".join(apart) if apart else "")
