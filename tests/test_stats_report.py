"""Tests for monollm.stats and monollm.results.report on synthetic data: intervals, tidy tables,
and findings computed from the data (never hard-coded)."""
import math

import numpy as np
import pandas as pd
import pytest

from monollm import stats
from monollm.results import answer, convergence, report, verdicts
from monollm.attacks.common import AttackResult

N_BOOT = 500


# --- stats ----------------------------------------------------------------------------

def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 30), rng.normal(1.0, 1.0, 600)
    for x in (small, large):
        lo, hi = stats.bootstrap_ci(x, N_BOOT, seed=0)
        assert lo < x.mean() < hi
    assert np.subtract(*stats.bootstrap_ci(large, N_BOOT, 0)[::-1]) < np.subtract(*stats.bootstrap_ci(small, N_BOOT, 0)[::-1])
    assert stats.bootstrap_ci(small, N_BOOT, seed=3) == stats.bootstrap_ci(small, N_BOOT, seed=3)


def test_bootstrap_ci_degenerate_inputs():
    assert stats.bootstrap_ci(np.full(5, 0.25)) == (0.25, 0.25)
    assert stats.bootstrap_ci(np.array([2.0])) == (2.0, 2.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci(np.array([])))


def test_wilson_known_values():
    lo, hi = stats.wilson(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-5) and hi == pytest.approx(0.763407, abs=1e-5)
    lo, hi = stats.wilson(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.277533, abs=1e-5)
    lo, hi = stats.wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(1 - 0.277533, abs=1e-5)
    assert all(math.isnan(v) for v in stats.wilson(0, 0))


def test_ratio_bootstrap_ci_brackets_the_ratio():
    rng = np.random.default_rng(1)
    tok = rng.integers(20, 40, 50)
    nll = tok * rng.normal(3.0, 0.3, 50)
    lo, hi = stats.ratio_bootstrap_ci(nll, tok, N_BOOT, seed=0)
    assert lo < math.exp(nll.sum() / tok.sum()) < hi


# --- perplexity tables -----------------------------------------------------------------

def per_block(seed=0, n=40, t=31):
    """Four models on the same blocks; each model's NLL per token differs by a fixed offset."""
    rng = np.random.default_rng(seed)
    tokens = np.full(n, t, dtype=np.int64)
    base = rng.normal(3.0, 0.5, n) * t  # blocks differ a lot in difficulty
    offsets = {"reference": 0.0, "baseline": 0.05, "monotonic_init": 1.0, "monotonic": 0.3}
    return {m: (base + off * t + rng.normal(0, 0.01, n) * t, tokens) for m, off in offsets.items()}


def test_perplexity_table_rows_and_ci_order():
    pb = per_block()
    df = report.perplexity_table(pb, N_BOOT, seed=0)
    assert list(df["model"]) == list(report.MODELS)
    assert {"perplexity", "mean_nll", "tokens", "blocks", "ppl_ci_low", "ppl_ci_high"} <= set(df.columns)
    for row in df.itertuples():
        nll, tok = pb[row.model]
        assert row.perplexity == pytest.approx(math.exp(nll.sum() / tok.sum()))
        assert row.mean_nll == pytest.approx(nll.sum() / tok.sum())
        assert row.tokens == tok.sum() and row.blocks == len(tok)
        assert row.ppl_ci_low < row.perplexity < row.ppl_ci_high
    ppl = df.set_index("model")["perplexity"]
    assert ppl["reference"] < ppl["baseline"] < ppl["monotonic"] < ppl["monotonic_init"]


def test_nll_difference_is_paired():
    pb = per_block()
    d = report.nll_difference(pb, "monotonic", "baseline", N_BOOT, seed=0)
    assert d["diff"] == pytest.approx(0.25, abs=0.01)
    assert d["ci_low"] < d["diff"] < d["ci_high"]
    # pairing removes the large between-block variance: the interval is far narrower than
    # the one of either model's mean NLL on its own
    assert d["ci_high"] - d["ci_low"] < 0.02
    tok = pb["baseline"][1]
    lo, hi = stats.ratio_bootstrap_ci(pb["baseline"][0], tok, N_BOOT, 0, transform=lambda x: x)
    assert hi - lo > 5 * (d["ci_high"] - d["ci_low"])
    # sign: a worse `a` gives a positive difference
    assert report.nll_difference(pb, "baseline", "monotonic", N_BOOT, 0)["diff"] == pytest.approx(-d["diff"])


