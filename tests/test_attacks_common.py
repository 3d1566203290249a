"""Scoring and gradient machinery shared by the attacks, on tiny random models (CPU)."""
import dataclasses

import numpy as np
import pytest
import torch

from attack_models import CONT, examples, model, tokenizer
from monollm.attacks import ATTACKS
from monollm.attacks.common import (allowed_tokens, continuation_nll, prepend, retokenized, rows_survive,
                                    trigger_survives)
from monollm.attacks.gradients import flip_scores, input_grad_only, onehot_grad, score_triggers, with_flips


@torch.no_grad()
def reference_nll(m, row: torch.Tensor, n_cont: int) -> float:
    """One sequence, one forward pass, every logit: mean NLL of the last n_cont tokens."""
    logp = torch.log_softmax(m(input_ids=row[None]).logits[0].double(), dim=-1)
    T = len(row)
    return float(-logp[T - n_cont - 1:T - 1].gather(1, row[-n_cont:, None]).mean())


def test_trigger_scorer_equals_one_at_a_time():
    m, ex = model(), torch.as_tensor(examples())
    triggers = torch.randint(0, 300, (5, 3), generator=torch.Generator().manual_seed(0))
    batched = score_triggers(m, triggers, ex, CONT, batch_size=7)  # chunks straddle candidates
    assert batched.shape == (5, len(ex))
    for i, trig in enumerate(triggers):
        for b, row in enumerate(ex):
            assert batched[i, b].item() == pytest.approx(reference_nll(m, torch.cat([trig, row]), CONT), abs=1e-5)


def test_flip_scorer_equals_one_at_a_time():
    m, ex = model(), torch.as_tensor(examples())
    rows, pos, tokens = torch.tensor([0, 0, 3, 7]), torch.tensor([0, 5, 11, 2]), torch.tensor([10, 20, 30, 40])
    cands = with_flips(ex, rows, pos, tokens)
    assert torch.equal(cands[:, -CONT:], ex[rows, -CONT:])
    assert [int((c != ex[r]).sum()) for c, r in zip(cands, rows)] == [1, 1, 1, 1]
    batched = continuation_nll(m, cands, CONT, batch_size=3)
    for c, value in zip(cands, batched):
        assert value.item() == pytest.approx(reference_nll(m, c, CONT), abs=1e-5)


def test_onehot_gradient_is_the_embedding_gradient_and_touches_no_parameter():
    m, ex = model(), torch.as_tensor(examples())
    before = [p.requires_grad for p in m.parameters()]
    loss, grad = onehot_grad(m, ex, 0, 12, CONT, batch_size=3)
    assert grad.shape == (len(ex), 12, m.get_input_embeddings().weight.shape[0])
    assert torch.allclose(loss, continuation_nll(m, ex, CONT, 64), atol=1e-5)
    assert [p.requires_grad for p in m.parameters()] == before
    assert all(p.grad is None for p in m.parameters())
    # independent route: d loss / d embeddings, then the chain rule through onehot @ E
    emb = m.get_input_embeddings()(ex).detach().requires_grad_(True)
    logits = m(inputs_embeds=emb).logits[:, -CONT - 1:-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ex[:, -CONT:], reduction="none").mean(1)
    (g_emb,) = torch.autograd.grad(nll.sum(), emb)
    assert torch.allclose(grad, g_emb[:, :12] @ m.get_input_embeddings().weight.detach().T, atol=1e-5)


def test_shared_onehot_gradient_sums_the_rows():
    m, ex = model(), torch.as_tensor(examples())
    ids = prepend(torch.tensor([5, 6, 7]), ex)
    _, per_row = onehot_grad(m, ids, 0, 3, CONT, batch_size=5)
    _, shared = onehot_grad(m, ids, 0, 3, CONT, batch_size=5, shared=True)
    assert shared.shape == per_row.shape[1:]
    assert torch.allclose(shared, per_row.sum(0), atol=1e-5)


def test_gradient_refuses_to_touch_the_continuation():
    m, ex = model(), torch.as_tensor(examples())
    with pytest.raises(AssertionError):
        onehot_grad(m, ex, 0, ex.shape[1] - CONT + 1, CONT, batch_size=4)


def test_input_grad_only_restores_flags_on_error():
    m = model()
    m.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.requires_grad_(False)
    before = [p.requires_grad for p in m.parameters()]
    with pytest.raises(RuntimeError), input_grad_only(m):
        assert not any(p.requires_grad for p in m.parameters())
        raise RuntimeError("boom")
    assert [p.requires_grad for p in m.parameters()] == before


def test_allowed_tokens_exclude_special_padding_and_unstable_tokens():
    tok, rows = tokenizer(), model().get_input_embeddings().weight.shape[0]
    allowed = allowed_tokens(tok, rows)
    assert rows > len(tok) and allowed.shape == (rows,)
    assert not allowed[len(tok):].any()  # embedding padding rows beyond the tokenizer
    assert not any(allowed[i] for i in tok.all_special_ids)
    ids = allowed.nonzero().flatten().tolist()
    assert len(ids) > 50
    assert all(tok(tok.decode([i]), add_special_tokens=False)["input_ids"] == [i] for i in ids)


