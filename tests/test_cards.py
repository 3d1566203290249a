"""Card components from the tables (synthetic, fast) and the cards of a real micro run."""
import base64
import copy
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

from monollm import cards, config, report
from monollm.attacks.common import AttackResult


def synthetic_run(monotonic_lr=0.0):
    """The artifacts join_attacks has, from the real report functions on made-up numbers."""
    rng = np.random.default_rng(0)
    tokens = np.full(40, 31)
    per_block = {m: (rng.normal(3 + 0.3 * i, 0.2, 40) * 31, tokens) for i, m in enumerate(report.MODELS)}
    ppl = report.perplexity_table(per_block, 200, 0)
    checks = {s: {"matrices": 4, "negative": 0, "min": 1e-4, "parametrized": p}
              for s, p in (("applied", 4), ("after_training", 4), ("after_materializing", 0))}
    constraint = report.constraint_table(checks)
    ex, results = np.arange(20), []
    for model, other in (("baseline", "monotonic"), ("monotonic", "baseline")):
        clean = rng.normal(3, 0.3, 20)
        for kind, source, trial in (("attack", model, 0), ("control", "", 0), ("control", "", 1),
                                    ("transfer", other, 0)):
            results.append(AttackResult("uat", model, kind, ex, clean, clean + rng.normal(0.5, 0.2, 20),
                                        trial=trial, source_model=source))
        results.append(AttackResult("random", model, "attack", ex, clean, clean + rng.normal(0.1, 0.1, 20)))
    attacks = report.attack_table(results)
    history = {arm: [{"arm": arm, "step": s, "tokens": 512 * s, "loss": 4 - 0.01 * s, "lr": 1e-3, "grad_norm": 1.0,
                      "val_loss": 3.9 - 0.01 * s if s % 10 == 0 else math.nan} for s in range(1, 51)]
               for arm in ("baseline", "monotonic")}
    with open(MICRO, "rb") as f:
        raw = tomllib.load(f)
    raw["train"]["monotonic_lr"] = monotonic_lr
    return SimpleNamespace(
        resolved_config=config.to_dict(config.load(raw)), perplexity=ppl, constraint=constraint, attacks=attacks,
        training=report.training_table(history), attack_summary=report.attack_summary(attacks, [0.5, 1.0], 200, 0),
        findings=report.findings(ppl, per_block, constraint, attacks, "gelu", 200, 0), per_block=per_block)


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

    from monollm.train import steps_for

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

    from monollm.train import steps_for

    cfg, saved = tcfg(checkpoint_every=2), {}
    full = run(neox(), cfg, arm="baseline", save_checkpoint=lambda st, step: saved.setdefault(step, copy.deepcopy(st)))
    now, card, seen = [100.0], FakeCard(), []
    live = cards.LiveTraining(card, "baseline", steps_for(cfg, T), cfg.batch_size * T, every=3600,
                              clock=lambda: now[0])

    def on_step(row):
        seen.append(row)
        now[0] += 2.0  # two seconds per step of this task
        live(row)

    run(neox(seed=5), cfg, arm="baseline", resume=saved[4], on_step=on_step)
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
