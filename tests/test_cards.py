"""Card components from the tables (synthetic, fast) and the cards of a real micro run."""
import base64
import json
import math
import os
import re
import subprocess
import sys
import tomllib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import FLOW, MICRO, flow_env

from monollm import config, errors
from monollm.results import answer, card_sections, cards, headline, report
from monollm.experiments.compare import flatten
from monollm.attacks.common import AttackResult


GUIDANCE = {"baseline": 0.12, "monotonic": 0.65}
"""Spearman rho of uat's gradient ranking per model it searched on, in `synthetic_run`."""


def synthetic_run(monotonic_lr=None, guidance=GUIDANCE):
    """The artifacts join_attacks has, from the real report functions on made-up numbers; uat's
    search ranked by gradient, with `guidance` (model -> rho) on the rows it produced."""
    rng = np.random.default_rng(0)
    tokens = np.full(40, 31)
    per_block = {m: (rng.normal(3 + 0.3 * i, 0.2, 40) * 31, tokens) for i, m in enumerate(report.MODELS)}
    ppl = report.perplexity_table(per_block, 200, 0)
    checks = {s: {"matrices": 4, "negative": 0, "min": 1e-4, "parametrized": p}
              for s, p in (("applied", 4), ("after_training", 4), ("after_materializing", 0))}
    constraint = report.constraint_table(checks)
    ex, results = np.arange(20), []
    ids = rng.integers(10, 60, (20, 6))  # 4 context + 2 scored tokens per example
    for model, other in (("baseline", "monotonic"), ("monotonic", "baseline")):
        clean = rng.normal(3, 0.3, 20)
        for kind, source, trial in (("attack", model, 0), ("control", "", 0), ("control", "", 1),
                                    ("transfer", other, 0)):
            searched = {} if kind == "control" else dict(ranking="gradient", guidance_spearman=guidance[source],
                                                         guidance_n=64)
            attacked = clean + rng.normal(0.5, 0.2, 20)
            split = rng.normal(0, 0.1, 20)  # the two halves of the scored tokens, around the mean
            results.append(AttackResult("uat", model, kind, ex, clean, attacked, trial=trial, source_model=source,
                                        trigger_ids=[7, 8 + trial + 2 * (kind == "control")], input_ids=ids,
                                        scored_tokens=2, clean_halves=np.stack([clean, clean], 1),
                                        attacked_halves=np.stack([attacked + split, attacked - split], 1), **searched))
        results.append(AttackResult("random", model, "attack", ex, clean, clean + rng.normal(0.1, 0.1, 20)))
    attacks = report.attack_table(results)
    history = {arm: [{"arm": arm, "step": s, "tokens": 512 * s, "loss": 4 - 0.01 * s, "lr": 1e-3, "grad_norm": 1.0,
                      "val_loss": 3.9 - 0.01 * s if s % 10 == 0 else math.nan} for s in range(1, 51)]
               for arm in ("baseline", "monotonic")}
    with open(MICRO, "rb") as f:
        raw = tomllib.load(f)
    if monotonic_lr is not None:
        raw["train"]["monotonic_lr"] = monotonic_lr
    # what join_attacks does with its branches (answer.gather, answer.attack_answer)
    branches = answer.gather([SimpleNamespace(attack_rows=attacks, token_text={i: f"w{i} " for i in range(100)})])
    done = answer.attack_answer(branches, ppl, per_block, constraint, "gelu", thresholds=[0.5, 1.0], n_boot=200,
                                seed=0, threat_models=("round_trip",), setting=None, activation_swap=None,
                                training=None)
    return SimpleNamespace(resolved_config=config.to_dict(config.load(raw)), perplexity=ppl, constraint=constraint,
                           training=report.training_table(history), per_block=per_block, **vars(branches),
                           **vars(done))


def rendered(components):
    out = [c.render() for c in components]
    json.dumps(out, allow_nan=False)  # a browser must be able to parse the card's data
    return out


def table_cells(parts):
    return [cell for p in parts if p["type"] == "table" for row in p["data"] for cell in row]


def test_experiment_card_has_tables_plots_and_findings():
    data = synthetic_run()
    parts = rendered(cards.experiment(data))
    kinds = [p["type"] for p in parts]
    assert kinds.count("vegaChart") == 2 + 2  # perplexity, training, one dNLL plot per attack
    text = " ".join(p["source"] for p in parts if p["type"] == "markdown")
    for heading in ("Findings", "Configuration", "Perplexity", "Constraint verification", "Attack `uat`",
                    "Attack `random`"):
        assert heading in text
    cells = table_cells(parts)
    for row in data.perplexity.itertuples():  # the perplexity table, with its CI
        assert cards.fmt(row.perplexity) in cells and cards.ci(row.ppl_ci_low, row.ppl_ci_high) in cells
    assert set(data.constraint["stage"]) <= set(cells)
    headers = [p["columns"] for p in parts if p["type"] == "table"]
    assert ["model", "perplexity", "95% CI", "mean NLL", "tokens", "blocks"] in headers
    dnll = [p["spec"] for p in parts if p["type"] == "vegaChart" and cards.chart_title(p["spec"]).startswith("uat:")][0]
    pairs = {(v["condition"], v["model"], v["trigger from"]) for v in dnll["data"]["values"]}
    assert pairs == {("attack (own)", "baseline", "baseline"), ("attack (own)", "monotonic", "monotonic"),
                     ("control (random)", "baseline", "baseline"), ("control (random)", "monotonic", "monotonic"),
                     ("transfer (other's)", "baseline", "monotonic"), ("transfer (other's)", "monotonic", "baseline")}
    assert len(dnll["data"]["values"]) == 6 * 20  # one point per example, control trials averaged


