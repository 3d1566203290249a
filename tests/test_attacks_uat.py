"""`uat` on tiny random models: invariants of the search, the rows it returns, a planted weakness."""
import numpy as np
import pytest
import torch

from attack_models import CONT, Disk, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import run_attack, uat
from monollm.attacks.common import allowed_tokens, continuation_nll, prepend, retokenized
from monollm.attacks.gradients import score_triggers

SMALL = uat.UATConfig(trigger_len=3, top_k=4, widen=2, steps=4, restarts=2, controls=3)


def split():
    return {"test": examples(8, 0), "attack_opt": examples(8, 1)}


@pytest.fixture(scope="module")
def rows():
    models = {"baseline": model(0), "monotonic": model(1)}
    return models, run_attack("uat", models, tokenizer(), split(), CONT, 16, SMALL, seed=0, log=lambda _: None)


def test_ascent_never_lowers_the_objective():
    m, tok = model(0), tokenizer()
    opt = torch.as_tensor(examples(8, 1))
    allowed = allowed_tokens(tok, 320)
    found = uat.search(m, tok, opt, allowed, SMALL, np.random.default_rng(3), CONT, 16)
    assert len(found) == SMALL.restarts
    for s in found:
        assert np.all(np.diff(s.history) > 0)  # only strict improvements are accepted
        assert len(s.history) >= 2  # a random start is improvable on a random model
        start, end = (score_triggers(m, torch.tensor(t)[None], opt, CONT, 16).mean().item() for t in (s.start, s.trigger))
        assert start == pytest.approx(s.history[0], abs=1e-5) and end == pytest.approx(s.objective, abs=1e-5)
        assert end > start
        assert all(allowed[t] for t in s.start + s.trigger)
        assert s.candidate_evals > 1 and s.forward_passes > s.candidate_evals


def test_budget_and_target_stop_the_search():
    m, tok = model(0), tokenizer()
    opt, allowed = torch.as_tensor(examples(8, 1)), allowed_tokens(tok, 320)
    big = uat.UATConfig(trigger_len=3, top_k=4, steps=100, restarts=100)
    capped = uat.search(m, tok, opt, allowed, big, np.random.default_rng(0), CONT, 16, max_evals=30)
    assert sum(s.candidate_evals for s in capped) == 30
    first = capped[0].history
    target = first[0] + 1e-4 if len(first) > 1 else first[0]
    hit = uat.search(m, tok, opt, allowed, big, np.random.default_rng(0), CONT, 16, target=target)
    assert max(s.objective for s in hit) >= target and len(hit) == 1 and len(hit[0].history) <= len(first)


def test_rows_kinds_and_compute(rows):
    models, results = rows
    kinds = [(r.kind, r.model, r.source_model) for r in results]
    assert kinds[:4] == [("attack", "baseline", "baseline"), ("transfer", "monotonic", "baseline"),
                         ("transfer", "baseline", "monotonic"), ("attack", "monotonic", "monotonic")]
    controls = [r for r in results if r.kind == "control"]
    draws = max([SMALL.controls] + [len({tuple(r.trigger_ids) for r in results if r.kind != "control" and r.model == m})
                                     for m in models])  # at least one draw per distinct trigger on a model
    assert len(controls) == draws * len(models)
    for trial in range(draws):
        same = [r for r in controls if r.trial == trial]
        assert {r.model for r in same} == set(models) and len({tuple(r.trigger_ids) for r in same}) == 1
        assert all(len(r.trigger_ids) == SMALL.trigger_len and r.forward_passes == 0 for r in same)
    for r in results[:4]:
        assert r.forward_passes > r.candidate_evals > 0
        assert np.array_equal(r.example_ids, np.arange(8))
    assert results[0].trigger_ids == results[1].trigger_ids  # transfer reuses the source's trigger
    for p in (p for m in models.values() for p in m.parameters()):
        assert p.requires_grad and p.grad is None  # gradients only w.r.t. the one-hot input


def test_triggers_allowed_retokenize_and_leave_scored_tokens_alone(rows):
    models, results = rows
    tok, test = tokenizer(), torch.as_tensor(split()["test"])
    allowed = allowed_tokens(tok, 320)
    for r in results:
        assert all(allowed[t] for t in r.trigger_ids)
        assert tok(r.trigger_text, add_special_tokens=False)["input_ids"] == r.trigger_ids
        attacked = retokenized(tok, prepend(torch.tensor(r.trigger_ids), test))
        assert torch.equal(attacked[:, -CONT:], test[:, -CONT:])  # the scored positions are the clean ones
        nll = continuation_nll(models[r.model], attacked, CONT, 16).numpy()
        assert np.allclose(nll, r.attacked_nll, atol=1e-5)
        assert np.allclose(r.clean_nll, continuation_nll(models[r.model], test, CONT, 16).numpy(), atol=1e-5)


