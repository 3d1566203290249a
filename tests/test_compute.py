"""Robustness as attack compute (results/compute.py): passes to reach a damage target, the compute
multiplier with its bootstrap CI, the bound rules, default targets and the multiplier across seeds."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from monollm.results import compute
from monollm.results.compute import Reach

GRID = 100 * 2 ** np.arange(10)  # passes: 100 .. 51,200, doubling


def planted(k: float, examples: int = 64, noise: float = 0.02, seed: int = 1) -> pd.DataFrame:
    """Per example, damage = a * log2(passes / 100) + offset, a ~ U(0.02, 0.04); the monotonic model's
    curve is the baseline's shifted right by log2(k), so it needs exactly k times the passes. Each
    model gets its own per-example offset (sd `noise`), so the examples disagree and the CI has width."""
    rng, rows = np.random.default_rng(seed), []
    for e in range(examples):
        a = rng.uniform(0.02, 0.04)
        for model, shift in (("baseline", 0.0), ("monotonic", math.log2(k))):
            offset = rng.normal(0, noise)
            rows += [(model, e, int(p), a * (math.log2(p / 100) - shift) + offset) for p in GRID]
    return pd.DataFrame(rows, columns=["model", "example", "passes", "above_control"])


def table(curves: dict) -> pd.DataFrame:
    """model -> {example: damages on GRID[:len]} as a curve table."""
    return pd.DataFrame([(m, e, int(p), d) for m, by_ex in curves.items() for e, ds in by_ex.items()
                         for p, d in zip(GRID, ds)], columns=["model", "example", "passes", "above_control"])


def test_interpolation_in_log_passes_on_a_three_point_table():
    points = [(100, 0.0), (200, 0.1), (400, 0.3)]
    # 0.2 lies halfway from 0.1 to 0.3: halfway in log(passes) from 200 to 400, the geometric mean
    assert compute.passes_to_reach(points, 0.2) == Reach(pytest.approx(math.sqrt(200 * 400)), "=")
    assert compute.passes_to_reach(points, 0.05).value == pytest.approx(math.sqrt(100 * 200))
    assert compute.passes_to_reach(points, 0.025).value == pytest.approx(100 * 2 ** 0.25)
    assert compute.passes_to_reach(points, 0.1) == Reach(pytest.approx(200.0), "=")  # on a point
    frame = pd.DataFrame(points, columns=["passes", "above_control"])
    assert compute.passes_to_reach(frame, 0.2).value == pytest.approx(282.842712, rel=1e-6)


def test_the_first_crossing_counts_and_the_ends_are_bounds():
    rising_then_falling = [(100, 0.0), (200, 0.2), (400, 0.1), (800, 0.3)]
    assert compute.passes_to_reach(rising_then_falling, 0.15).value == pytest.approx(100 * 2 ** 0.75)
    assert compute.passes_to_reach(rising_then_falling, 0.0) == Reach(100.0, "<=")  # met at the first point
    assert compute.passes_to_reach(rising_then_falling, -1.0) == Reach(100.0, "<=")
    assert compute.passes_to_reach(rising_then_falling, 0.31) == Reach(800.0, ">")  # never: > budget


def test_mean_curve_per_model_and_passes():
    curve = table({"baseline": {0: [0.1, 0.3], 1: [0.3, 0.5]}, "monotonic": {0: [0.0, 0.2], 1: [0.2, 0.2]}})
    got = compute.mean_curve(curve).set_index(["model", "passes"])["above_control"]
    assert got.to_dict() == pytest.approx({("baseline", 100): 0.2, ("baseline", 200): 0.4,
                                           ("monotonic", 100): 0.1, ("monotonic", 200): 0.2})


@pytest.mark.parametrize("mono, base, value, bound", [
    (Reach(400, "="), Reach(100, "="), 4.0, "="),
    (Reach(3200, ">"), Reach(200, "="), 16.0, ">"),      # never reached: budget / baseline, a lower bound
    (Reach(3200, ">"), Reach(100, "<="), 32.0, ">"),
    (Reach(100, "<="), Reach(400, "="), 0.25, "<="),     # at most first / baseline
    (Reach(400, "="), Reach(100, "<="), 4.0, ">="),      # at least monotonic / first
    (Reach(400, "="), Reach(3200, ">"), 0.125, "<"),     # the baseline never: below monotonic / budget
    (Reach(100, "<="), Reach(3200, ">"), 1 / 32, "<"),
    (Reach(3200, ">"), Reach(3200, ">"), math.nan, "none"),
    (Reach(100, "<="), Reach(100, "<="), math.nan, "none"),
])
def test_the_ratio_of_two_reaches_and_its_bound(mono, base, value, bound):
    got = compute.ratio_of(mono, base)
    assert got[1] == bound
    assert (math.isnan(got[0]) and math.isnan(value)) or got[0] == pytest.approx(value)


def test_a_planted_k_times_harder_model_gives_k_with_a_ci_covering_it():
    k = 3.0
    curve = planted(k)
    result = compute.multiplier(curve, compute.default_targets(curve), n_boot=1000, seed=0)
    assert list(result) == ["1/4", "1/2"]
    for entry in result.values():
        assert entry["bound"] == entry["baseline_bound"] == entry["monotonic_bound"] == "="
        assert entry["ratio"] == pytest.approx(k, rel=0.15)
        assert entry["ci_low"] < k < entry["ci_high"]
        assert entry["ratio"] == pytest.approx(entry["monotonic"] / entry["baseline"])
    # without noise every example is the same line: the ratio is k exactly and every replicate agrees
    exact = compute.multiplier(planted(k, noise=0.0), [0.05], n_boot=200, seed=0)["0.050"]
    assert exact["ratio"] == pytest.approx(k, rel=1e-9) and (exact["ci_low"], exact["ci_high"]) == pytest.approx((k, k))


def test_an_easier_monotonic_model_reads_less_compute():
    result = compute.multiplier(planted(0.5), [0.05], n_boot=500, seed=0)["0.050"]
    assert result["ratio"] == pytest.approx(0.5, rel=0.15) and result["ci_low"] < 0.5 < result["ci_high"]
    text = compute.sentence(result, "universal triggers")
    assert text.startswith("universal triggers: an attacker needs 0.")
    assert "less compute than against the baseline" in text


def test_a_target_the_monotonic_model_never_reaches_reads_greater_than_the_budget():
    # baseline: 0.1 per doubling on every example; monotonic flat at 0.05
    curve = table({"baseline": {e: [0.1 * j for j in range(6)] for e in range(8)},
                   "monotonic": {e: [0.05] * 6 for e in range(8)}})
    entry = compute.multiplier(curve, [0.25], n_boot=200, seed=0)["0.250"]
    baseline = 100 * 2 ** 2.5  # 0.25 is halfway from 0.2 (400 passes) to 0.3 (800)
    assert entry["baseline"] == pytest.approx(baseline) and entry["monotonic"] == 3200
    assert (entry["bound"], entry["monotonic_bound"]) == (">", ">")
    assert entry["ratio"] == pytest.approx(3200 / baseline)  # budget / baseline passes, a lower bound
    assert entry["ci_low"] == entry["ci_high"] == math.inf  # every replicate is censored
    text = compute.sentence(entry, "universal triggers")
    assert "more than 5.7x the compute to reach 0.250 nats above control" in text
    assert "never reaches that within the budget" in text and "[" not in text  # a bound, never a number


def test_a_target_met_at_the_first_point_reads_at_most():
    curve = table({"baseline": {e: [0.0, 0.1, 0.2, 0.3] for e in range(4)},
                   "monotonic": {e: [0.2, 0.25, 0.3, 0.35] for e in range(4)}})
    entry = compute.multiplier(curve, {"low": 0.1}, n_boot=100, seed=0)["low"]
    assert entry["monotonic"] == 100 and entry["monotonic_bound"] == "<="
    assert entry["baseline"] == pytest.approx(200.0) and entry["baseline_bound"] == "="
    assert (entry["ratio"], entry["bound"]) == (pytest.approx(0.5), "<=")
    assert "at most 0.50x the compute" in compute.sentence(entry, "universal triggers")


def test_the_baseline_never_reaching_reads_less_than():
    curve = table({"baseline": {e: [0.0] * 4 for e in range(4)}, "monotonic": {e: [0.0, 0.1, 0.2, 0.3]
                                                                              for e in range(4)}})
    entry = compute.multiplier(curve, [0.1], n_boot=100, seed=0)["0.100"]
    assert (entry["bound"], entry["ratio"]) == ("<", pytest.approx(200 / 800))
    assert entry["ci_low"] == entry["ci_high"] == 0.0  # censored at 0 in every replicate
    assert "less than 0.25x" in compute.sentence(entry, "per-input edits")


def test_neither_reaching_gives_no_ratio():
    curve = table({"baseline": {0: [0.0, 0.1]}, "monotonic": {0: [0.0, 0.05]}})
    entry = compute.multiplier(curve, [0.5], n_boot=50, seed=0)["0.500"]
    assert entry["bound"] == "none" and math.isnan(entry["ratio"]) and math.isnan(entry["ci_low"])
    assert compute.sentence(entry, "f") == ("f: neither model reaches 0.500 nats above control within the budget "
                                            "(200 forward passes): no compute multiplier")


def test_default_targets_are_shares_of_the_weaker_models_final_damage():
    curve = table({"baseline": {0: [0.0, 0.1, 0.18], 1: [0.0, 0.1, 0.22]},  # final mean 0.2
                   "monotonic": {0: [0.0, 0.1, 0.1], 1: [0.0, 0.1, 0.1]}})
    assert compute.default_targets(curve) == {"1/4": 0.05, "1/2": 0.1}
    flat = table({"baseline": {0: [0.0, -0.1]}, "monotonic": {0: [0.1, 0.0]}})  # final damage <= 0
    assert compute.default_targets(flat) == {}
    tiny = table({"baseline": {0: [0.0, 0.0016]}, "monotonic": {0: [0.0, 0.0]}})
    assert compute.default_targets(tiny) == {"1/2": 0.001}  # a quarter, 0.0004, rounds to 0: left out


def test_the_bootstrap_resamples_examples_for_both_models_at_once():
    # monotonic = baseline + 0.1 on every example: in every replicate the two means differ by exactly 0.1
    rng = np.random.default_rng(0)
    base = {e: list(rng.normal(0, 1, 3)) for e in range(10)}
    curve = table({"baseline": base, "monotonic": {e: [d + 0.1 for d in ds] for e, ds in base.items()}})
    passes, cube = compute._cube(curve)
    boot = compute.resampled_means(cube, 50, 0)
    assert boot.shape == (50, 2, 3) and list(passes) == [100, 200, 400]
    assert np.allclose(boot[:, 1] - boot[:, 0], 0.1)


def test_curve_bands_hold_the_mean_and_widen_with_spread():
    curve = table({"baseline": {0: [0.0, 0.1], 1: [0.0, 0.3]}, "monotonic": {0: [0.1, 0.1], 1: [0.1, 0.1]}})
    bands = compute.curve_bands(curve, n_boot=200, seed=0).set_index(["model", "passes"])
    assert bands.loc[("baseline", 200), "above_control"] == pytest.approx(0.2)
    assert bands.loc[("baseline", 200), "ci_low"] == pytest.approx(0.1)  # a resample of example 0 only
    assert bands.loc[("baseline", 200), "ci_high"] == pytest.approx(0.3)
    assert bands.loc[("monotonic", 200), ["ci_low", "ci_high"]].tolist() == pytest.approx([0.1, 0.1])


def entry(ratio, bound="=", target=0.05):
    return {"target": target, "baseline": 100.0, "monotonic": 100.0 * ratio, "ratio": ratio, "ci_low": ratio / 2,
            "ci_high": ratio * 2, "bound": bound, "baseline_bound": "=", "monotonic_bound": "="}


def test_the_multiplier_across_seeds_is_a_geometric_mean_with_bounds_counted_apart():
    runs = [{"universal triggers": {"1/4": entry(2.0, target=0.04), "1/2": entry(1.0)}},
            {"universal triggers": {"1/4": entry(8.0, target=0.06), "1/2": entry(5.0, ">")}},
            {"universal triggers": {"1/4": entry(12.0, ">", target=0.05)}},
            {}]  # a run made without it
    got = compute.multiplier_across_seeds(runs).set_index(["family", "target"])
    row = got.loc[("universal triggers", "1/4")]
    assert (row["runs"], row["n"], row["lower_bounds"], row["upper_bounds"], row["no_ratio"]) == (3, 2, 1, 0, 0)
    assert row["ratio"] == pytest.approx(4.0)  # sqrt(2 x 8); the bound 12 is not averaged in
    half = st.t.ppf(0.975, 1) * (math.log(8) - math.log(2)) / math.sqrt(2) / math.sqrt(2)  # t_1 * sd / sqrt(n)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((4 * math.exp(-half), 4 * math.exp(half)))
    assert row["target_mean"] == pytest.approx(0.05)
    one = got.loc[("universal triggers", "1/2")]
    assert (one["n"], one["ratio"], one["lower_bounds"]) == (1, pytest.approx(1.0), 1) and math.isnan(one["ci_low"])
    text = compute.across_line(row.to_dict() | {"family": "universal triggers", "target": "1/4"})
    assert text.startswith("universal triggers, target 1/4 (0.050 nats above control on average): compute "
                           "multiplier 4.0x [")
    assert text.endswith("2 seeds (geometric mean, t-interval of log ratios); bound-valued runs, left out: "
                         "1 run with a lower bound")


def test_the_sentence_of_a_ratio_with_its_interval():
    text = compute.sentence(entry(2.4) | {"ci_low": 1.3, "ci_high": 5.0, "monotonic": 9600.0, "baseline": 4000.0},
                            "universal triggers")
    assert text == ("universal triggers: an attacker needs 2.4x [1.3, 5.0] the compute to reach 0.050 nats above "
                    "control against the monotonic model: more compute than against the baseline (9,600 against "
                    "4,000 forward passes)")
    assert compute.times(math.inf) == "inf" and compute.times(12.4) == "12" and compute.times(0.0432) == "0.043"
