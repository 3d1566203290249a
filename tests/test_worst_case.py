"""The worst case, the masking diagnostics and the headline that stands on them: a planted failed
search, the per-example maximum, the strictly universal choice, the budget curve's convergence flag."""
import copy
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from attack_models import CONT, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import run_attack, uat
from monollm.results import answer, diagnostics, headline, members, report, worst_case

N_BOOT = 300


def masked(m):
    """`m` with its input gradient zeroed whenever one is taken: the hidden states entering the first
    layer are replaced by `h.detach() + 0 * h`, equal in value (every score is unchanged) but with no
    gradient. A gradient search against it ranks its candidates blindly: it fails, while the model
    is exactly as vulnerable as `m`."""
    m = copy.deepcopy(m)

    def hook(module, args, kwargs):
        if not torch.is_grad_enabled():
            return None
        h = args[0] if args else kwargs["hidden_states"]
        h = h.detach() + 0 * h
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    m.gpt_neox.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    return m


@pytest.fixture(scope="module")
def planted_run():
    """uat against a planted model (baseline) and the same model with its gradient masked
    (monotonic): the trigger found on the baseline transfers to the masked twin in full."""
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    models = {"baseline": weak, "monotonic": masked(weak)}
    params = uat.UATConfig(trigger_len=3, top_k=2, widen=1, steps=3, restarts=1, controls=3, guidance_sample=16)
    split = {"test": examples(8, 0), "attack_opt": examples(8, 1)}
    results = run_attack("uat", models, tokenizer(), split, CONT, 16, params, seed=0, log=lambda _: None)
    return token, report.attack_table(results)


def test_the_mask_changes_no_score_and_hides_the_gradient():
    m = plant(model(0), unused_symbol(), sink=unused_symbol(skip=(unused_symbol(),)))
    twin, ids = masked(m), torch.as_tensor(examples(8, 0))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, twin(ids).logits)
    emb = twin.get_input_embeddings()(ids).detach().requires_grad_(True)
    twin(inputs_embeds=emb).logits.sum().backward()
    assert emb.grad is not None and float(emb.grad.abs().max()) == 0.0


def test_a_failed_search_is_not_called_robustness(planted_run):
    token, df = planted_run
    own = df[(df.kind == "attack") & (df.model == df.source_model)].groupby("model")["dnll"].mean()
    transfer = df[(df.kind == "transfer") & (df.model == "monotonic")]["dnll"].mean()
    assert own["baseline"] > 5 and own["monotonic"] < 1 < transfer  # the planted failure happened
    f = answer.mark_evidence({"robustness_above_control": {"uat": report_verdict(df)},
                              **answer.robustness_findings(df, worst_case.families(df, ["round_trip"]), N_BOOT, 0)})
    # the search's own verdict calls the masked twin more robust ...
    assert f["robustness_above_control"]["uat"]["verdict"] == "monotonic more robust"
    # ... which the diagnostics refuse as evidence, and the worst case does not repeat
    flag = f["diagnostics"]["uat"]["monotonic"]["transfer_beats_attack"]
    assert flag["flag"] is True and flag["ci_low"] > 0
    assert "transfer_beats_attack on monotonic" in f["robustness_above_control"]["uat"]["not_evidence"]
    worst = f["worst_case"]["universal triggers"]
    assert worst["verdict"] != "monotonic more robust"
    # every example's worst case on the masked twin is a trigger found on the baseline
    assert sum(worst["carried_by"]["monotonic"].values()) == 8
    assert all(label.endswith("from baseline") for label in worst["carried_by"]["monotonic"])
    text = " ".join(headline.headline({**f, **cost_findings()}))
    first = text.split(". ")[0]
    assert "less than the baseline" not in first and "more robust" not in first
    assert "not evidence of robustness: transfer_beats_attack on monotonic" in text
    assert "One seed stands behind these verdicts" in text


def report_verdict(df):
    from monollm.results import verdicts

    return verdicts.robustness_above_control(df, "uat", N_BOOT, 0)


def cost_findings() -> dict:
    return {"nll_cost_monotonic_minus_baseline": {"diff": 0.1, "ci_low": 0.05, "ci_high": 0.15},
            "perplexity_ratio_monotonic_vs_baseline": 1.1, "perplexity_cost_significant": True}


