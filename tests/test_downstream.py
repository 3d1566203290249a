"""Downstream tasks: the corpus tasks, lm-eval's scores against a direct computation, the cost
statistics and the [eval.downstream] checks."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from monollm import config
from monollm.data import corpus
from monollm.evaluation import downstream
from monollm.model import foundation

from test_config import micro


# --- the corpus tasks ---------------------------------------------------------------------

def test_corpus_tasks_are_deterministic_and_well_formed():
    cloze, choice = downstream.cloze_items(), downstream.choice_items()
    assert cloze == downstream.cloze_items() and choice == downstream.choice_items()  # same seed, same items
    assert cloze != downstream.cloze_items(seed=1) and choice != downstream.choice_items(seed=1)
    assert len(cloze) > 900 and len(choice) == len(corpus.world_facts()) == 190
    for item in cloze:  # LAMBADA-style: the passage names the target before asking for it
        words = item["context"].split()
        assert item["target"] in corpus.names() and item["target"] in {w.strip('.,?"') for w in words}
        assert len(words) <= downstream.CLOZE_WORDS and not words[-1].endswith(".")
    for item in choice:
        fact = next(f for f in corpus.world_facts() if f["prefix"] == item["query"])
        assert len(set(item["choices"])) == 4 and item["choices"][item["label"]] == fact["answer"]
        assert set(item["choices"]) <= set(corpus.FACT_SLOTS[fact["slot"]])
    # the answer is not always in one place: chance really is 1 in 4
    assert min(np.bincount([i["label"] for i in choice], minlength=4)) > 30


def test_written_tasks_are_lm_eval_yaml_with_local_data(tmp_path):
    import yaml

    folder = downstream.write_corpus_tasks(str(tmp_path))
    for name in downstream.CORPUS_TASKS:
        with open(os.path.join(folder, f"{name}.yaml")) as f:
            task = yaml.safe_load(f)
        assert task["task"] == name == downstream.yaml_task_name(os.path.join(folder, f"{name}.yaml"))
        data = task["dataset_kwargs"]["data_files"]["test"]
        assert task["dataset_path"] == "json" and os.path.dirname(data) == folder
        with open(data) as f:
            rows = [json.loads(line) for line in f]
        assert rows == (downstream.cloze_items() if name == "corpus_cloze" else downstream.choice_items())


# --- lm-eval on a tiny model, against the log-likelihoods computed here ---------------------

@torch.no_grad()
def loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and whether every continuation token is the argmax; the
    continuation's tokens are those of context + continuation past the context's, as lm-eval
    splits them."""
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    cont = whole[len(ctx):]
    ids = torch.tensor([(ctx + cont)[-(foundation.max_positions(model) + 1):]])
    logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits[0, -len(cont):].float(), dim=-1)
    target = torch.tensor(cont)
    return float(logp[torch.arange(len(cont)), target].sum()), bool((logp.argmax(-1) == target).all())


@pytest.fixture(scope="module")
def evaluated(model_dir, tmp_path_factory):
    model, tokenizer = foundation.load(model_dir)
    names, include = downstream.resolve(downstream.CORPUS_TASKS, str(tmp_path_factory.mktemp("tasks")))
    manager, tasks = downstream.load_tasks(names, include, hub=False)
    result = downstream.run_tasks(model, tokenizer, manager, tasks, limit=12, batch_size=8, seed=0, n_boot=100)
    return model, tokenizer, result


def test_cloze_scores_match_a_direct_computation(evaluated):
    model, tokenizer, result = evaluated
    samples = result["samples"]["corpus_cloze"]
    items = downstream.cloze_items()
    assert [s["doc_id"] for s in samples] == list(range(12))
    lls, hits = [], []
    for s in samples:
        item = items[s["doc_id"]]
        ll, greedy = loglikelihood(model, tokenizer, item["context"], " " + item["target"])
        assert s["resps"][0][0][0] == pytest.approx(ll, abs=1e-3)
        assert s["acc"] == int(greedy)
        lls.append(ll), hits.append(greedy)
    res = result["results"]["corpus_cloze"]
    assert res["acc,none"] == pytest.approx(np.mean(hits))
    assert res["perplexity,none"] == pytest.approx(np.exp(-np.mean(lls)), rel=1e-4)


def test_choice_scores_match_a_direct_computation(evaluated):
    model, tokenizer, result = evaluated
    samples = result["samples"]["corpus_choice"]
    items = downstream.choice_items()
    acc, acc_norm = [], []
    for s in samples:
        item = items[s["doc_id"]]
        lls = [loglikelihood(model, tokenizer, item["query"], " " + c)[0] for c in item["choices"]]
        assert [r[0][0] for r in s["resps"]] == pytest.approx(lls, abs=1e-3)
        # lm-eval's acc_norm divides by the choice's length in characters, without the delimiter
        norm = [ll / len(c) for ll, c in zip(lls, item["choices"])]
        acc.append(int(np.argmax(lls) == item["label"])), acc_norm.append(int(np.argmax(norm) == item["label"]))
        assert (s["acc"], s["acc_norm"]) == (acc[-1], acc_norm[-1])
    res = result["results"]["corpus_choice"]
    assert (res["acc,none"], res["acc_norm,none"]) == (pytest.approx(np.mean(acc)), pytest.approx(np.mean(acc_norm)))


