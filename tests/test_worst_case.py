"""The worst case, the masking diagnostics and the headline that stands on them: a planted failed
search, the per-example maximum, the strictly universal choice, the budget curve's convergence flag."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from attack_models import CONT, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import run_attack, uat
from monollm.results import answer, diagnostics, headline, report, worst_case

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
                              **answer.robustness_findings(df, ["round_trip"], N_BOOT, 0)})
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
    """Rows of three trigger attacks and hotflip on two models: own searches, transfers, restarts,
    controls, with random damage."""
    rng, rows = np.random.default_rng(seed), []

    def add(attack, kind, model, source, trial=0, scale=1.0, opt=np.nan):
        for e in range(n):
            rows.append({"attack": attack, "kind": kind, "model": model, "source_model": source, "trial": trial,
                         "example": e, "dnll": float(rng.gamma(2.0, scale)), "forward_passes": 1000,
                         "ranking": "gradient" if kind == "attack" else "", "trigger_ids": [1, 2],
                         "guidance_spearman": 0.5, "opt_dnll": opt, "clean_nll": 3.0, "attacked_nll": 4.0})

    for attack in ("uat", "gcg", "random_search", "hotflip"):
        for m in ("baseline", "monotonic"):
            other = "monotonic" if m == "baseline" else "baseline"
            add(attack, "attack", m, m, opt=rng.random())
            add(attack, "transfer", m, other, opt=rng.random())
            for t in range(3):
                add(attack, "control", m, m, trial=t, scale=0.1)
            if attack != "hotflip":
                add(attack, "restart", m, m, trial=1, opt=rng.random())
    return pd.DataFrame(rows)


def test_the_worst_case_is_the_maximum_over_the_members_and_one_of_them():
    df = synthetic()
    for family, attacks in worst_case.FAMILIES.items():
        ex = worst_case.per_example_worst(df, family).set_index(["model", "example"])
        members = df[df.attack.isin(attacks) & df.kind.isin(worst_case.MEMBER_KINDS)]
        assert len(ex) == 2 * 12
        for (m, e), row in ex.iterrows():
            mine = members[(members.model == m) & (members.example == e)]
            assert row["dnll"] >= mine["dnll"].max() - 1e-12  # at least every member's damage ...
            assert np.isclose(mine["dnll"], row["dnll"]).any()  # ... and equal to one of them
            label = next(worst_case.member_label(r) for r in mine.itertuples() if np.isclose(r.dnll, row["dnll"]))
            assert row["member"] == label
            ctrl = df[(df.attack.isin(attacks)) & (df.kind == "control") & (df.model == m) & (df.example == e)]
            assert row["above_control"] == pytest.approx(row["dnll"] - ctrl["dnll"].mean())


def test_the_strictly_universal_variant_takes_the_trigger_best_on_attack_opt():
    df = synthetic(1)
    ex = worst_case.universal_choice(df, "universal triggers")
    for m, g in ex.groupby("model"):
        cands = df[(df.model == m) & df.attack.isin(worst_case.FAMILIES["universal triggers"])
                   & np.isfinite(df.opt_dnll)]
        best = cands.loc[cands.opt_dnll.idxmax()]
        assert set(g["member"]) == {worst_case.member_label(next(cands.loc[[best.name]].itertuples()))}
        assert np.allclose(g.sort_values("example")["dnll"], cands[cands.opt_dnll == best.opt_dnll]
                           .sort_values("example")["dnll"])
    table = worst_case.table(df, ["printable"], N_BOOT, 0)
    assert set(table["variant"]) == {"per-example", "universal"} and set(table["threat_model"]) == {"printable"}
    per_example = table[table.variant == "per-example"].set_index(["family", "model"])
    universal = table[table.variant == "universal"].set_index(["family", "model"])
    # one trigger for all examples can never beat the worst over every trigger per example
    assert (universal["dnll"] <= per_example.loc[universal.index, "dnll"] + 1e-12).all()


def curve_rows(dnll_by_fraction: dict, n: int = 16, noise: float = 0.01) -> pd.DataFrame:
    rng, rows = np.random.default_rng(0), []
    for i, (fraction, level) in enumerate(dnll_by_fraction.items()):
        for e in range(n):
            rows.append({"attack": "uat", "kind": worst_case.CURVE, "model": "monotonic", "source_model": "monotonic",
                         "trial": i, "example": e, "budget_fraction": fraction, "forward_passes": int(8000 * fraction),
                         "dnll": level + noise * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_damage_still_rising_at_the_last_doubling_is_not_converged():
    rising = diagnostics.budget_curve(curve_rows({0.125: 0.1, 0.25: 0.2, 0.5: 0.4, 1.0: 0.8}), N_BOOT, 0)
    assert list(rising["fraction"]) == [0.125, 0.25, 0.5, 1.0] and list(rising["forward_passes"]) == [1000, 2000,
                                                                                                       4000, 8000]
    flag = diagnostics.not_converged(rising, "uat", "monotonic")
    assert flag["flag"] is True and flag["rise"] == pytest.approx(0.4, abs=0.02)
    flat = diagnostics.budget_curve(curve_rows({0.125: 0.1, 0.25: 0.5, 0.5: 0.8, 1.0: 0.8}), N_BOOT, 0)
    assert diagnostics.not_converged(flat, "uat", "monotonic")["flag"] is False
    assert diagnostics.not_converged(flat, "gcg", "monotonic") == {"flag": None}


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
    assert diagnostics.gradient_free_beats_gradient(df, "hotflip", "baseline", N_BOOT, 0)["flag"] is None


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
    f = answer.robustness_findings(df, ["round_trip", "printable"], N_BOOT, 0)
    assert set(f["worst_case"]) == {"universal triggers", "universal triggers, universal", "per-input edits",
                                    "universal triggers [printable]", "universal triggers, universal [printable]",
                                    "per-input edits [printable]"}
    # each threat model's worst case is its own rows' alone
    alone = answer.robustness_findings(second.assign(tokens="printable"), ["printable"], N_BOOT, 0)
    assert f["worst_case"]["per-input edits [printable]"]["diff"] == alone["worst_case"]["per-input edits"]["diff"]
    assert set(f["diagnostics"]) == {"uat", "gcg", "random_search", "hotflip", "uat@printable", "gcg@printable",
                                     "random_search@printable", "hotflip@printable"}
    table = worst_case.table(df, ["round_trip", "printable"], N_BOOT, 0)
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
                      budget=budget)
    df = report.attack_table(rows)
    curve = diagnostics.budget_curve(df, N_BOOT, 0)
    assert list(curve["fraction"]) == [0.125, 0.25, 0.5, 1.0]
    assert curve["dnll"].iloc[-1] > 10  # the weakness is found within the budget either way
    flag = diagnostics.not_converged(curve, "uat", "baseline")
    assert flag["flag"] is rising
    assert diagnostics.diagnostics(df, N_BOOT, 0)["uat"]["baseline"]["not_converged"]["flag"] is rising