def synthetic(seed: int = 0, n: int = 12) -> pd.DataFrame:
    """Rows of three trigger attacks and two per-input searches on two models: own searches,
    transfers, restarts, controls, with random damage on each half of the scored tokens; every
    member trigger distinct."""
    rng, rows, ids = np.random.default_rng(seed), [], iter(range(10_000))

    def add(attack, kind, model, source, trial=0, scale=1.0, opt=np.nan):
        trigger = [next(ids)] if attack not in ("hotflip", "random_flips") else []
        for e in range(n):
            even, odd = rng.gamma(2.0, scale, size=2)
            rows.append({"attack": attack, "kind": kind, "model": model, "source_model": source, "trial": trial,
                         "example": e, "dnll": float((even + odd) / 2), "dnll_even": float(even),
                         "dnll_odd": float(odd), "forward_passes": 1000,
                         "ranking": "gradient" if kind == "attack" else "", "trigger_ids": trigger,
                         "attacked_ids": [] if trigger else [next(ids)], "guidance_spearman": 0.5,
                         "opt_dnll": opt, "clean_nll": 3.0, "attacked_nll": 4.0})

    for attack in ("uat", "gcg", "random_search", "hotflip", "random_flips"):
        for m in ("baseline", "monotonic"):
            other = "monotonic" if m == "baseline" else "baseline"
            add(attack, "attack", m, m, opt=rng.random())
            add(attack, "transfer", m, other, opt=rng.random())
            for t in range(3):
                add(attack, "control", m, m, trial=t, scale=0.1)
            if attack not in ("hotflip", "random_flips"):
                add(attack, "restart", m, m, trial=1, opt=rng.random())
    return pd.DataFrame(rows)


def row(attack, kind, model, even, odd, source=None, ids=(1,), example=0, trial=0, fraction=np.nan, opt=np.nan):
    """One hand-built attack-table row: damage `even` and `odd` on the two halves of the scored tokens."""
    return {"attack": attack, "kind": kind, "model": model, "source_model": source or model, "trial": trial,
            "example": example, "dnll": (even + odd) / 2, "dnll_even": even, "dnll_odd": odd,
            "trigger_ids": list(ids), "attacked_ids": [], "budget_fraction": fraction, "forward_passes": 100,
            "ranking": "gradient" if kind == "attack" else "", "opt_dnll": opt, "guidance_spearman": 0.5}


def family(df: pd.DataFrame, name: str, threat_models=("round_trip",)) -> worst_case.Family:
    """The family `name` of df as the join builds it (worst_case.families)."""
    return next(f for f in worst_case.families(df, list(threat_models)) if f.family == name)


def hand_table() -> pd.DataFrame:
    """Example 0 on the baseline: three members and three control draws, every number chosen by hand.

    member                      even  odd  all       control  even  odd  all
    uat attack                   0.9  0.1  0.5       d1        0.0  0.0  0.0
    gcg attack                   0.2  0.6  0.4       d2        0.4  0.0  0.2
    random_search restart 1      0.5  0.5  0.5       d3        0.0  0.2  0.1
    """
    return pd.DataFrame([row("uat", "attack", "baseline", 0.9, 0.1, ids=(1,)),
                         row("gcg", "attack", "baseline", 0.2, 0.6, ids=(2,)),
                         row("random_search", "restart", "baseline", 0.5, 0.5, ids=(3,), trial=1),
                         row("uat", "control", "baseline", 0.0, 0.0, ids=(7,), trial=0),
                         row("gcg", "control", "baseline", 0.4, 0.0, ids=(8,), trial=0),
                         row("random_search", "control", "baseline", 0.0, 0.2, ids=(9,), trial=0)])


def test_the_lead_worst_case_is_chosen_on_one_half_of_the_tokens_and_read_on_the_other():
    detail = worst_case.example_table(hand_table(), "universal triggers").iloc[0]
    # chosen on even: uat (0.9), read on odd: 0.1; chosen on odd: gcg (0.6), read on even: 0.2
    assert detail["dnll_cross"] == pytest.approx(0.15)
    assert (detail["member_even"], detail["member_odd"]) == ("uat attack", "gcg attack")
    # in-sample: uat and the restart tie at 0.5; the tie goes to the search's own trigger
    assert detail["dnll_in_sample"] == pytest.approx(0.5) and detail["member_in_sample"] == "uat attack"
    # 3 members, 3 draws: the matched control is the maximum over all three draws, chosen the same way
    assert detail["control_in_sample"] == pytest.approx(0.2) and detail["control_cross"] == pytest.approx(0.0)
    lead = worst_case.per_example_worst(hand_table(), "universal triggers").iloc[0]
    assert lead["above_control"] == pytest.approx(0.15) and lead["member"] == "uat attack / gcg attack"
    optimistic = worst_case.per_example_worst(hand_table(), "universal triggers", "per-example, in-sample").iloc[0]
    assert optimistic["above_control"] == pytest.approx(0.3)