def test_experiment_card_names_sources_commits_and_the_resumed_run():
    data = synthetic_run()
    text = lambda d: " ".join(p["source"] for p in rendered(cards.experiment(d)) if p["type"] == "markdown")
    assert "## Sources" in text(data) and "recorded no sources" in text(data)  # a run from before `sources`
    assert "resumed from" not in text(data)
    commit = "9" * 40
    data.sources = {"model": {"source": "hub", "name": "EleutherAI/pythia-160m", "revision": "step143000",
                              "commit": commit},
                    "data": {"source": "hub", "path": "monology/pile-uncopyrighted", "revision": "main",
                             "commit": None}}
    data.origin_run_id = "1234"
    card = text(data)
    assert f"model: hub `EleutherAI/pythia-160m`, revision `step143000`, commit `{commit}`" in card
    assert "data: hub `monology/pile-uncopyrighted`, revision `main`, commit not recorded" in card
    assert "resumed from run 1234" in card
    data.sources = {"model": {"source": "build", "name": "", "revision": "", "commit": None},
                    "data": {"source": "builtin", "path": "", "revision": "", "commit": None}}
    assert "model: built from [model.build]" in text(data) and "data: the built-in corpus" in text(data)


def test_experiment_card_shows_the_contamination_of_the_held_out_windows():
    data = synthetic_run()
    text = lambda d: " ".join(p["source"] for p in rendered(cards.experiment(d)) if p["type"] == "markdown")
    assert "held-out contamination: not measured" in text(data)  # a run from before the measurement
    data.contamination = {"n": 13, "train_tokens": 40960, "rows": [
        {"split": "test", "unit": "attack windows", "windows": 24, "contaminated": 3, "rate": 0.125, "replaced": 3},
        {"split": "val", "unit": "blocks", "windows": 30, "contaminated": 0, "rate": 0.0, "replaced": 0}]}
    data_section = text(data).split("## Data")[1].split("##")[0]
    assert "`test`:" in data_section and "13-gram of token ids with the 40,960 training tokens" in data_section
    assert "test attack windows 3 of 24 (12.5%), replaced by clean ones" in data_section
    assert "val blocks 0 of 30 (0.0%)" in data_section


def test_experiment_card_sources_say_how_to_pin_a_branch_and_that_local_files_have_no_commit():
    data = synthetic_run()
    text = lambda d: " ".join(p["source"] for p in rendered(cards.experiment(d)) if p["type"] == "markdown")
    data.sources = {"model": {"source": "hub", "name": "EleutherAI/pythia-160m", "revision": "step143000",
                              "commit": "9" * 40},
                    "data": {"source": "local", "path": "/mnt/pile", "revision": "", "commit": None}}
    card = text(data)
    assert "python -m monollm.experiments.pin RUN PROFILE OUT.toml" in card  # step143000 is a branch
    assert "data: local `/mnt/pile` (local files: no hub revision, no commit)" in card
    data.sources["model"]["revision"] = "9" * 40  # already a commit: nothing to pin
    assert "monollm.experiments.pin" not in text(data)


def test_the_attack_join_gathers_what_every_step_and_branch_ran_on():
    cpu = {"device": "cpu", "device_name": "", "processes": 1}
    before = {"train_baseline": {**cpu, "precision": "fp32"}, "evaluate": {**cpu, "precision": "fp32"}}
    rows = synthetic_run().attacks
    inputs = [SimpleNamespace(attack_rows=rows[rows.attack == a], token_text={}, ran_on=before,
                              branch_ran_on={f"attack:{a}": {**cpu, "precision": "search fp32; reported NLLs fp32"}})
              for a in ("uat", "random")]
    assert list(answer.gather(inputs).ran_on) == ["train_baseline", "evaluate", "attack:uat", "attack:random"]
    old = [SimpleNamespace(attack_rows=rows, token_text={})]  # branches of a run that predates `ran_on`
    assert answer.gather(old).ran_on == {}


def test_experiment_card_sources_show_what_each_model_step_ran_on():
    """The device and precision each step recorded (`ran_on`), not the settings (`auto`); a run that
    recorded none says so."""
    data = synthetic_run()
    parts = rendered(cards.experiment(data))
    assert "recorded no device or precision" in " ".join(markdown(parts))
    gpu = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "processes": 1}
    data.ran_on = {"evaluate": {**gpu, "precision": "bf16 autocast, fp32 weights"},
                   "train_monotonic": {**gpu, "processes": 2, "precision": "bf16 autocast, fp32 weights"},
                   "train_baseline": {**gpu, "processes": 2, "precision": "bf16 autocast, fp32 weights"},
                   "attack:uat": {**gpu, "precision": "search bf16 autocast, fp32 weights; reported NLLs fp32"},
                   "attack:order": {"device": "cpu", "device_name": "", "processes": 1, "precision": "fp32"}}
    parts = rendered(cards.experiment(data))
    table = next(p for p in parts if p["type"] == "table" and p["columns"] == ["step", "device", "precision"])
    assert [row[0] for row in table["data"]] == ["train_baseline", "train_monotonic", "evaluate", "attack uat",
                                                 "attack order"]
    assert table["data"][0][1] == "2 x cuda (NVIDIA H100 80GB HBM3)"
    assert table["data"][2][1] == "cuda (NVIDIA H100 80GB HBM3)"
    assert table["data"][3][2] == "search bf16 autocast, fp32 weights; reported NLLs fp32"
    assert table["data"][4][1:] == ["cpu", "fp32"]
    sources = [m for m in markdown(parts) if m.startswith("## Sources")][0]
    assert markdown(parts).index(sources) + 1 == markdown(parts).index(next(
        m for m in markdown(parts) if m.startswith("### What each model step ran on")))  # right under Sources