def test_tables_carry_every_metric_items_and_chance(evaluated):
    _, _, result = evaluated
    table = downstream.table(result, "reference").set_index(["task", "metric"])
    assert set(table.index) == {("corpus_cloze", "perplexity"), ("corpus_cloze", "acc"),
                                ("corpus_choice", "acc"), ("corpus_choice", "acc_norm")}
    assert (table["n"] == 12).all() and (table["model"] == "reference").all()
    assert table.loc[("corpus_choice", "acc"), "chance"] == 0.25
    targets = [item["target"] for item in downstream.cloze_items()[:12]]
    assert table.loc[("corpus_cloze", "acc"), "chance"] == max(map(targets.count, targets)) / 12
    assert np.isnan(table.loc[("corpus_cloze", "perplexity"), "chance"])
    items = downstream.item_table(result, "reference")
    per_task = items.groupby(["task", "metric"])["value"].agg(["mean", "size"])
    for key, row in per_task.iterrows():
        assert row["size"] == 12 and row["mean"] == pytest.approx(table.loc[key, "value"])


def test_cost_is_monotonic_minus_baseline_paired_over_items():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 200)
    mono = np.where(rng.random(200) < 0.2, 0, base)  # the constrained model loses some items
    items = pd.DataFrame([{"task": "t", "model": m, "item": i, "metric": "acc", "value": float(v[i])}
                          for m, v in (("baseline", base), ("monotonic", mono)) for i in range(200)])
    c = downstream.cost(items.sample(frac=1, random_state=0), 500, 0)["t"]  # pairing by item, not by row order
    assert c["diff"] == pytest.approx(mono.mean() - base.mean()) and c["items"] == 200
    assert c["ci_low"] <= c["diff"] <= c["ci_high"] < 0
    assert downstream.cost(downstream.empty()["items"], 500, 0) == {}


# --- offline, and [eval.downstream] refused in start ------------------------------------------

def test_hub_task_offline_fails_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))  # nothing cached
    names, include = downstream.resolve(["piqa"], str(tmp_path))
    with pytest.raises(downstream.HubUnreachable) as err:
        downstream.load_tasks(names, include, hub=True)
    msg = str(err.value)
    assert "\n" not in msg and "piqa" in msg and "offline" in msg and "eval.downstream.tasks" in msg


def with_downstream(**table) -> dict:
    raw = micro()
    raw["eval"] = {**raw["eval"], "downstream": table}
    return raw


@pytest.mark.parametrize("table, needles", [
    ({"tasks": ["corpus_cloze", "lambda_openai"]},
     ["'eval.downstream.tasks[1]'", "'lambda_openai'", "corpus_cloze, corpus_choice, lambada_openai, hellaswag"]),
    ({"tasks": ["missing/task.yaml"]}, ["'eval.downstream.tasks[0]'", "no such task file", "lambada_openai"]),
    ({"tasks": ["piqa", "piqa"]}, ["'eval.downstream.tasks'", "twice"]),
    ({"tasks": ["piqa"], "limit": -1}, ["'eval.downstream.limit'"]),
    ({"tasks": "piqa"}, ["'eval.downstream.tasks' must be a list"]),
    ({"task": ["piqa"]}, ["unknown key 'eval.downstream.task'", "tasks, limit"]),
])
def test_bad_downstream_tables_are_refused_naming_the_key(table, needles):
    with pytest.raises(config.ConfigError) as err:
        config.load(with_downstream(**table))
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_a_task_file_is_accepted_by_its_path(tmp_path):
    folder = downstream.write_corpus_tasks(str(tmp_path))
    path = os.path.join(folder, "corpus_choice.yaml")
    cfg = config.load(with_downstream(tasks=[path], limit=5))
    assert cfg.eval.downstream.tasks == (path,) and config.from_dict(config.to_dict(cfg)) == cfg
    names, include = downstream.resolve(cfg.eval.downstream.tasks, str(tmp_path / "unused"))
    assert names == ["corpus_choice"] and include == [folder]
    (tmp_path / "bad.yaml").write_text("dataset_path: json\n")
    with pytest.raises(config.ConfigError, match=r"'eval.downstream.tasks\[0\]'.*not an lm-eval task file"):
        config.load(with_downstream(tasks=[str(tmp_path / "bad.yaml")]))


def test_branches_put_downstream_beside_the_attacks():
    from monollm import branches

    cfg = config.load(micro())
    assert branches.names(cfg) == list(cfg.attacks) + [downstream.BRANCH, branches.ORDER_BRANCH]
    none = config.load(with_downstream(tasks=[]))
    assert branches.names(none) == list(none.attacks) + [branches.ORDER_BRANCH]
    raw = with_downstream(tasks=[])
    both = config.load({**raw, "attack": {**raw["attack"], "tokens": ["printable", "round_trip"]}})
    assert branches.names(both)[:2 * len(cfg.attacks)] == list(cfg.attacks) + [f"{a}@round_trip" for a in cfg.attacks]