def test_nll_difference_refuses_different_blocks():
    pb = per_block()
    nll, tok = pb["baseline"]
    pb["baseline"] = (nll, tok + 1)
    with pytest.raises(AssertionError, match="different blocks"):
        report.nll_difference(pb, "monotonic", "baseline", N_BOOT, 0)


# --- attack tables ----------------------------------------------------------------------

def result(model, dnll, clean=2.0, trial=0, kind="attack", source="", attack="random", **fields):
    dnll = np.asarray(dnll, dtype=float)
    ids = np.arange(len(dnll))
    c = np.full(len(dnll), clean)
    return AttackResult(attack=attack, model=model, kind=kind, example_ids=ids, clean_nll=c,
                        attacked_nll=c + dnll, trial=trial, source_model=source, **fields)


def test_attack_table_one_row_per_example():
    df = report.attack_table([result("baseline", [0.1, 0.2, 0.3]), result("monotonic", [0.0, 0.1, 0.2])])
    assert len(df) == 6 and set(df["model"]) == {"baseline", "monotonic"}
    assert (df["source_model"] == df["model"]).all()
    assert df["dnll"].to_numpy() == pytest.approx((df["attacked_nll"] - df["clean_nll"]).to_numpy())


def test_attack_summary_success_over_all_examples():
    # 10 examples, two trials each: dNLL is averaged per example, success is per trial
    t0 = [3.0, 1.5, 2.0, 0.2, 0.0, -0.5, 0.9, 0.1, 0.0, 0.0]
    t1 = [1.0, 0.5, 0.0, 0.2, 0.0, -0.5, 0.9, 0.1, 0.0, 0.0]
    df = report.attack_table([result("baseline", t0, trial=0), result("baseline", t1, trial=1)])
    s = report.attack_summary(df, (0.5, 1.0, 2.0), N_BOOT, seed=0)
    assert len(s) == 1
    row = s.iloc[0]
    mean = (np.array(t0) + np.array(t1)) / 2  # [2, 1, 1, .2, 0, -.5, .9, .1, 0, 0]
    assert row["examples"] == 10 and row["trials"] == 2
    assert row["dnll_mean"] == pytest.approx(mean.mean()) and row["dnll_median"] == pytest.approx(np.median(mean))
    assert row["rel_ppl_increase"] == pytest.approx(math.expm1(mean.mean()))
    assert row["dnll_ci_low"] <= row["dnll_mean"] <= row["dnll_ci_high"]
    assert row["clean_nll"] == pytest.approx(2.0)
    # per trial over all 10 examples (not only the damaged ones), >= at the threshold, then averaged:
    # @0.5 trial 0 has 4, trial 1 has 3 -> 0.35 (the per-example means would give 4/10)
    assert row["success@0.5"] == pytest.approx((4 + 3) / 2 / 10)
    assert row["success@1"] == pytest.approx((3 + 1) / 2 / 10)  # per-example means: 3/10
    assert row["success@2"] == pytest.approx((2 + 0) / 2 / 10)
    lo, hi = stats.wilson(2, 10)  # n = the examples, k = the averaged rate times n
    assert (row["success@1_ci_low"], row["success@1_ci_high"]) == pytest.approx((lo, hi))
    single = report.attack_summary(report.attack_table([result("baseline", t0)]), (1.0,), N_BOOT, 0).iloc[0]
    assert single["success@1"] == pytest.approx(3 / 10)
    assert (single["success@1_ci_low"], single["success@1_ci_high"]) == pytest.approx(stats.wilson(3, 10))


def test_attack_summary_compute_columns():
    rows = [result("baseline", [1.0, 1.0]), result("baseline", [0.0, 0.0], trial=1),
            result("baseline", [0.5, 0.5], kind="control")]
    rows[0].forward_passes, rows[0].candidate_evals = 100, 30
    rows[1].forward_passes, rows[1].candidate_evals = 50, 20
    s = report.attack_summary(report.attack_table(rows), (0.5,), N_BOOT, 0).set_index("kind")
    assert (s.loc["attack", "forward_passes"], s.loc["attack", "candidate_evals"]) == (150, 50)  # summed over trials
    assert (s.loc["control", "forward_passes"], s.loc["control", "candidate_evals"]) == (0, 0)