def markdown(parts):
    return [p["source"].strip() for p in parts if p["type"] == "markdown"]


def test_experiment_card_opens_with_the_headline_and_its_key_numbers():
    data = synthetic_run()
    parts = rendered(cards.experiment(data))
    answer = headline.headline(data.findings)
    assert markdown(parts)[1] == "**Answer.** " + " ".join(answer)  # right after the title
    key = parts[2]
    assert key["type"] == "table" and key["columns"][:3] == ["", "baseline", "monotonic"]
    comp = data.findings["robustness_above_control"]["uat"]
    row = next(r for r in key["data"] if r[0] == "uat: damage above control")
    assert row[4] == card_sections.nowrap(headline.interval(comp["diff"], comp["ci_low"], comp["ci_high"]))
    # the answer calls uat's verdict no evidence of robustness (GUIDANCE: rho 0.12 on baseline, below 0.3): so do
    # the key numbers, with the flag
    assert comp["verdict"] == "no significant difference" and comp["not_evidence"] == ["weak_guidance on baseline"]
    assert row[5] == "not evidence of robustness (weak_guidance on baseline)" and " " not in row[4]  # one cell
    config = [m for m in markdown(parts) if m.startswith("<details>")]
    assert len(config) == 2 and all("</details>" in m and "\n\n" not in m for m in config)  # collapsed, one block


def test_the_key_numbers_lead_with_the_worst_case_as_the_headline_does():
    """The answer's first sentence is the worst case: its numbers are the table's first rows, each
    arm's worst damage above control from run.data.worst_case and the paired difference."""
    data = synthetic_run()
    key = rendered(cards.experiment(data))[2]
    worst = data.findings["worst_case"]
    assert worst and [r[0] for r in key["data"][:len(worst)]] == [
        f"worst case, {name}: damage above control" for name in worst]
    comp, row = worst["universal triggers"], key["data"][0]
    table = data.worst_case[(data.worst_case.family == "universal triggers")
                            & (data.worst_case.variant == "per-example")].set_index("model")
    assert row[1] == card_sections.estimate(*table.loc["baseline", ["above_control", "ci_low", "ci_high"]])
    assert row[2] == card_sections.estimate(*table.loc["monotonic", ["above_control", "ci_low", "ci_high"]])
    # the synthetic run has no gradient-free search: the family verdict carries that flag, and so does its row
    assert comp["not_evidence"] == ["no_gradient_free_member on baseline", "no_gradient_free_member on monotonic"]
    assert (row[4], row[5]) == (card_sections.estimate(comp["diff"], comp["ci_low"], comp["ci_high"]),
                                "not evidence of robustness (" + ", ".join(comp["not_evidence"]) + ")")
    assert key["data"][len(worst)][0] == "test perplexity"  # then the cost, as in the headline


@pytest.mark.parametrize("diffs, lead", [
    ({"uat": (0.1, 0.05, 0.15)}, "The monotonic model is more robust"),
    ({"uat": (-0.1, -0.15, -0.05), "hotflip": (-0.2, -0.3, -0.1)}, "The monotonic model is less robust"),
    ({"uat": (0.01, -0.05, 0.07), "hotflip": (-0.01, -0.2, 0.1)}, "Inconclusive"),
    ({"uat": (0.1, 0.05, 0.15), "hotflip": (-0.01, -0.2, 0.1)}, "Mixed"),
])
def test_headline_follows_the_verdicts_of_either_sign(diffs, lead):
    verdict = lambda lo, hi: ("monotonic more robust" if lo > 0 else "baseline more robust" if hi < 0
                              else "no significant difference")
    findings = synthetic_run().findings
    findings.pop("worst_case")  # a run made before the worst case: each attack's own verdict leads
    findings["robustness_above_control"] = {a: {"diff": d, "ci_low": lo, "ci_high": hi, "verdict": verdict(lo, hi)}
                                            for a, (d, lo, hi) in diffs.items()}
    text = " ".join(headline.headline(findings))
    assert text.startswith(lead + ":")
    for attack, (d, lo, hi) in diffs.items():
        assert f"{attack} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
    cost = findings["nll_cost_monotonic_minus_baseline"]
    assert f"{cost['diff']:+.4f} [{cost['ci_low']:+.4f}, {cost['ci_high']:+.4f}]" in text
    findings["perplexity_cost_significant"] = False
    assert "not significant" in headline.headline(findings)[1]


@pytest.mark.parametrize("diff, lo, hi, clause", [
    (0.1, 0.05, 0.15, "universal triggers damage the monotonic model less than the baseline"),
    (-0.1, -0.15, -0.05, "universal triggers damage the monotonic model more than the baseline"),
    (0.01, -0.05, 0.07, "universal triggers do not damage them significantly differently")])