def test_the_matched_null_is_the_expected_maximum_over_every_subset_of_draws():
    rng = np.random.default_rng(5)
    draws = rng.normal(size=(7, 3))
    for k in (1, 2, 4, 7):
        subsets = list(itertools.combinations(range(7), k))
        in_sample = np.mean([draws[list(c), 0].max() for c in subsets])
        cross = np.mean([(draws[c[int(np.argmax(draws[list(c), 1]))], 2] + draws[c[int(np.argmax(draws[list(c), 2]))], 1])
                         / 2 for c in subsets])
        got = worst_case.matched_null(draws, k)
        assert got == pytest.approx((in_sample, cross))
    # more members than draws: draws with replacement, k = 3 over [0, 1]: the maximum is 1 unless all are 0
    assert worst_case.matched_null(np.array([[0.0] * 3, [1.0] * 3]), 3)[0] == pytest.approx(7 / 8)


def test_a_family_of_random_members_reads_zero_above_its_matched_control():
    """K random 'members' drawn like the control: no better than random, so 0 above control within the
    CI, where a maximum over K minus the mean control reads well above 0."""
    rng, rows, k, n = np.random.default_rng(0), [], 10, 300
    for m in ("baseline", "monotonic"):
        for e in range(n):
            for kind, count in (("restart", k), ("control", 3 * k)):
                for t in range(count):
                    even, odd = rng.normal(0, 0.3, size=2)
                    rows.append(row("uat", kind, m, even, odd, ids=(t + 100 * (kind == "control"),), example=e,
                                    trial=t))
    df = pd.DataFrame(rows)
    table = worst_case.table(worst_case.families(df, ["round_trip"]), N_BOOT, 0).set_index(["variant", "model"])
    for m in ("baseline", "monotonic"):
        lead = table.loc[("per-example", m)]
        assert lead["members"] == k and lead["ci_low"] < 0 < lead["ci_high"]
        assert abs(lead["above_control"]) < 0.05
        naive = df[(df.model == m) & (df.kind == "restart")].groupby("example")["dnll"].max().mean() \
            - df[(df.model == m) & (df.kind == "control")]["dnll"].mean()
        assert naive > 0.2  # what a maximum minus a mean control would have called damage


def test_members_are_distinct_perturbations_labelled_by_where_they_were_found():
    """The baseline's random_search reports trigger 5; the monotonic model's restart 0 and its reported
    trigger are both 6. On the baseline, 6 is one member: a transfer from the monotonic model."""
    df = pd.DataFrame([row("random_search", "attack", "baseline", 0.3, 0.3, ids=(5,)),
                       row("random_search", "restart", "baseline", 0.3, 0.3, ids=(5,), trial=0),
                       row("random_search", "restart", "baseline", 0.4, 0.4, source="monotonic", ids=(6,)),
                       row("random_search", "transfer", "baseline", 0.4, 0.4, source="monotonic", ids=(6,)),
                       row("uat", "budget", "baseline", 0.1, 0.1, ids=(5,), trial=3, fraction=1.0),
                       row("uat", "control", "baseline", 0.0, 0.0, ids=(9,))])
    got = members.members(df, "universal triggers")
    assert list(got["member"]) == ["random_search attack", "random_search transfer from monotonic"]
    assert list(got["copies"]) == [3, 2]
    table = worst_case.table(worst_case.families(df, ["round_trip"]), N_BOOT, 0).set_index("variant")
    assert table.loc["per-example", "members"] == 2


def test_restarts_and_budget_curve_points_are_members():
    """Example 0's worst member is a restart, example 1's a budget-curve point (hand-built damages)."""
    rows = []
    for e, (restart, curve) in enumerate([(0.8, 0.2), (0.1, 0.7)]):
        rows += [row("uat", "attack", "baseline", 0.3, 0.3, ids=(1,), example=e),
                 row("uat", "restart", "baseline", restart, restart, ids=(2,), example=e, trial=1),
                 row("gcg", "budget", "baseline", curve, curve, ids=(3,), example=e, trial=0, fraction=0.5),
                 row("uat", "control", "baseline", 0.0, 0.0, ids=(9,), example=e)]
    got = worst_case.per_example_worst(pd.DataFrame(rows), "universal triggers")
    assert list(got["dnll"]) == pytest.approx([0.8, 0.7])
    assert list(got["member"]) == ["uat restart 1", "gcg budget 0.5"]