def test_printable_tokens_drop_exactly_the_control_bytes():
    """attack.tokens = "printable": the round-trip tokens minus those whose text is not printable
    (a byte-level BPE has a token for every byte, control bytes such as NUL included)."""
    tok, rows = tokenizer(), model().get_input_embeddings().weight.shape[0]
    every, shown = allowed_tokens(tok, rows), allowed_tokens(tok, rows, "printable")
    texts = {i: tok.decode([i]) for i in every.nonzero().flatten().tolist()}
    dropped = {i for i, t in texts.items() if not all(c.isprintable() or c in "\n\t" for c in t)}
    assert "\x00" in {texts[i] for i in dropped}  # the NUL byte round-trips, so the default allows it
    assert set(shown.nonzero().flatten().tolist()) == set(texts) - dropped
    assert any("\n" in texts[i] for i in shown.nonzero().flatten().tolist())  # newline stays


def test_unknown_attack_tokens_setting_is_refused_naming_the_key():
    from monollm import config

    with pytest.raises(config.ConfigError, match="attack.tokens"):
        config.load({"attack": {"tokens": "ascii"}})


def test_flip_scores_mask_disallowed_and_current_tokens():
    grad = torch.randn(2, 4, 10)
    current = torch.tensor([[1, 2, 3, 4], [0, 0, 9, 9]])
    allowed = torch.ones(10, dtype=torch.bool)
    allowed[7] = False
    s = flip_scores(grad, current, allowed)
    assert torch.isneginf(s[..., 7]).all()
    assert torch.isneginf(s.gather(-1, current[..., None])).all()
    keep = torch.isfinite(s)
    assert torch.allclose(s[keep], (grad - grad.gather(-1, current[..., None]))[keep])


def test_retokenization_checks():
    tok, ex = tokenizer(), examples()
    assert rows_survive(tok, ex).all()
    assert torch.equal(retokenized(tok, torch.as_tensor(ex)), torch.as_tensor(ex))
    # two tokens that decode -> encode as one are a different input: rejected
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    split = enc(" ") + enc("the")  # " " and "the" as two tokens: their text encodes as " the"
    assert enc(" the") != split
    bad = np.concatenate([np.tile(split, (len(ex), 1)), ex], axis=1)
    assert not rows_survive(tok, bad).any()
    assert not trigger_survives(tok, split, ex)
    with pytest.raises(ValueError, match="decode -> encode"):
        retokenized(tok, torch.as_tensor(bad))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_registry_builds_every_attack_from_its_defaults(name):
    cls, run = ATTACKS[name]
    cfg = cls()
    cfg.check()
    assert callable(run)
    for f in dataclasses.fields(cls):
        if f.type in ("int", int) and getattr(cfg, f.name) > 0:
            with pytest.raises(ValueError, match=f.name):
                dataclasses.replace(cfg, **{f.name: -1}).check()


def _rows(attack, kind, model, dnll, source=None, trial=0):
    return [{"attack": attack, "kind": kind, "model": model, "source_model": source or model, "trial": trial,
             "example": i, "clean_nll": 1.0, "attacked_nll": 1.0 + d, "dnll": d} for i, d in enumerate(dnll)]


def test_summary_reports_damage_above_the_paired_control():
    import pandas as pd

    from monollm.results import report, verdicts

    rng = np.random.default_rng(0)
    ctrl_a, ctrl_b = rng.normal(0.1, 0.05, 40), rng.normal(0.3, 0.05, 40)
    df = pd.DataFrame(_rows("uat", "attack", "baseline", ctrl_a + 1.0) + _rows("uat", "attack", "monotonic", ctrl_b + 0.2)
                      + _rows("uat", "control", "baseline", ctrl_a - 0.01, trial=0)
                      + _rows("uat", "control", "baseline", ctrl_a + 0.01, trial=1)
                      + _rows("uat", "control", "monotonic", ctrl_b)
                      + _rows("uat", "transfer", "monotonic", ctrl_b + 0.5, source="baseline")
                      + _rows("random", "attack", "baseline", ctrl_a))
    s = report.attack_summary(df, (0.5,), 500, 0).set_index(["attack", "kind", "model", "source_model"])
    row = s.loc[("uat", "attack", "baseline", "baseline")]
    assert row["control_dnll"] == pytest.approx(ctrl_a.mean())
    assert row["above_control"] == pytest.approx(1.0)  # paired by example: the noise cancels
    assert row["above_control_ci_low"] == pytest.approx(1.0) and row["above_control_ci_high"] == pytest.approx(1.0)
    assert s.loc[("uat", "transfer", "monotonic", "baseline"), "above_control"] == pytest.approx(0.5)
    assert np.isnan(s.loc[("uat", "control", "baseline", "baseline"), "above_control"])
    assert np.isnan(s.loc[("random", "attack", "baseline", "baseline"), "above_control"])
    comp = verdicts.robustness_above_control(df, "uat", 500, 0)
    assert comp["diff"] == pytest.approx(0.8) and comp["ci_low"] > 0 and comp["verdict"] == "monotonic more robust"
    assert verdicts.robustness_above_control(df, "random", 500, 0) == {}