def guided_rows(rho_baseline, rho_monotonic, ranking="gradient", attack="hotflip"):
    """A searched attack on both models (the search's guidance on every row it produced, transfer
    included), a control per model, and the search-free `random` attack."""
    found = {"baseline": dict(ranking=ranking, guidance_spearman=rho_baseline, guidance_n=120),
             "monotonic": dict(ranking=ranking, guidance_spearman=rho_monotonic, guidance_n=80)}
    return [result("baseline", [1.0, 2.0], attack=attack, **found["baseline"]),
            result("monotonic", [0.5, 1.0], attack=attack, **found["monotonic"]),
            result("monotonic", [0.8, 0.9], kind="transfer", source="baseline", attack=attack, **found["baseline"]),
            result("baseline", [0.1, 0.2], kind="control", attack=attack),
            result("monotonic", [0.1, 0.1], kind="control", attack=attack),
            result("baseline", [0.3, 0.3]), result("monotonic", [0.2, 0.2])]


def test_attack_summary_carries_the_search_guidance():
    s = report.attack_summary(report.attack_table(guided_rows(0.25, 0.7)), (0.5,), N_BOOT, 0)
    s = s.set_index(["attack", "kind", "model"])
    assert tuple(s.loc[("hotflip", "attack", "baseline"), list(report.GUIDANCE)]) == ("gradient", 0.25, 120)
    assert tuple(s.loc[("hotflip", "attack", "monotonic"), list(report.GUIDANCE)]) == ("gradient", 0.7, 80)
    # a transfer row shows its source's search
    assert tuple(s.loc[("hotflip", "transfer", "monotonic"), list(report.GUIDANCE)]) == ("gradient", 0.25, 120)
    for key in (("hotflip", "control", "baseline"), ("random", "attack", "monotonic")):  # no search made them
        assert s.loc[key, "ranking"] == "" and np.isnan(s.loc[key, "guidance_spearman"])
        assert s.loc[key, "guidance_n"] == 0


def test_guidance_table_has_one_row_per_searched_model_and_none_for_controls():
    df = report.attack_table(guided_rows(0.25, float("nan"), ranking="exact"))
    table = report.guidance_table(df)
    assert list(table.columns) == ["attack", "model", "ranking", "guidance_spearman", "guidance_n"]
    assert list(zip(table["attack"], table["model"])) == [("hotflip", "baseline"), ("hotflip", "monotonic")]
    assert list(table["ranking"]) == ["exact", "exact"] and list(table["guidance_n"]) == [120, 80]
    assert table["guidance_spearman"].iloc[0] == 0.25 and np.isnan(table["guidance_spearman"].iloc[1])
    # the summary gives the same rows
    summary = report.attack_summary(df, (0.5,), N_BOOT, 0)
    pd.testing.assert_frame_equal(report.guidance_table(summary), table)


@pytest.mark.parametrize("offset", [-0.05, 0.05])
def test_findings_say_when_the_first_order_ranking_is_weak(offset):
    rho = report.WEAK_GUIDANCE + offset  # just below, or just above the threshold
    f = findings(report.attack_table(guided_rows(rho, 0.9)))
    g = f["guidance"]
    assert set(g) == {"hotflip"}  # random has no search, so no guidance
    assert g["hotflip"]["ranking"] == "gradient"
    assert g["hotflip"]["spearman"] == pytest.approx({"baseline": rho, "monotonic": 0.9})
    assert g["hotflip"]["swaps"] == {"baseline": 120, "monotonic": 80}
    if offset < 0:
        note = g["hotflip"]["note"]
        assert "barely predicts the exact loss change" in note and f"{rho:+.2f} over 120 swaps" in note
        assert "monotonic" not in note and "ranks its candidates by that estimate" in note
    else:
        assert "note" not in g["hotflip"]
    # a negative rho (worse than chance) is weak too; a weak estimate the search did not rank by
    # is said not to matter
    exact = findings(report.attack_table(guided_rows(-rho, 0.9, ranking="exact")))["guidance"]["hotflip"]
    assert "(ranking: exact), so its results do not rest on it" in exact["note"]