def test_the_headline_leads_with_the_worst_case_of_either_sign(diff, lo, hi, clause):
    findings = synthetic_run().findings
    verdict = "monotonic more robust" if lo > 0 else "baseline more robust" if hi < 0 else "no significant difference"
    findings["worst_case"] = {"universal triggers": {"diff": diff, "ci_low": lo, "ci_high": hi, "verdict": verdict,
                                                     "threat_model": "round_trip"}}
    first, second, *rest = headline.headline(findings)
    assert first.startswith("Worst case over every perturbation") and "threat model: round_trip tokens" in first
    assert f"{clause} ({diff:+.3f} [{lo:+.3f}, {hi:+.3f}])" in first
    assert second.startswith("Per attack, from its own search") and "uat " in second
    assert rest[-1].startswith("One seed stands behind these verdicts")


def test_card_shows_the_most_and_least_damaged_examples_with_their_text():
    data = synthetic_run()
    parts = rendered(cards.experiment(data))
    view = next(m for m in markdown(parts) if m.startswith("<table><tr><th>model</th><th>damaged</th>"))
    own = data.attacks.query("attack == 'uat' and kind == 'attack' and model == 'baseline'")
    by_dnll = own.groupby("example")["dnll"].mean().sort_values()
    for example in (by_dnll.index[-1], by_dnll.index[0]):  # the most and the least damaged
        assert f"<td>#{example}</td><td style='white-space:nowrap'>{by_dnll[example]:+.3f}</td>" in view
    row = own[own.example == by_dnll.index[-1]].iloc[0]
    ids = row["input_ids"]
    assert f"<mark>w7 w8 </mark>{''.join(f'w{i} ' for i in ids[:4])}<b>w{ids[4]} </b><b>w{ids[5]} </b>" in view
    assert view.count("<tr>") == 1 + 2 * 2 * card_sections.PER_EXAMPLE  # both models, most and least
    data.token_text = None  # a run from before token_text: ids, said so
    text = " ".join(markdown(rendered(cards.experiment(data))))
    assert f"#{ids[0]}" in text and "stored no token text" in text


def guidance_parts(data):
    """The card's gradient-guidance headings and tables."""
    parts = rendered(cards.experiment(data))
    heads = [m for m in markdown(parts) if "gradient guidance" in m]
    tables = [p for p in parts if p["type"] == "table" and "Spearman rho" in p["columns"]]
    return heads, tables, " ".join(markdown(parts))


def test_card_shows_how_far_the_gradient_ranking_can_be_trusted():
    heads, tables, text = guidance_parts(synthetic_run())
    assert len(heads) == len(tables) == 1  # uat only: random has no search
    assert heads[0].startswith("### `uat`: gradient guidance") and "Ranking `gradient`" in heads[0]
    assert tables[0]["columns"] == ["model", "ranking", "Spearman rho", "swaps sampled"]
    assert tables[0]["data"] == [[m, "gradient", card_sections.signed(r, 2), "64"] for m, r in GUIDANCE.items()]
    # the weak model is named in a sentence, in the section and in the findings; the other is not
    weak = [m for m, r in GUIDANCE.items() if report.weak_guidance(r)]
    assert weak == ["baseline"]
    note = synthetic_run().findings["guidance"]["uat"]["note"]
    assert "on baseline (Spearman +0.12 over 64 swaps)" in note and "monotonic" not in note
    assert note in heads[0] and text.count(note) == 2
    strong = synthetic_run(guidance={"baseline": 0.9, "monotonic": 0.65})
    heads, tables, text = guidance_parts(strong)
    assert len(tables) == 1 and "barely predicts" not in text


def test_card_shows_no_gradient_guidance_where_none_was_measured():
    heads, tables, _ = guidance_parts(synthetic_run(guidance={"baseline": math.nan, "monotonic": math.nan}))
    assert heads == [] and tables == []
    # a run from before the columns: its summary and card are made without them
    data = synthetic_run()
    data.attacks = data.attacks.drop(columns=list(report.GUIDANCE))
    data.attack_summary = report.attack_summary(data.attacks, [0.5, 1.0], 200, 0)
    data.findings = answer.findings(data.perplexity, data.per_block, data.constraint, data.attacks, "gelu", 200, 0)
    del data.findings["guidance"]
    heads, tables, text = guidance_parts(data)
    assert heads == [] and tables == [] and "Attack `uat`" in text


def test_console_summary_has_a_guidance_line_per_measured_attack():
    from monollm.results import client as results

    text = results.summary_text(synthetic_run(), "12")
    line = next(x for x in text.splitlines() if x.startswith("uat: ranking"))
    assert line == "uat: ranking gradient; " + ", ".join(
        f"{m} {r:+.2f} over 64 swaps" + (" (weak)" if report.weak_guidance(r) else "")
        for m, r in GUIDANCE.items())
    assert "(weak)" in line and max(map(len, text.splitlines())) <= results.WIDTH
    assert not any(x.startswith("random: ranking") for x in text.splitlines())
    unmeasured = results.summary_text(synthetic_run(guidance={"baseline": math.nan, "monotonic": math.nan}))
    assert "Gradient guidance" not in unmeasured and "uat: ranking" not in unmeasured


def test_flipped_tokens_are_struck_through_and_highlighted():
    row = {"input_ids": [1, 2, 3, 4], "attacked_ids": [1, 9, 3, 4], "changed_positions": [1], "trigger_ids": [],
           "scored_tokens": 1}
    html = card_sections.marked_tokens(row, {1: "a", 2: "b", 3: "<c>", 4: "\n"})
    assert html == "a<del>b</del><mark>#9</mark>&lt;c&gt;<b>\u21b5</b>"


