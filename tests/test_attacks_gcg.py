"""`gcg` on tiny random models: its sampling step, its search invariants and compute, a planted
weakness, and that it has everything the trigger-attack skeleton gives `uat` (rows, matched
control, transfer, guidance, checkpoints)."""

import numpy as np
import pytest
import torch

from attack_models import CONT, Disk, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import attack_config, gcg, run_attack
from monollm.attacks.common import allowed_tokens
from monollm.attacks.gradients import flip_scores, score_triggers

SMALL = gcg.GCGConfig(trigger_len=3, top_k=8, batch=16, steps=4, restarts=2, controls=3, guidance_sample=24)


def split():
    return {"test": examples(8, 0), "attack_opt": examples(8, 1)}


@pytest.fixture(scope="module")
def rows():
    models = {"baseline": model(0), "monotonic": model(1)}
    return models, run_attack("gcg", models, tokenizer(), split(), CONT, 16, SMALL, seed=0, log=lambda _: None)


def test_sampled_swaps_change_one_position_to_one_of_its_top_k_tokens():
    allowed = allowed_tokens(tokenizer(), 320)
    g = torch.Generator().manual_seed(0)
    scores, trigger = torch.randn(4, 320, generator=g), torch.tensor([5, 6, 7, 8])
    top = flip_scores(scores, trigger, allowed).topk(6, dim=-1).indices
    cands = gcg.sample_swaps(scores, trigger, allowed, 6, 200, np.random.default_rng(0))
    assert len(torch.unique(cands, dim=0)) == len(cands) <= 4 * 6
    assert len(cands) > 12  # 200 draws over 24 swaps: most of them are seen
    for c in cands:
        (pos,) = (c != trigger).nonzero().flatten().tolist()  # exactly one position changes
        assert int(c[pos]) in top[pos].tolist() and allowed[c[pos]]


def test_search_never_lowers_the_objective_and_counts_its_compute():
    m, tok = model(0), tokenizer()
    opt, allowed = torch.as_tensor(examples(8, 1)), allowed_tokens(tokenizer(), 320)
    for ranking in ("gradient", "random"):
        params = gcg.GCGConfig(trigger_len=3, top_k=8, batch=16, steps=5, restarts=2, ranking=ranking)
        found = gcg.search(m, tok, opt, allowed, params, np.random.default_rng(3), CONT, 16)
        assert len(found) == 2
        for s in found:
            assert np.all(np.diff(s.history) > 0) and len(s.history) >= 2
            end = score_triggers(m, torch.tensor(s.trigger)[None], opt, CONT, 16).mean().item()
            assert end == pytest.approx(s.objective, abs=1e-5)
            assert 1 < s.candidate_evals <= 1 + params.steps * params.batch
            gradient_passes = s.forward_passes - len(opt) * s.candidate_evals  # every candidate: one pass per example
            if ranking == "random":
                assert gradient_passes == 0
            else:  # one gradient pass over the batch per trigger a step began from (the last one
                # accepted may end the search before any step starts from it)
                assert gradient_passes in (len(opt) * len(s.history), len(opt) * (len(s.history) - 1))


def test_planted_weakness_is_found():
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    params = gcg.GCGConfig(trigger_len=3, top_k=4, batch=12, steps=4, restarts=1, controls=2)
    results = run_attack("gcg", {"weak": weak, "plain": model(1)}, tokenizer(), split(), CONT, 16, params, seed=0,
                         log=lambda _: None)
    found = results[0]
    assert (found.attack, found.kind, found.model) == ("gcg", "attack", "weak")
    assert token in found.trigger_ids and np.all(found.attacked_nll - found.clean_nll > 10)


def test_rows_have_transfer_matched_control_guidance_and_compute(rows):
    models, results = rows
    kinds = [(r.kind, r.model, r.source_model) for r in results[:4]]
    assert kinds == [("attack", "baseline", "baseline"), ("transfer", "monotonic", "baseline"),
                     ("transfer", "baseline", "monotonic"), ("attack", "monotonic", "monotonic")]
    assert results[0].trigger_ids == results[1].trigger_ids
    for r in results[:4]:
        assert r.ranking == "gradient" and r.forward_passes > r.candidate_evals > 0
        assert np.isfinite(r.guidance_spearman) and r.guidance_n == SMALL.guidance_sample
    controls = [r for r in results if r.kind == "control"]
    draws = max([SMALL.controls] + [len({tuple(r.trigger_ids) for r in results if r.kind != "control" and r.model == m})
                                     for m in models])  # at least one draw per distinct trigger on a model
    assert len(controls) == draws * len(models)
    for trial in range(draws):
        same = [r for r in controls if r.trial == trial]
        assert len({tuple(r.trigger_ids) for r in same}) == 1 and len(same[0].trigger_ids) == SMALL.trigger_len
        assert all(r.ranking == "" and np.isnan(r.guidance_spearman) and r.forward_passes == 0 for r in same)


def test_interrupted_search_continues_where_it_stopped(rows, tmp_path):
    models, whole = rows
    first = Disk(str(tmp_path / "a"))
    run_attack("gcg", models, tokenizer(), split(), CONT, 16, SMALL, seed=0, log=lambda _: None, checkpoint=first)
    assert len(first.folders) == SMALL.restarts * len(models)
    lines = []
    resumed = run_attack("gcg", models, tokenizer(), split(), CONT, 16, SMALL, seed=0, log=lines.append,
                         checkpoint=Disk(str(tmp_path / "b"), resume_from=first.folders[0]))
    assert any("[gcg] baseline: continuing after 1 finished restarts" in line for line in lines)
    for got, want in zip(resumed, whole, strict=True):
        assert got.trigger_ids == want.trigger_ids and np.array_equal(got.attacked_nll, want.attacked_nll)


def test_config_is_checked_with_the_key_named():
    from monollm.errors import ConfigError

    assert attack_config("gcg", {"batch": 8}, "attack.gcg").batch == 8
    with pytest.raises(ConfigError, match="attack.gcg.ranking"):
        attack_config("gcg", {"ranking": "exact"}, "attack.gcg")
    with pytest.raises(ConfigError, match="batch"):
        attack_config("gcg", {"batch": 0}, "attack.gcg")
    with pytest.raises(ConfigError, match="guidance_sample"):
        attack_config("gcg", {"guidance_sample": -1}, "attack.gcg")
