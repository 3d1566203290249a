"""`random_search` on tiny random models: its candidates, a search that only climbs and never takes a
gradient, a planted weakness found by chance alone, and its config and the profile checks it needs."""
import numpy as np
import pytest
import torch

from attack_models import CONT, examples, model, plant, tokenizer, unused_symbol
from monollm import config
from monollm.attacks import ATTACKS, attack_config, random_search, run_attack
from monollm.attacks.common import allowed_tokens
from monollm.attacks.gradients import score_triggers
from monollm.errors import ConfigError


def split():
    return {"test": examples(8, 0), "attack_opt": examples(8, 1)}


def test_candidates_change_n_swap_positions_to_other_allowed_tokens():
    allowed = allowed_tokens(tokenizer(), 320)
    trigger = allowed.nonzero().flatten()[[10, 20, 30, 40]]
    for n_swap in (1, 2, 4):
        cands = random_search.sample_candidates(trigger, allowed, n_swap, 300, np.random.default_rng(0))
        assert len(torch.unique(cands, dim=0)) == len(cands) > 200  # duplicates once (300 draws, 680 swaps)
        changed = cands != trigger
        assert (changed.sum(dim=1) == n_swap).all() and allowed[cands].all()  # never the token already there
        assert set(changed.nonzero()[:, 1].tolist()) == set(range(4))  # every position is drawn
    again = random_search.sample_candidates(trigger, allowed, 2, 300, np.random.default_rng(0))
    assert torch.equal(again, random_search.sample_candidates(trigger, allowed, 2, 300, np.random.default_rng(0)))
    # uniform over the other allowed tokens: with two allowed tokens, the other one every time
    two = torch.zeros(320, dtype=torch.bool)
    two[trigger[:2]] = True
    only = random_search.sample_candidates(trigger[:2], two, 2, 50, np.random.default_rng(1))
    assert only.tolist() == [trigger[:2].flip(0).tolist()]


def test_registered_built_from_defaults_and_never_takes_a_gradient(monkeypatch):
    from monollm.attacks import gradients, guidance, trigger

    def no_gradient(*a, **k):
        raise AssertionError("a gradient pass")

    for module in (gradients, guidance, trigger):
        monkeypatch.setattr(module, "onehot_grad", no_gradient)
    assert ATTACKS["random_search"] == (random_search.RandomSearchConfig, random_search.run)
    params = attack_config("random_search", {}, "attack.random_search")
    assert params == random_search.RandomSearchConfig() and params.ranking == "random" and params.guidance_sample == 0
    models = {"baseline": model(0), "monotonic": model(1)}
    rows = run_attack("random_search", models, tokenizer(), split(), CONT, 16, params, seed=0, log=lambda _: None,
                      budget=1000)
    own = [r for r in rows if r.kind == "attack"]
    assert [r.model for r in own] == ["baseline", "monotonic"] and all(r.attack == "random_search" for r in rows)
    for r in own:
        assert r.ranking == "random" and np.isnan(r.guidance_spearman) and r.guidance_n == 0
        assert r.forward_passes == 8 * r.candidate_evals >= 1000  # one pass per example per candidate, nothing else
        assert np.mean(r.attacked_nll - r.clean_nll) > 0 and r.opt_dnll > 0
    draws = max([params.controls] + [len({tuple(r.trigger_ids) for r in rows if r.kind != "control" and r.model == m})
                                     for m in models])
    assert len([r for r in rows if r.kind == "control"]) == draws * len(models)


def test_search_only_climbs_and_records_when():
    m, tok, opt = model(0), tokenizer(), torch.as_tensor(examples(8, 1))
    params = random_search.RandomSearchConfig(trigger_len=3, steps=6, batch=8, n_swap=2, restarts=2)
    found = random_search.search(m, tok, opt, allowed_tokens(tok, 320), params, np.random.default_rng(3), CONT, 16)
    assert len(found) == 2
    for s in found:
        assert np.all(np.diff(s.history) > 0) and len(s.history) >= 2
        for objective, trigger in zip(s.history, s.history_triggers):
            exact = score_triggers(m, torch.tensor([trigger]), opt, CONT, 16).mean().item()
            assert exact == pytest.approx(objective, abs=1e-5)
        assert s.history_passes[-1] <= s.forward_passes == 8 * s.candidate_evals


def test_planted_weakness_is_found_without_a_gradient():
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    params = random_search.RandomSearchConfig(trigger_len=3, steps=200, batch=8, controls=1)
    rows = run_attack("random_search", {"weak": weak, "plain": model(1)}, tokenizer(), split(), CONT, 16, params,
                      seed=0, log=lambda _: None, budget=8000)
    found = rows[0]
    assert (found.kind, found.model) == ("attack", "weak") and token in found.trigger_ids
    assert np.all(found.attacked_nll - found.clean_nll > 10)


def test_config_is_checked_with_the_key_named():
    assert attack_config("random_search", {"n_swap": 2, "batch": 4}, "attack.random_search").n_swap == 2
    for key in ("steps", "batch", "n_swap"):
        with pytest.raises(ConfigError, match=f"attack.random_search: {key}"):
            attack_config("random_search", {key: 0}, "attack.random_search")
    with pytest.raises(ConfigError, match="n_swap must be at most trigger_len"):
        attack_config("random_search", {"n_swap": 4, "trigger_len": 3}, "attack.random_search")
    with pytest.raises(ConfigError, match="attack.random_search.ranking"):
        attack_config("random_search", {"ranking": "gradient"}, "attack.random_search")


def test_profile_checks_of_the_budget():
    """random_search is a comparison at equal forward passes: a profile listing it needs a budget."""
    with pytest.raises(ConfigError, match="'attack.budget'.*random_search"):
        config.load({"attacks": ["uat", "random_search"]})
    cfg = config.load({"attacks": ["uat", "random_search"], "attack": {"budget": 5000}})
    assert cfg.attack.budget == 5000 and cfg == config.from_dict(config.to_dict(cfg))
    assert config.load({"attacks": ["uat"]}).attack.budget == 0  # no budget: restarts and steps as set
    with pytest.raises(ConfigError, match="'attack.budget'.*>= 0"):
        config.load({"attack": {"budget": -1}})
    with pytest.raises(ConfigError, match="'attacks'.*at least one"):
        config.load({"attacks": []})