def test_findings_guidance_only_where_measured():
    g = findings(report.attack_table(guided_rows(float("nan"), float("nan"))))["guidance"]["hotflip"]
    assert g == {"ranking": "gradient", "spearman": {}, "swaps": {}}  # no number, no sentence


def test_a_table_without_the_guidance_columns_still_summarizes():
    old = report.attack_table(guided_rows(0.1, 0.1)).drop(columns=list(report.GUIDANCE))
    s = report.attack_summary(old, (0.5,), N_BOOT, 0)
    assert len(s) == 7 and not set(report.GUIDANCE) & set(s.columns)
    assert report.guidance_table(old).empty and report.guidance_table(s).empty
    assert findings(old)["guidance"] == {}
    # rows of an older branch concatenated with a newer one's: no search information, not an error
    mixed = pd.concat([old[old.attack == "random"], report.attack_table(guided_rows(0.1, 0.1))
                       .query("attack == 'hotflip'")], ignore_index=True)
    s = report.attack_summary(mixed, (0.5,), N_BOOT, 0).set_index(["attack", "kind", "model"])
    assert s.loc[("random", "attack", "baseline"), "ranking"] == ""
    assert s.loc[("random", "attack", "baseline"), "guidance_n"] == 0
    assert list(report.guidance_table(mixed)["model"]) == ["baseline", "monotonic"]


def test_attack_summary_separates_models_and_kinds():
    df = report.attack_table([result("baseline", [1.0, 1.0]), result("monotonic", [0.0, 0.0]),
                              result("baseline", [0.0, 3.0], kind="control")])
    s = report.attack_summary(df, (0.5,), N_BOOT, 0).set_index(["model", "kind"])
    assert s.loc[("baseline", "attack"), "success@0.5"] == 1.0
    assert s.loc[("monotonic", "attack"), "success@0.5"] == 0.0
    assert s.loc[("baseline", "control"), "success@0.5"] == 0.5


def flip_table():
    """A HotFlip-like table: flips found on each model, scored on both; per source, a primary control
    (at that source's positions) and a random-positions control on both models."""
    dnll = {("attack", "baseline", "baseline"): 3.0, ("transfer", "monotonic", "baseline"): 2.0,
            ("attack", "monotonic", "monotonic"): 1.0, ("transfer", "baseline", "monotonic"): 1.5,
            ("control", "baseline", "baseline"): 0.7, ("control", "monotonic", "baseline"): 0.6,
            ("control", "monotonic", "monotonic"): 0.2, ("control", "baseline", "monotonic"): 0.3,
            ("control_random_positions", "baseline", "baseline"): 0.05,
            ("control_random_positions", "monotonic", "baseline"): 0.04,
            ("control_random_positions", "monotonic", "monotonic"): 0.03,
            ("control_random_positions", "baseline", "monotonic"): 0.02}
    noise = np.random.default_rng(0).normal(0, 0.05, 30)
    rows = [result(m, d + noise, kind=k, source=src, attack="hotflip", trial=t)
            for (k, m, src), d in dnll.items() for t in range(1 if k in ("attack", "transfer") else 2)]
    return report.attack_table(rows), dnll


def test_above_control_pairs_with_the_sources_positions():
    df, dnll = flip_table()
    s = report.attack_summary(df, (0.5,), N_BOOT, 0).set_index(["kind", "model", "source_model"])
    for (kind, model, source), d in dnll.items():
        row = s.loc[(kind, model, source)]
        if kind.startswith("control"):
            assert np.isnan(row["above_control"]) and row["control_source"] == ""
            continue
        # the control on `model` at `source`'s positions, not the model's own or the random positions
        want = d - dnll[("control", model, source)]
        assert row["control_source"] == source
        assert row["above_control"] == pytest.approx(want, abs=1e-9)
        assert row["control_dnll"] == pytest.approx(dnll[("control", model, source)], abs=0.05)
        assert row["control_random_positions_dnll"] == pytest.approx(
            dnll[("control_random_positions", model, source)], abs=0.05)
        assert row["above_control_ci_low"] <= row["above_control"] <= row["above_control_ci_high"]
    comp = verdicts.robustness_above_control(df, "hotflip", N_BOOT, 0)
    want = (dnll[("attack", "baseline", "baseline")] - dnll[("control", "baseline", "baseline")]) - (
        dnll[("attack", "monotonic", "monotonic")] - dnll[("control", "monotonic", "monotonic")])
    assert comp["diff"] == pytest.approx(want, abs=1e-9) and comp["verdict"] == "monotonic more robust"