def test_the_family_control_is_taken_on_the_model_scored_not_the_model_searched():
    """HotFlip's controls at the baseline's flip positions scored on the monotonic model (0.3) count for
    the monotonic model, those at the monotonic model's positions scored on the baseline (0.1) for the
    baseline."""
    rows = []
    for e in range(4):
        for m, other, ctrl in (("baseline", "monotonic", 0.1), ("monotonic", "baseline", 0.3)):
            rows.append(row("hotflip", "attack", m, 1.0, 1.0, ids=(), example=e))
            rows[-1]["attacked_ids"] = [e, 1]
            rows += [row("hotflip", "control", m, ctrl, ctrl, source=other, ids=(), example=e, trial=t)
                     for t in range(2)]
    got = worst_case.per_example_worst(pd.DataFrame(rows), "per-input edits")
    assert got.groupby("model")["control_dnll"].mean().to_dict() == pytest.approx({"baseline": 0.1, "monotonic": 0.3})


def curve_rows(dnll_by_fraction: dict) -> pd.DataFrame:
    """uat's budget curve on the monotonic model: per fraction, the per-example damages given."""
    rows = []
    for i, (fraction, damages) in enumerate(dnll_by_fraction.items()):
        for e, d in enumerate(damages):
            rows.append({"attack": "uat", "kind": worst_case.CURVE, "model": "monotonic", "source_model": "monotonic",
                         "trial": i, "example": e, "budget_fraction": fraction, "forward_passes": int(8000 * fraction),
                         "dnll": d})
    return pd.DataFrame(rows)


def test_not_converged_is_a_paired_test_of_the_last_doubling():
    # every example rises by exactly 0.012 at the last doubling: small, but the paired CI is [0.012, 0.012]
    small = curve_rows({0.25: [0.1] * 8, 0.5: [0.5, 0.9] * 4, 1.0: [0.512, 0.912] * 4})
    flag = diagnostics.not_converged(small, "uat", "monotonic", N_BOOT, 0)
    assert flag["flag"] is True and flag["rise"] == pytest.approx(0.012) and flag["ci_low"] == pytest.approx(0.012)
    assert flag["fractions"] == [0.5, 1.0]
    # half the examples rise by 0.3, half fall by 0.3: a rise of 0 on average, not flagged
    flat = curve_rows({0.5: [0.5] * 8, 1.0: [0.8, 0.2] * 4})
    got = diagnostics.not_converged(flat, "uat", "monotonic", N_BOOT, 0)
    assert got["flag"] is False and got["rise"] == pytest.approx(0.0) and got["ci_low"] < 0 < got["ci_high"]
    assert diagnostics.not_converged(flat, "gcg", "monotonic", N_BOOT, 0) == {"flag": None}
    curve = diagnostics.budget_curve(small, N_BOOT, 0)
    assert list(curve["fraction"]) == [0.25, 0.5, 1.0] and list(curve["forward_passes"]) == [2000, 4000, 8000]


def test_gradient_free_search_beating_the_gradient_at_equal_passes_is_flagged():
    df = synthetic(2)
    own = (df.attack == "uat") & (df.kind == "attack") & (df.model == "baseline")
    free = (df.attack == "random_search") & (df.kind == "attack") & (df.model == "baseline")
    df.loc[free, "dnll"] = df.loc[own, "dnll"].to_numpy() + 0.5
    df.loc[free, "ranking"] = "random"
    got = diagnostics.gradient_free_beats_gradient(df, "uat", "baseline", N_BOOT, 0)
    assert got["flag"] is True and got["diff"] == pytest.approx(0.5)
    df.loc[free, "forward_passes"] = 5000  # five times the gradient search's budget: not a fair comparison
    assert diagnostics.gradient_free_beats_gradient(df, "uat", "baseline", N_BOOT, 0)["flag"] is None
    assert diagnostics.gradient_free_beats_gradient(df, "random_search", "baseline", N_BOOT, 0)["flag"] is None


