"""`random_flips` on tiny random models: hotflip's search with random ranking, under the same edit
budget (equal forward passes per example), with hotflip's flips and candidates, its two controls
and its budget curve, and never a gradient."""
import dataclasses

import numpy as np
import pytest
import torch

from attack_models import CONT, CONTEXT, examples, model, tokenizer
from monollm.attacks import ATTACKS, attack_config, flip_budget, hotflip, random_flips, run_attack
from monollm.attacks.common import allowed_tokens
from monollm.errors import ConfigError

PARAMS = random_flips.RandomFlipsConfig(max_flips=2, candidates=5, controls=2)
MODELS = ("baseline", "monotonic")


def no_gradient(*a, **k):
    raise AssertionError("a gradient pass")


@pytest.fixture(scope="module")
def pair():
    """random_flips and hotflip under one budget of 30 passes per example, on the same two models."""
    models = {"baseline": model(0), "monotonic": model(1)}
    run = lambda name, params: run_attack(name, models, tokenizer(), {"test": examples(8, 0)}, CONT, 16,  # noqa
                                          params, seed=0, log=lambda _: None, edit_budget=30, curve_points=4)
    hot = dataclasses.replace(hotflip.HotFlipConfig(max_flips=2, candidates=5, controls=2), guidance_sample=0)
    with pytest.MonkeyPatch.context() as mp:  # random_flips computes no gradient at all
        mp.setattr(flip_budget, "onehot_grad", no_gradient)
        mp.setattr(hotflip, "onehot_grad", no_gradient)
        rows = run("random_flips", PARAMS)
    return rows, run("hotflip", hot)


def test_defaults_are_hotflips_flips_and_candidates_with_random_ranking():
    cls, _ = ATTACKS["random_flips"]
    mine, theirs = cls(), hotflip.HotFlipConfig()
    assert (mine.max_flips, mine.candidates, mine.controls) == (theirs.max_flips, theirs.candidates, 16)
    assert (mine.ranking, mine.guidance_sample) == ("random", 0)
    with pytest.raises(ConfigError, match="attack.random_flips.ranking"):
        attack_config("random_flips", {"ranking": "gradient"}, "attack.random_flips")
    with pytest.raises(ValueError, match="attack.random_flips: controls"):
        random_flips.RandomFlipsConfig(controls=0).check()


def test_rows_are_random_ranked_with_the_same_passes_as_hotflip(pair):
    rows, hot = pair
    assert {r.attack for r in rows} == {"random_flips"} and {r.attack for r in hot} == {"hotflip"}
    assert {r.kind for r in rows} == {"attack", "transfer", "control", "control_random_positions", "budget"}
    for r in (r for r in rows if r.kind in ("attack", "transfer", "budget")):
        assert r.ranking == "random" and r.budget == 30
    mine = {r.model: r for r in rows if r.kind == "attack"}
    theirs = {r.model: r for r in hot if r.kind == "attack"}
    for name in MODELS:  # 8 examples x 30 passes, whatever the ranking (neither runs out of swaps)
        assert mine[name].forward_passes == theirs[name].forward_passes == 8 * 30
        assert mine[name].candidate_evals == 8 * 29  # no gradient pass: all but the clean pass are candidates
        assert theirs[name].candidate_evals < 8 * 29
        assert (mine[name].n_changed <= PARAMS.max_flips).all() and mine[name].n_changed.sum() > 0
        assert np.all(mine[name].attacked_nll >= mine[name].clean_nll - 1e-6)


def test_controls_and_curve_are_hotflips(pair):
    rows, _ = pair
    for source in MODELS:
        own = next(r for r in rows if r.kind == "attack" and r.model == source)
        for kind in ("control", "control_random_positions"):
            for target in MODELS:
                trials = sorted(r.trial for r in rows if (r.kind, r.model, r.source_model) == (kind, target, source))
                assert trials == list(range(PARAMS.controls))
        where = own.attacked_ids != own.input_ids
        for c in (r for r in rows if r.kind == "control" and r.source_model == source):
            assert np.array_equal(c.attacked_ids != c.input_ids, where)  # at random_flips' own positions
        curve = sorted((r for r in rows if (r.kind, r.model, r.source_model) == ("budget", source, source)),
                       key=lambda r: r.trial)
        assert [r.budget_fraction for r in curve] == [0.125, 0.25, 0.5, 1.0]
        assert np.array_equal(curve[-1].attacked_ids, own.attacked_ids)
        assert (np.diff(np.stack([r.attacked_nll for r in curve]), axis=0) >= -1e-5).all()
        other = next(m for m in MODELS if m != source)  # the curve is scored on the other model too
        assert len([r for r in rows if (r.kind, r.model, r.source_model) == ("budget", other, source)]) == 4


def test_random_queue_draws_fresh_distinct_allowed_swaps():
    """The widening of the random search: one queue per input, drawn without replacement, so that
    every round scores swaps no earlier round from that input scored."""
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    allowed = allowed_tokens(tok, 320)
    got = flip_budget.queues(None, test, test, allowed, CONTEXT, CONT, PARAMS, 16, np.random.default_rng(0),
                             np.full(8, 200))
    for row, q in zip(test, got):
        pos, tokens = q // 320, q % 320
        assert len(q) == 200 and len(set(q.tolist())) == 200  # 200 distinct swaps: 40 rounds of 5, no repeats
        assert (pos < CONTEXT).all() and allowed[tokens].all() and (row[pos] != tokens).all()
        assert len(set(pos.tolist())) == CONTEXT  # spread over the whole context