def test_above_control_without_per_source_controls_uses_the_models_own():
    # UAT: random triggers do not depend on the model a trigger was found on: one control per model
    rows = [result("baseline", [2.0] * 5, attack="uat"), result("monotonic", [1.0] * 5, kind="transfer",
                                                                  source="baseline", attack="uat"),
            result("baseline", [0.5] * 5, kind="control", attack="uat"),
            result("monotonic", [0.25] * 5, kind="control", attack="uat")]
    s = report.attack_summary(report.attack_table(rows), (0.5,), N_BOOT, 0).set_index(["kind", "model"])
    assert s.loc[("attack", "baseline"), "above_control"] == pytest.approx(1.5)
    transfer = s.loc[("transfer", "monotonic")]
    assert transfer["above_control"] == pytest.approx(0.75) and transfer["control_source"] == "monotonic"


def test_above_control_refuses_a_missing_source_control():
    df, _ = flip_table()
    gone = df[~((df.kind == "control") & (df.source_model == "baseline") & (df.model == "monotonic"))]
    s = report.attack_summary(gone, (0.5,), N_BOOT, 0).set_index(["kind", "model", "source_model"])
    # no control at baseline's positions on monotonic: no number rather than another control's
    assert np.isnan(s.loc[("transfer", "monotonic", "baseline"), "above_control"])


# --- findings ------------------------------------------------------------------------------

def constraint(negative=0):
    return report.constraint_table({
        "applied": {"matrices": 4, "negative": 0, "min": 1e-4, "parametrized": 4},
        "after_materializing": {"matrices": 4, "negative": negative, "min": 1e-4, "parametrized": 0},
    })


def attacks_df(d_baseline, d_monotonic, n=40, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.1, n)
    rows = [result("baseline", d_baseline + noise), result("monotonic", d_monotonic + noise),
            # a transfer row with huge damage must not enter the comparison
            result("monotonic", np.full(n, 9.0), kind="transfer", source="baseline")]
    return report.attack_table(rows)


def findings(attacks, hidden_act="gelu", neg=0, pb=None):
    pb = per_block() if pb is None else pb
    return answer.findings(report.perplexity_table(pb, N_BOOT, 0), pb, constraint(neg), attacks,
                           hidden_act, N_BOOT, 0)


def test_findings_baseline_more_damaged():
    f = findings(attacks_df(2.0, 0.5))
    comp = f["robustness"]["random/attack"]
    assert comp["verdict"] == "monotonic more robust"
    assert comp["diff"] == pytest.approx(1.5) and comp["ci_low"] > 0 and comp["examples"] == 40
    assert comp["dnll_baseline"] == pytest.approx(2.0, abs=0.05)
    assert "random/transfer" not in f["robustness"]


def test_findings_monotonic_more_damaged():
    comp = findings(attacks_df(0.5, 2.0))["robustness"]["random/attack"]
    assert comp["verdict"] == "baseline more robust" and comp["ci_high"] < 0


def test_findings_identical_means_no_difference():
    comp = findings(attacks_df(1.0, 1.0))["robustness"]["random/attack"]
    assert comp["verdict"] == "no significant difference" and comp["diff"] == pytest.approx(0.0)
    # a real but noisy difference whose interval spans 0 is not a finding either
    rng = np.random.default_rng(5)
    df = report.attack_table([result("baseline", rng.normal(1.0, 1.0, 30)),
                              result("monotonic", rng.normal(1.0, 1.0, 30))])
    assert findings(df)["robustness"]["random/attack"]["verdict"] == "no significant difference"