def test_the_second_threat_model_is_checked_against_its_own_gradient_free_search():
    df = synthetic(2)
    second = df.assign(attack=df["attack"] + "@printable")
    own = (second.attack == "uat@printable") & (second.kind == "attack") & (second.model == "baseline")
    free = (second.attack == "random_search@printable") & (second.kind == "attack") & (second.model == "baseline")
    second.loc[free, "dnll"] = second.loc[own, "dnll"].to_numpy() + 0.5
    first_free = (df.attack == "random_search") & (df.kind == "attack") & (df.model == "baseline")
    df.loc[first_free, "dnll"] = 0.0  # the first threat model's random search finds nothing
    both = pd.concat([df, second], ignore_index=True)
    got = diagnostics.gradient_free_beats_gradient(both, "uat@printable", "baseline", N_BOOT, 0)
    assert got["flag"] is True and got["diff"] == pytest.approx(0.5)


def test_per_input_edits_are_checked_against_random_flips():
    df = synthetic(6)
    own = (df.attack == "hotflip") & (df.kind == "attack") & (df.model == "monotonic")
    free = (df.attack == "random_flips") & (df.kind == "attack") & (df.model == "monotonic")
    df.loc[free, "dnll"] = df.loc[own, "dnll"].to_numpy() + 0.25
    assert diagnostics.gradient_free_beats_gradient(df, "hotflip", "monotonic", N_BOOT, 0)["flag"] is True


def test_a_family_verdict_is_flagged_on_the_model_it_favours():
    """The monotonic model is damaged less, but the family has no gradient-free member and the attack that
    carried the monotonic model's examples is not converged there."""
    rows = []
    for e in range(10):
        for m, d in (("baseline", 1.0), ("monotonic", 0.2)):
            rows += [row("uat", "attack", m, d + 0.01 * e, d + 0.01 * e, ids=(1 if m == "baseline" else 2,), example=e),
                     row("uat", "budget", m, d / 2, d / 2, ids=(3,), example=e, trial=0, fraction=0.5),
                     row("uat", "budget", m, d + 0.01 * e, d + 0.01 * e, ids=(1 if m == "baseline" else 2,),
                         example=e, trial=1, fraction=1.0),
                     row("uat", "control", m, 0.0, 0.0, ids=(9,), example=e)]
    df = pd.DataFrame(rows)
    f = answer.robustness_findings(df, worst_case.families(df, ["round_trip"]), N_BOOT, 0)
    worst = f["worst_case"]["universal triggers"]
    assert worst["verdict"] == "monotonic more robust"
    assert worst["not_evidence"] == ["no_gradient_free_member on monotonic",
                                     "not_converged (uat on monotonic) on monotonic"]
    assert "not evidence of robustness: no_gradient_free_member on monotonic" in headline.worst_case_sentence(f)


def test_the_join_gathers_every_branch_kind_and_tolerates_older_branches():
    from types import SimpleNamespace

    rows = synthetic().head(4)
    branches = [SimpleNamespace(attack_rows=rows.iloc[:2], token_text={1: "a"}),
                SimpleNamespace(attack_rows=rows.iloc[2:]),  # a branch cloned from a run before token_text
                SimpleNamespace(downstream_results={"table": pd.DataFrame({"x": [1]}), "items": pd.DataFrame()}),
                SimpleNamespace(order_results=pd.DataFrame({"model": ["baseline"]}))]
    got = answer.gather(branches)
    assert got.attacks.equals(rows.reset_index(drop=True)) and got.token_text == {1: "a"}
    assert list(got.downstream["x"]) == [1] and list(got.order_preservation["model"]) == ["baseline"]
    bare = answer.gather(branches[:2])
    assert bare.order_preservation is None and bare.downstream.empty and "task" in bare.downstream_items.columns