def test_planted_weakness_is_found():
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    params = uat.UATConfig(trigger_len=3, top_k=4, steps=4, restarts=1, controls=2)
    results = run_attack("uat", {"weak": weak, "plain": model(1)}, tokenizer(), split(), CONT, 16, params, seed=0,
                      log=lambda _: None)
    found = results[0]
    assert (found.kind, found.model) == ("attack", "weak")
    assert token in found.trigger_ids
    assert np.all(found.attacked_nll - found.clean_nll > 10)
    plain = next(r for r in results if r.kind == "attack" and r.model == "plain")
    assert token not in plain.trigger_ids or np.mean(plain.attacked_nll - plain.clean_nll) < 1


def test_config_check():
    uat.UATConfig().check()
    with pytest.raises(ValueError, match="top_k"):
        uat.UATConfig(top_k=0).check()
    with pytest.raises(ValueError, match="opt_examples"):
        uat.UATConfig(opt_examples=-1).check()


def test_bf16_search_reports_fp32_scores(rows):
    """The search may run under bf16 autocast; every reported NLL is still scored in fp32, so
    the clean NLLs equal the fp32 run's exactly and each attacked NLL is its trigger's fp32 score."""
    from monollm.attacks.common import resolved_precision, search_precision

    assert resolved_precision("cpu", "auto") == "fp32" and resolved_precision("cpu", "bf16") == "bf16"
    x = torch.ones(2, 2)
    with search_precision("cpu", "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with search_precision("cpu", "auto"):
        assert (x @ x).dtype == torch.float32
    models, fp32 = rows
    bf16 = run_attack("uat", models, tokenizer(), split(), CONT, 16, SMALL, seed=0, log=lambda _: None, precision="bf16")
    test = torch.as_tensor(split()["test"])
    for a, b in zip(fp32, bf16):
        assert (a.kind, a.model) == (b.kind, b.model)
        np.testing.assert_array_equal(a.clean_nll, b.clean_nll)
        attacked = prepend(torch.tensor(b.trigger_ids), test)
        expected = continuation_nll(models[b.model], attacked, CONT, 16).numpy()
        np.testing.assert_array_equal(b.attacked_nll, expected)


def test_final_trigger_cannot_fail_on_the_test_examples():
    """A model that rewards token X, and test examples that X merges with (but attack_opt
    examples that it does not): the search must never accept X, so the final selection
    finds a trigger that survives before every test example instead of failing after the search."""
    from monollm.attacks.common import rows_survive, trigger_survives

    tok, opt = tokenizer(), examples(8, 1)
    allowed = allowed_tokens(tok, 320)
    letters = [i for i in range(300) if allowed[i] and tok.decode([i]).isalpha()]

    def merging_test(x):  # test rows whose first token merges with a preceding x, or None
        test = examples(8, 0).copy()
        for row in test:
            for c in letters:
                new = [c] + row[1:].tolist()
                if rows_survive(tok, [new])[0] and not rows_survive(tok, [[x] + new])[0]:
                    row[0] = c
                    break
            else:
                return None
        return test

    x, test = next((x, t) for x in letters if trigger_survives(tok, [x], opt)
                   for t in [merging_test(x)] if t is not None)
    planted = {"baseline": plant(model(0), x, unused_symbol(skip=(x,)))}
    params = uat.UATConfig(trigger_len=1, top_k=4, widen=2, steps=4, restarts=1, controls=1)
    rows = run_attack("uat", planted, tok, {"test": test, "attack_opt": opt}, CONT, 16, params, seed=0, log=lambda _: None)
    trigger = rows[0].trigger_ids
    assert trigger != [x] and trigger_survives(tok, trigger, test)


def test_interrupted_search_continues_from_a_weights_only_checkpoint(rows, tmp_path):
    models, whole = rows
    first = Disk(str(tmp_path / "a"))
    run_attack("uat", models, tokenizer(), split(), CONT, 16, SMALL, seed=0, log=lambda _: None, checkpoint=first)
    assert len(first.folders) == SMALL.restarts * len(models)
    lines = []
    resumed = run_attack("uat", models, tokenizer(), split(), CONT, 16, SMALL, seed=0, log=lines.append,
                      checkpoint=Disk(str(tmp_path / "b"), resume_from=first.folders[0]))
    assert any("continuing after 1 finished restarts" in line for line in lines)
    for got, want in zip(resumed, whole, strict=True):
        assert got.trigger_ids == want.trigger_ids and np.array_equal(got.attacked_nll, want.attacked_nll)


@pytest.mark.parametrize("ranking", ["random", "exact"])
def test_rankings_without_gradient_spend_no_gradient_pass(ranking):
    m, tok = model(0), tokenizer()
    opt, allowed = torch.as_tensor(examples(8, 1)), allowed_tokens(tokenizer(), 320)
    params = uat.UATConfig(trigger_len=3, top_k=4, widen=2, steps=3, restarts=1, ranking=ranking)
    (s,) = uat.search(m, tok, opt, allowed, params, np.random.default_rng(3), CONT, 16)
    assert s.forward_passes == len(opt) * s.candidate_evals  # one pass per example per scored trigger
    assert np.all(np.diff(s.history) > 0) and len(s.history) >= 2
    if ranking == "exact":  # every allowed token at one position per step, nothing more
        assert s.candidate_evals >= 1 + int(allowed.sum()) - 1


def test_exact_ranking_scores_every_token_at_a_position_and_finds_the_planted_one():
    """On the planted model the gradient is not needed: exact scoring of every allowed token at a
    position finds the planted token in its first step."""
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    params = uat.UATConfig(trigger_len=2, steps=1, restarts=1, controls=1, ranking="exact", guidance_sample=0)
    results = run_attack("uat", {"weak": weak}, tokenizer(), split(), CONT, 16, params, seed=0, log=lambda _: None)
    found = results[0]
    assert found.ranking == "exact" and token in found.trigger_ids
    n_allowed = int(allowed_tokens(tokenizer(), 320).sum())
    # the start, then every allowed token but the current one at position 0
    assert found.candidate_evals == 1 + n_allowed - 1
    assert np.isnan(found.guidance_spearman) and found.guidance_n == 0  # not measured when asked not to


def test_ranking_is_checked():
    with pytest.raises(ValueError, match="attack.uat.ranking"):
        uat.UATConfig(ranking="best").check()


def test_gradient_ranking_scores_the_top_swaps_of_an_independent_gradient(monkeypatch):
    """With ranking "gradient", the first candidates scored are exactly the top-k swaps per position by
    first-order gain, grad[v] - grad[current], of a gradient computed here by another route (d loss /
    d embeddings, then the chain rule through onehot @ E), best gain first. Seeded random scores
    in place of the gradient propose other swaps, so this fails if UAT stops using its gradient."""
    m, tok, opt = model(0), tokenizer(), torch.as_tensor(examples(8, 1))
    allowed = allowed_tokens(tok, 320)
    init = allowed.nonzero().flatten()[[40, 90, 140]]
    scored = []

    def recording(model_, cands, *args, **kw):
        scored.append(cands.clone())
        return score_triggers(model_, cands, *args, **kw)

    monkeypatch.setattr(uat, "score_triggers", recording)  # the start is scored by the skeleton, not here
    params = uat.UATConfig(trigger_len=3, top_k=4, widen=2, steps=1, restarts=1)
    uat.ascend(m, tok, opt, allowed, init.tolist(), params, CONT, 16)
    E = m.get_input_embeddings().weight.detach()
    emb = E[prepend(init, opt)].clone().requires_grad_(True)
    logits = m(inputs_embeds=emb).logits[:, -CONT - 1:-1]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), opt[:, -CONT:], reduction="none").mean(1)
    (g_emb,) = torch.autograd.grad(loss.sum(), emb)
    grad = g_emb[:, :3].sum(0) @ E.T  # (L, V): the gradient of the summed loss w.r.t. the shared one-hot
    gain = (grad - grad.gather(1, init[:, None])).masked_fill(~allowed, float("-inf"))
    gain[torch.arange(3), init] = float("-inf")
    top = gain.topk(4, dim=1)
    expected = {(p, int(t)) for p in range(3) for t in top.indices[p]}
    first = scored[0]
    swaps = [(int((c != init).nonzero()), int(c[(c != init).nonzero()])) for c in first]
    assert len(first) == 12 and set(swaps) == expected
    assert gain[swaps[0]] == top.values.max()  # best gain first