def test_gradients_refuse_a_model_in_training_mode():
    m, ex = model().train(), torch.as_tensor(examples())
    with pytest.raises(AssertionError, match="eval mode"):
        onehot_grad(m, ex, 0, 4, CONT, batch_size=4)


def test_examples_take_further_windows_only_when_documents_run_short():
    """Fewer documents than examples: later passes take further, non-overlapping windows of the
    same documents; the first pass alone uses one window per document. Too little text names the split."""
    from attack_models import CONT, CONTEXT, tokenizer

    from monollm.data import corpus, documents
    from monollm.attacks.common import rows_survive
    from monollm.attacks.examples import make_examples

    tok = tokenizer()
    docs = [d for d in documents.tokenize(tok, corpus.generate(40, seed=5)) if len(d) >= 3 * (CONTEXT + CONT)][:6]
    one_each = make_examples(docs, 5, CONTEXT, CONT, 0, tok)
    owners = [[i for i, d in enumerate(docs) if any(d[s:s + len(r)] == r.tolist() for s in range(len(d)))]
              for r in one_each]
    assert len({o[0] for o in owners}) == 5  # five different documents
    more = make_examples(docs, 14, CONTEXT, CONT, 0, tok)  # more than the 6 documents
    assert len({tuple(r) for r in more}) == 14 and rows_survive(tok, more.tolist()).all()
    with pytest.raises(ValueError, match="'attack_opt' split"):
        make_examples(docs[:1], 50, CONTEXT, CONT, 0, tok, split="attack_opt")


def test_documents_all_shorter_than_the_window_are_named_as_such():
    """Every document shorter than context_len + continuation_len: the error says so, with the
    longest and median lengths in tokens and the keys that set the window; with some long enough
    but too few windows, it counts the short ones."""
    from attack_models import CONT, CONTEXT

    from monollm.attacks.examples import make_examples
    from monollm.errors import ConfigError

    short = [list(range(n)) for n in (5, 9, 11, 14, 15)]  # the window is 18 tokens
    with pytest.raises(ConfigError) as err:
        make_examples(short, 4, CONTEXT, CONT, 0, None, split="test")
    msg = str(err.value)
    for needle in ("every one of the 5 'test' documents is shorter than an attack window of 18 tokens",
                   "attack.context_len 12 + attack.continuation_len 6", "the longest has 15 tokens, the median 11",
                   "attack.context_len, attack.continuation_len"):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    from attack_models import tokenizer
    from monollm.data import corpus, documents

    long_one = documents.tokenize(tokenizer(), [max(corpus.generate(10, seed=3), key=len)])
    with pytest.raises(ConfigError, match=r"from 6 documents \(5 shorter than a window; the longest has \d+ tokens"):
        make_examples(short + long_one, 500, CONTEXT, CONT, 0, tokenizer(), split="test")


def _nan_model():
    m = model()
    with torch.no_grad():
        m.gpt_neox.layers[1].mlp.dense_4h_to_h.weight[0, 0] = float("nan")
    return m


def test_result_with_non_finite_nll_names_the_model():
    from monollm.attacks.common import AttackResult
    from monollm.evaluation.perplexity import NonFiniteNLL

    ok = np.ones(3)
    with pytest.raises(NonFiniteNLL, match="attacked NLL of uat \\(attack\\) on model 'monotonic'"):
        AttackResult("uat", "monotonic", "attack", np.arange(3), ok, np.array([1.0, np.inf, 2.0]))
    with pytest.raises(NonFiniteNLL, match="clean NLL of random \\(attack\\) on model 'baseline'"):
        AttackResult("random", "baseline", "attack", np.arange(3), np.array([np.nan, 1.0, 1.0]), ok)


@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_refuses_a_nan_model_by_name(name):
    """A NaN weight makes every NLL NaN: each attack raises naming the model, never reports it."""
    from monollm.attacks import attack_config, run_attack
    from monollm.evaluation.perplexity import NonFiniteNLL

    ex = {"test": examples(), "attack_opt": examples(8, 1)}
    models = {"baseline": model(), "monotonic": _nan_model()}
    with pytest.raises(NonFiniteNLL, match="model 'monotonic'"):
        run_attack(name, models, tokenizer(), ex, CONT, 16, attack_config(name, {}, name), 0, log=lambda m: None)