def test_configuration_shows_only_the_keys_that_apply():
    cfg = synthetic_run().resolved_config  # micro: a built model, uat and hotflip
    keys = [k for k in flatten(cfg) if card_sections.applies(k, cfg)]
    assert "pretrain.tokens" in keys and "model.build.hidden_size" in keys and "attack.uat.steps" in keys
    assert not [k for k in keys if k.startswith(("attack.random.", "pretrain.monotonic_", "data.path"))]
    hub = {**cfg, "model": {**cfg["model"], "source": "hub"}}
    assert not card_sections.applies("pretrain.tokens", hub) and card_sections.applies("model.revision", hub)


def test_user_errors_are_one_message_naming_the_key_or_the_resource():
    from metaflow.exception import MetaflowException

    with pytest.raises(MetaflowException) as err:
        with errors.user_errors("profile 'p'"):
            raise config.ConfigError("'train.lr' must be a number, got 'x'")
    assert str(err.value) == "profile 'p': 'train.lr' must be a number, got 'x'" and err.value.__cause__ is None
    with pytest.raises(MetaflowException) as err:
        with errors.user_errors("profile 'p'", "model 'org/missing'"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    assert "model 'org/missing' could not be loaded" in str(err.value) and "docs/cluster.md" in str(err.value)
    with pytest.raises(ZeroDivisionError):  # a bug stays a traceback
        with errors.user_errors("profile 'p'"):
            1 / 0


def test_findings_in_words_carry_numbers_and_intervals():
    data = synthetic_run()
    words = cards.finding_sentences(data.findings, data.perplexity, data.attack_summary, data.constraint)
    cost = data.findings["nll_cost_monotonic_minus_baseline"]
    assert f"{cost['diff']:+.4f} nats/token [{cost['ci_low']:+.4f}, {cost['ci_high']:+.4f}]" in words[0]
    for key, comp in data.findings["robustness"].items():
        line = next(w for w in words if w.startswith(key.split("/")[0]) and f"({key.split('/')[1]})" in w)
        assert f"{comp['diff']:+.3f}" in line and comp["verdict"] in line
        assert len(re.findall(r"\[[^\]]+\]", line)) == 3  # each model's dNLL CI and the difference's
    above = data.findings["robustness_above_control"]["uat"]
    line = next(w for w in words if w.startswith("uat, damage above each model's own random control"))
    assert f"{above['diff']:+.3f} [{above['ci_low']:+.3f}, {above['ci_high']:+.3f}]" in line
    assert above["verdict"] in line
    assert words[-1] == data.findings["activation_note"]


def test_config_summary_prints_arm_differences():
    same, different = synthetic_run(), synthetic_run(monotonic_lr=5e-3)
    assert "same settings" in cards.arm_differences(same.resolved_config)[0]
    assert "lr 0.005" in cards.arm_differences(different.resolved_config)[0]
    summary = cards.config_summary(different.resolved_config).set_index("setting")["value"]
    assert summary["lr baseline / monotonic"] == "0.002 / 0.005"
    assert summary["constraint"].startswith("mlp_both")


def test_charts_are_json_safe_and_thinned():
    long = pd.DataFrame({"arm": "baseline", "step": np.arange(1, 5001), "tokens": 512 * np.arange(1, 5001),
                         "loss": np.linspace(5, 3, 5000), "val_loss": np.nan})
    long.loc[4999, "val_loss"] = 3.1
    spec = cards.loss_chart(long)
    json.dumps(spec, allow_nan=False)
    train = [v for v in spec["data"]["values"] if v["series"] == "train loss"]
    assert len(train) <= cards.MAX_POINTS + 1 and train[-1]["step"] == 5000
    assert [v["loss"] for v in spec["data"]["values"] if v["series"] == "val loss"] == [3.1]
    assert cards.clean({"a": np.float32(np.inf), "b": [np.int64(2), float("nan")]}) == {"a": None, "b": [2, None]}
    bundle = cards.show(spec)._repr_mimebundle_()
    assert bundle["application/vnd.vegalite.v5+json"]["width"] == 560


class FakeCard:
    def __init__(self):
        self.components, self.refreshes = [], []

    def extend(self, components):
        self.components += components

    def refresh(self, force=False):
        self.refreshes.append(force)


def test_live_training_card_updates_at_most_every_few_seconds():
    now = [0.0]
    card = FakeCard()
    live = cards.LiveTraining(card, "baseline", total_steps=100, tokens_per_step=512, every=5, clock=lambda: now[0])
    assert len(card.refreshes) == 1  # the empty card shows at once
    for step in range(1, 101):
        now[0] = step * 0.5  # 2 steps per second, 1024 tokens/s
        live({"arm": "baseline", "step": step, "tokens": 512 * step, "loss": 5 - step / 100, "lr": 1e-3,
              "grad_norm": 1.0, "val_loss": 4.0 if step % 25 == 0 else math.nan})
        if step == 41:
            bar = card.components[1].render()
            assert bar["value"] == 512 * 41 and bar["max"] == 51_200
            assert "step 41/100" in bar["details"] and "ETA 0m30s" in bar["details"]  # 59 steps at 2/s: 29.5 s
    assert 1 + 100 * 0.5 / 5 - 1 <= len(card.refreshes) <= 1 + 100 * 0.5 / 5 + 1
    assert card.refreshes[-1] is True  # the last step always shows
    parts = rendered(card.components)
    assert parts[1]["value"] == parts[1]["max"]
    assert "step 100/100" in parts[0]["source"] and "val loss 4.0000" in parts[0]["source"]
    values = parts[2]["spec"]["data"]["values"]
    assert len([v for v in values if v["series"] == "val loss"]) == 4


def test_training_loop_feeds_the_live_card_every_step():
    from test_train import T, neox, run, tcfg

    from monollm.train.loop import steps_for

    cfg, seen, card = tcfg(eval_every=3), [], FakeCard()
    total = steps_for(cfg, T)
    live = cards.LiveTraining(card, "baseline", total, cfg.batch_size * T, every=3600)

    def on_step(row):
        seen.append(row)
        live(row)

    history = run(neox(), cfg, arm="baseline", on_step=on_step)
    assert seen == history and len(history) == total
    assert card.refreshes == [False, False, True]  # empty card, first step, last step (then hourly)
    bar = card.components[1].render()
    assert bar["value"] == bar["max"] == history[-1]["tokens"]


def test_resumed_training_card_shows_the_checkpointed_steps_too():
    from test_train import T, neox, run, tcfg

    from monollm.train.loop import steps_for

    from monollm.checkpoints import InMemory

    cfg, saved = tcfg(checkpoint_every=2), InMemory()
    full = run(neox(), cfg, arm="baseline", checkpoint=saved)
    now, card, seen = [100.0], FakeCard(), []
    live = cards.LiveTraining(card, "baseline", steps_for(cfg, T), cfg.batch_size * T, every=3600,
                              clock=lambda: now[0])

    def on_step(row):
        seen.append(row)
        now[0] += 2.0  # two seconds per step of this task
        live(row)

    run(neox(seed=5), cfg, arm="baseline", checkpoint=InMemory(saved.saved[4]), on_step=on_step)
    assert [r["step"] for r in seen] == [r["step"] for r in full]  # the whole run, in order
    assert [bool(r.get("replayed")) for r in seen] == [r["step"] <= 4 for r in full]
    values = card.components[2].render()["spec"]["data"]["values"]
    assert sorted({v["step"] for v in values if v["series"] == "train loss"}) == [r["step"] for r in full]
    # the rate counts this task's steps only: (6 - 5) steps of 4 x T tokens over 2 s
    assert f"{cfg.batch_size * T / 2:,.0f} tok/s" in card.components[1].render()["details"]


def test_progress_line_says_what_how_far_rate_and_eta(monkeypatch):
    from monollm import progress

    monkeypatch.setattr(progress.time, "time", lambda: 110.0)
    assert progress.line("restart", 2, 5, started=100.0) == "restart 2/5, 0.2 restarts/s, ETA 15s"


def answer_block(text: str) -> str:
    """The console summary's answer, unwrapped: the lines after its title up to the blank line."""
    from monollm.results import client as results

    lines = text.splitlines()
    start = lines.index(results.ANSWER_TITLE) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return " ".join(" ".join(lines[start:end]).split())


def test_console_summary_ends_with_the_answer_the_cost_and_the_card_command():
    """The run's last screen: the answer (the headline, the perplexity cost among it) and the card
    command are the summary's last lines, within 40 lines of its end, every line within 120."""
    from monollm.results import client as results

    data = synthetic_run()
    text = results.summary_text(data, "12")
    lines = text.splitlines()
    assert lines[-1] == "Experiment card: make card RUN=12"
    caveat = ("Profile 'micro' checks the pipeline: a 2-layer model built here and trained on generated text, not an "
              "answer about pretrained models; config/pythia-1.4b.toml answers the question.")  # tests/micro.toml
    assert answer_block(text) == " ".join([caveat] + headline.headline(data.findings))
    last_screen = "\n".join(lines[-40:])
    assert results.ANSWER_TITLE in last_screen and "The constraint costs perplexity" in " ".join(last_screen.split())
    assert lines.index(results.ANSWER_TITLE) > lines.index("Perplexity on the test blocks (95% bootstrap CI over "
                                                           "blocks):")  # the tables come first
    assert max(map(len, lines)) <= results.WIDTH


def test_the_summary_is_kept_without_log_prefixes_in_the_file_the_last_line_names(monkeypatch, tmp_path):
    import metaflow.metaflow_config as mf_config

    from monollm.results import client as results

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(mf_config, "DEFAULT_DATASTORE", "local")
    line = results.keep_summary("Perplexity ...\nExperiment card: ...", "MonoFlow/12")
    path = str(tmp_path / "monollm-MonoFlow-12-summary.txt")
    assert line == f"Without the log prefixes: {path}" and open(path).read() == "Perplexity ...\nExperiment card: ...\n"
    monkeypatch.setattr(mf_config, "DEFAULT_DATASTORE", "s3")  # the step ran elsewhere: the artifact
    assert results.keep_summary("x", "MonoFlow/13") == "Without the log prefixes: make summary RUN=13"
    assert results.summary_file("x", "MonoFlow/13") is None


# ---- the cards of a real run -------------------------------------------------------------

def card_payload(path: str) -> dict:
    """The component data embedded (base64 JSON) in a card's self-contained HTML file."""
    with open(path) as f:
        return card_data(f.read())


def card_data(html: str) -> dict:
    """The component data embedded (base64 JSON) in a card's self-contained HTML."""
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?https?:", html)  # self-contained
    encoded = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([^"]+)"', html).group(1)
    return json.loads(base64.b64decode(encoded))


def card_get(datastore_root, pathspec, out, *extra):
    subprocess.run([sys.executable, FLOW, "card", "get", pathspec, out, *extra], cwd=datastore_root,
                   env=flow_env(), check=True, capture_output=True, timeout=120)
    assert os.path.getsize(out) > 10_000
    return card_payload(out)


def walk(node):
    yield node
    for child in node.get("contents", []) if isinstance(node, dict) else []:
        yield from walk(child)


@pytest.mark.flow
def test_card_get_writes_the_experiment_card(micro_run, datastore_root, tmp_path):
    task = micro_run["join_attacks"].task
    payload = card_get(datastore_root, task.pathspec.split("/", 1)[1], str(tmp_path / "report.html"))
    parts = list(walk(payload["components"][0]))
    tables = [p for p in parts if p.get("type") == "table"]
    ppl = next(t for t in tables if t["columns"][:2] == ["model", "perplexity"])
    data = micro_run.data
    assert [row[0] for row in ppl["data"]] == list(data.perplexity["model"])
    assert [row[1] for row in ppl["data"]] == [cards.fmt(p) for p in data.perplexity["perplexity"]]
    assert any(t["columns"][:3] == ["kind", "model", "trigger from"] for t in tables)  # the attack summary
    assert sum(p.get("type") == "vegaChart" for p in parts) >= 3
    downstream = next(t for t in tables if t["columns"][:4] == ["task", "metric", "n", "chance"])
    assert {row[0] for row in downstream["data"]} == set(data.downstream["task"])
    from monollm.data import contamination  # the Data section says how much held-out text was trained on

    assert any(contamination.describe(data.contamination) in p.get("source", "") for p in parts)
    # what every model step recorded it ran on: the micro profile asks for the CPU, where the search is fp32
    ran_on = next(t for t in tables if t["columns"] == ["step", "device", "precision"])
    assert [row[0] for row in ran_on["data"]] == (["train_baseline", "train_monotonic", "evaluate"]
                                                  + [f"attack {b}" for b in data.branches])
    assert {row[1] for row in ran_on["data"]} == {"cpu"}
    searched = {f"attack {a}": f"search {p}; reported NLLs fp32" for a, p in
                data.attacks[["attack", "search_precision"]].drop_duplicates().itertuples(index=False)}
    assert searched and all(row[2] == searched.get(row[0], "fp32") for row in ran_on["data"])


@pytest.mark.flow
def test_training_card_shows_the_finished_run(micro_run, datastore_root, tmp_path):
    task = micro_run["train_monotonic"].task
    payload = card_get(datastore_root, task.pathspec.split("/", 1)[1], str(tmp_path / "train.html"),
                       "--id", "training")
    parts = list(walk(payload["components"][0]))
    bar = next(p for p in parts if p.get("type") == "progressBar")
    assert bar["value"] == bar["max"] > 0 and "ETA" in bar["details"]
    chart = next(p for p in parts if p.get("type") == "vegaChart")
    steps = micro_run.data.training.query("arm == 'monotonic'")["step"].max()
    assert max(v["step"] for v in chart["spec"]["data"]["values"]) == steps


def test_downstream_section_shows_scores_and_the_cost_per_task():
    data = synthetic_run()
    rows = [{"task": t, "model": m, "metric": "acc", "value": v, "stderr": 0.03, "n": 100, "chance": 0.25}
            for t in ("corpus_choice", "piqa") for m, v in zip(report.MODELS, (0.7, 0.65, 0.4, 0.6))]
    rows += [{"task": "corpus_cloze", "model": m, "metric": "perplexity", "value": 5.0, "stderr": 0.4, "n": 100,
              "chance": math.nan} for m in report.MODELS]
    data.downstream = pd.DataFrame(rows)
    data.findings["downstream"] = {"piqa": {"metric": "acc", "baseline": 0.65, "monotonic": 0.6, "diff": -0.05,
                                            "ci_low": -0.09, "ci_high": -0.01, "items": 100}}
    parts = rendered(cards.downstream_section(data))
    table = next(p for p in parts if p["type"] == "table")
    assert table["columns"] == ["task", "metric", "n", "chance", *report.MODELS]
    assert table["data"][0][:4] == ["corpus_choice", "acc", "100", "0.25"] and "0.65 ± 0.03" in table["data"][0]
    assert table["data"][2][:5] == ["corpus_cloze", "perplexity", "100", "-", "5 ± 0.4"]  # no chance for perplexity
    text = " ".join(p["source"] for p in parts if p["type"] == "markdown")
    assert "`piqa`: acc 0.6 (monotonic) vs 0.65 (baseline), difference -0.050 [-0.090, -0.010] over 100 items" in text
    del data.downstream  # a run made before downstream tasks existed
    assert cards.downstream_section(data) == []


def test_attack_branch_card_shows_its_search_damage_and_examples():
    """The attack step's own card (branch_card), from one branch's rows: the search per model with
    the trigger it found, the damage with its control, the most and least damaged examples; the
    budget curve where the rows hold one."""
    from monollm.results import branch_card

    data = synthetic_run()
    rows = data.attacks[data.attacks.attack == "uat"].reset_index(drop=True)
    cfg = config.from_dict(data.resolved_config)
    done = SimpleNamespace(attack_rows=rows, token_text=data.token_text)
    parts = rendered(branch_card.components(cfg, "uat", done))
    text = "\n".join(p["source"] for p in parts if p["type"] == "markdown")
    assert text.startswith("# Attack branch `uat`") and "Budget curve" not in text
    search = next(p for p in parts if p["type"] == "table" and "found" in p["columns"])
    assert [r[0] for r in search["data"]] == ["baseline", "monotonic"]
    assert all(r[-1] == repr("w7 w8 ") for r in search["data"])  # the trigger, as the tokens decode
    damage = next(p for p in parts if p["type"] == "table" and "above control [95% CI]" in p["columns"])
    assert {"attack", "control", "transfer"} <= {r[0] for r in damage["data"]}
    assert "<mark>" in text and "most and least damaged" in text
    budget = pd.concat([rows, rows[rows.kind == "attack"].assign(kind="budget", budget_fraction=0.5)])
    curve = branch_card.budget_view(budget)
    assert list(curve["budget"]) == ["0.5", "0.5"] and list(curve["scored on"]) == ["baseline", "monotonic"]
    assert list(curve["searched on"]) == ["baseline", "monotonic"]
    order = rendered(branch_card.components(cfg, "order", SimpleNamespace(attack_rows=None)))
    assert "experiment card" in order[0]["source"]


def test_a_branch_card_that_cannot_be_built_leaves_the_branch_standing():
    from monollm.results import branch_card

    said, card = [], []  # rows without the columns the card reads: building it fails, the branch goes on
    branch_card.fill(card, None, "uat", SimpleNamespace(attack_rows=pd.DataFrame({"x": [1]})), log=said.append)
    assert len(said) == 1 and said[0].startswith("[uat] the branch's card could not be built") and card == []


@pytest.mark.flow
def test_every_attack_branch_has_its_own_card(micro_run, datastore_root, tmp_path):
    for task in micro_run["attack"]:
        if task.data.attack_rows is None:
            continue
        branch = task.data.attack_rows["attack"].iloc[0]
        payload = card_get(datastore_root, task.pathspec.split("/", 1)[1], str(tmp_path / f"{branch}.html"),
                           "--id", "attack")
        parts = list(walk(payload["components"][0]))
        assert any(p.get("type") == "markdown" and p["source"].startswith(f"# Attack branch `{branch}`")
                   for p in parts)
        assert any(p.get("type") == "table" and "forward passes" in p["columns"] for p in parts)


def test_the_card_folder_lists_the_experiment_card_first_then_each_branch_by_its_attack_then_training():
    from monollm import browse

    steps = {"start": "1", "train_baseline": "3", "train_monotonic": "5", "attack": "9", "join_attacks": "15"}
    branches = {"uat": "8", "hotflip": "9", "downstream": "13"}
    listed = browse.entries("42", steps, branches)
    assert [(e["label"], e["file"], e["step"], e["task"], e["card_id"]) for e in listed] == [
        ("experiment card: the answer (join_attacks/15)", "experiment.html", "join_attacks", "15", "experiment"),
        ("attack uat (attack/8)", "attack-uat.html", "attack", "8", "attack"),
        ("attack hotflip (attack/9)", "attack-hotflip.html", "attack", "9", "attack"),
        ("downstream (attack/13)", "attack-downstream.html", "attack", "13", "attack"),
        ("training: baseline (train_baseline/3)", "training-baseline.html", "train_baseline", "3", "training"),
        ("training: monotonic (train_monotonic/5)", "training-monotonic.html", "train_monotonic", "5", "training")]
    # a run still attacking: no experiment card yet, and the page names it as missing
    unfinished = browse.entries("42", {"train_baseline": "3"}, {})
    assert [e["file"] for e in unfinished] == ["training-baseline.html"]
    page = browse.index_html("42", unfinished, ["the experiment card (join_attacks has not finished)"])
    assert 'src="training-baseline.html"' in page and "Not in this folder: the experiment card" in page
    page = browse.index_html("42", listed, [])
    options = re.findall(r'<option value="([^"]+)">([^<]+)</option>', page)
    assert options[0] == ("experiment.html", "experiment card: the answer (join_attacks/15)")
    assert 'src="experiment.html"' in page and "Not in this folder" not in page
    assert "&lt;b&gt;" in browse.index_html("<b>", listed, [])  # names are escaped


@pytest.mark.flow
def test_the_card_folder_of_a_run_holds_every_card_and_opens_on_the_experiment_card(micro_run, tmp_path):
    from metaflow.cards import get_cards

    from monollm import browse

    assert browse.main([micro_run.id, "--out", str(tmp_path / "cards")]) == 0
    page = (tmp_path / "cards" / "index.html").read_text()
    options = re.findall(r'<option value="([^"]+)">([^<]+)</option>', page)
    branches = list(micro_run.data.attack_tasks)
    assert branches == list(micro_run.data.resolved_config["attacks"]) + ["downstream", "order"]
    assert [f for f, _ in options] == (["experiment.html"] + [f"attack-{b}.html" for b in branches]
                                       + ["training-baseline.html", "training-monotonic.html"])
    assert [label for _, label in options][1] == f"attack {branches[0]} (attack/{micro_run.data.attack_tasks[branches[0]]})"
    experiment = get_cards(micro_run["join_attacks"].task, id="experiment")[0].get()
    assert (tmp_path / "cards" / "experiment.html").read_text() == experiment
    for name, _ in options:
        assert (tmp_path / "cards" / name).stat().st_size > 10_000, name
    assert browse.main(["999999999", "--out", str(tmp_path / "none")]) == 2  # no such run: one line, no folder
    assert not (tmp_path / "none").exists()


def test_the_experiment_card_names_the_card_folder_and_each_branch_card():
    from monollm.results.client import card_commands_text

    assert card_commands_text("42", {"uat": "8", "order": "14"}) == (
        "Every card of this run in one folder, opening on this one: `make cards RUN=42` (from the repository root). "
        "Each branch's own card: `make card RUN=42 STEP=attack/8` (uat); `make card RUN=42 STEP=attack/14` (order)")
    assert card_commands_text("42", {}) == ""