def test_each_threat_model_has_its_own_worst_case_and_the_headline_names_both():
    first, second = synthetic(3), synthetic(4)
    second["attack"] = second["attack"] + "@printable"  # the branches of the second threat model
    df = pd.concat([first.assign(tokens="round_trip"), second.assign(tokens="printable")], ignore_index=True)
    f = answer.robustness_findings(df, worst_case.families(df, ["round_trip", "printable"]), N_BOOT, 0)
    assert set(f["worst_case"]) == {"universal triggers", "universal triggers, universal", "per-input edits",
                                    "universal triggers [printable]", "universal triggers, universal [printable]",
                                    "per-input edits [printable]"}
    # each threat model's worst case is its own rows' alone
    printable = second.assign(tokens="printable")
    alone = answer.robustness_findings(printable, worst_case.families(printable, ["printable"]), N_BOOT, 0)
    assert f["worst_case"]["per-input edits [printable]"]["diff"] == alone["worst_case"]["per-input edits"]["diff"]
    assert set(f["diagnostics"]) == {"uat", "gcg", "random_search", "hotflip", "random_flips", "uat@printable",
                                     "gcg@printable", "random_search@printable", "hotflip@printable",
                                     "random_flips@printable"}
    table = worst_case.table(worst_case.families(df, ["round_trip", "printable"]), N_BOOT, 0)
    assert list(dict.fromkeys(table["threat_model"])) == ["round_trip", "printable"]
    text = headline.worst_case_sentence(f)
    assert "threat model: round_trip tokens" in text and "With printable tokens: universal triggers" in text


@pytest.mark.parametrize("budget, rising", [(240, True), (640, False)])
def test_a_planted_search_cut_before_it_finds_the_weakness_is_not_converged(budget, rising):
    """uat finds the planted token after about 160 forward passes: a budget of 240 ends with the
    damage still rising at its last doubling (not converged), one of 640 long after it levelled off."""
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    params = uat.UATConfig(trigger_len=3, top_k=4, widen=2, steps=50, restarts=1, controls=2, guidance_sample=0)
    split = {"test": examples(8, 0), "attack_opt": examples(8, 1)}
    rows = run_attack("uat", {"baseline": weak}, tokenizer(), split, CONT, 16, params, seed=0, log=lambda _: None,
                      budget=budget, curve_points=4)
    df = report.attack_table(rows)
    curve = diagnostics.budget_curve(df, N_BOOT, 0)
    assert list(curve["fraction"]) == [0.125, 0.25, 0.5, 1.0]
    assert curve["dnll"].iloc[-1] > 10  # the weakness is found within the budget either way
    flag = diagnostics.not_converged(df, "uat", "baseline", N_BOOT, 0)
    assert flag["flag"] is rising
    assert diagnostics.diagnostics(df, N_BOOT, 0)["uat"]["baseline"]["not_converged"]["flag"] is rising


def test_the_compute_curve_takes_the_members_found_within_each_fraction():
    """Two curve points per model (fractions 0.5 and 1, 50 and 100 passes), a transfer curve and a
    control of 0 (hand-built): at 0.5 only the points at 0.5 count, at 1 everything does."""
    rows = []
    for e in range(3):
        for m, other in (("baseline", "monotonic"), ("monotonic", "baseline")):
            rows += [row("uat", "budget", m, 0.2, 0.2, ids=(1, e), example=e, trial=0, fraction=0.5),
                     row("uat", "budget", m, 0.4, 0.4, ids=(2, e), example=e, trial=1, fraction=1.0),
                     row("uat", "budget", m, 0.3, 0.3, source=other, ids=(3, e), example=e, trial=0, fraction=0.5),
                     row("uat", "control", m, 0.0, 0.0, ids=(9,), example=e)]
            rows[-4]["forward_passes"], rows[-3]["forward_passes"] = 50, 100
    got = worst_case.compute_curve(family(pd.DataFrame(rows), "universal triggers"))
    mean = got.groupby(["model", "fraction"]).agg(passes=("passes", "first"), damage=("above_control", "mean"))
    assert mean.loc[("baseline", 0.5)].tolist() == pytest.approx([50, 0.3])  # the transfer at 0.5 is the worst
    assert mean.loc[("monotonic", 1.0)].tolist() == pytest.approx([100, 0.4])


def test_a_search_that_ends_at_its_auto_budget_cap_is_flagged():
    df = synthetic(7).assign(budget=0, budget_capped=False, budget_converged_at=0)
    own = (df.attack == "uat") & (df.kind == "attack") & (df.model == df.source_model)
    assert diagnostics.hit_budget_cap(df, "uat", "baseline") == {"flag": None}  # a fixed budget
    df.loc[own & (df.model == "baseline"), ["budget", "budget_capped"]] = [8000, True]
    df.loc[own & (df.model == "monotonic"), ["budget", "budget_converged_at"]] = [8000, 2000]
    assert diagnostics.hit_budget_cap(df, "uat", "baseline") == {"flag": True, "budget": 8000, "converged_at": 0}
    assert diagnostics.hit_budget_cap(df, "uat", "monotonic") == {"flag": False, "budget": 8000, "converged_at": 2000}