def test_findings_perplexity_and_constraint_facts():
    f = findings(attacks_df(1.0, 1.0))
    ppl = f["perplexity"]
    assert set(ppl) == set(report.MODELS)
    assert f["perplexity_ratio_monotonic_vs_baseline"] == pytest.approx(ppl["monotonic"] / ppl["baseline"])
    assert f["perplexity_ratio_monotonic_vs_baseline"] == pytest.approx(math.exp(0.25), rel=0.02)
    assert f["constraint_applied_raises_ppl"] and f["recovery_lowers_ppl"]
    assert f["perplexity_cost_significant"] and f["nll_cost_monotonic_minus_baseline"]["diff"] > 0
    assert f["constraint_holds"] and f["constrained_matrices"] == 4
    assert not f["mlp_monotone"] and "not monotone" in f["activation_note"]
    assert findings(attacks_df(1.0, 1.0), neg=3)["constraint_holds"] is False
    relu = findings(attacks_df(1.0, 1.0), hidden_act="relu")
    assert relu["mlp_monotone"] and "not monotone" not in relu["activation_note"]


def test_findings_follow_the_data_not_the_names():
    # swap the roles in the perplexity data: every verdict must flip with it
    pb = per_block()
    pb["monotonic"], pb["monotonic_init"] = pb["monotonic_init"], pb["monotonic"]
    pb["reference"] = tuple(a.copy() for a in pb["monotonic"])  # now worse than monotonic_init
    f = findings(attacks_df(1.0, 1.0), pb=pb)
    assert not f["recovery_lowers_ppl"] and not f["constraint_applied_raises_ppl"]


def test_findings_without_attacks():
    assert findings(pd.DataFrame())["robustness"] == {}


# --- convergence at the end of training ------------------------------------------------


def test_slope_interval_matches_a_hand_fit():
    x = np.arange(10.0)
    y = 2.0 - 0.3 * x + np.array([0.1, -0.1, 0.05, 0.0, -0.05, 0.1, -0.1, 0.0, 0.05, -0.05])
    slope, lo, hi = stats.slope_interval(x, y)
    b = np.polyfit(x, y, 1)[0]
    resid = y - np.polyval(np.polyfit(x, y, 1), x)
    se = math.sqrt((resid ** 2).sum() / 8 / ((x - x.mean()) ** 2).sum())
    assert slope == pytest.approx(b) and hi - slope == pytest.approx(2.306004 * se, rel=1e-5)
    assert lo < slope < hi < 0
    assert math.isnan(stats.slope_interval([0.0, 1.0], [1.0, 2.0])[1])


def history(arm, slope, steps=80, seed=0, val_every=20):
    rng = np.random.default_rng(seed)
    return [{"arm": arm, "step": s, "loss": 3.0 + slope * s + rng.normal(0, 0.01),
             "val_loss": (3.0 + slope * s) if s % val_every == 0 else float("nan")}
            for s in range(1, steps + 1)]


def test_convergence_tells_a_falling_arm_from_a_flat_one():
    table = report.training_table({"baseline": history("baseline", 0.0),
                                   "monotonic": history("monotonic", -0.002, seed=1)})
    conv = convergence.convergence(table)
    assert conv["monotonic"]["still_falling"] and not conv["baseline"]["still_falling"]
    assert conv["monotonic"]["slope_per_100_steps"] == pytest.approx(-0.2, abs=0.03)
    assert conv["monotonic"]["steps"] == [61, 80]  # the last quarter of 80 steps
    assert conv["monotonic"]["val_steps"] == [60, 80]
    assert conv["monotonic"]["val_loss_last"] == pytest.approx(3.0 - 0.16)
    note = convergence.note(conv)
    assert "monotonic still improving" in note and "baseline still" not in note
    flat = convergence.convergence(report.training_table({"baseline": history("baseline", 0.0)}))
    assert "no arm's training loss was still measurably falling" in convergence.note(flat)


def test_findings_report_convergence_only_when_given_the_histories():
    attacks = attacks_df(1.0, 1.0)
    assert "convergence" not in findings(attacks)
    pb = per_block()
    table = report.training_table({"baseline": history("baseline", 0.0), "monotonic": history("monotonic", -0.002)})
    f = answer.findings(report.perplexity_table(pb, N_BOOT, 0), pb, constraint(), attacks, "gelu", N_BOOT, 0,
                        training=table)
    assert f["convergence"]["monotonic"]["still_falling"] and "monotonic still improving" in f["convergence_note"]
