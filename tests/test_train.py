"""Tests for monollm.train.loop on tiny random GPT-NeoX models (CPU, fixed seeds)."""
import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from monollm import checkpoints
from monollm.model import monotonic
from monollm.train import loop
from monollm.config import TrainConfig

VOCAB, T = 128, 16


def neox(seed=0):
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64))


def blocks(n=24, seed=0, high=VOCAB):
    return np.random.default_rng(seed).integers(0, high, (n, T), dtype=np.int64).astype(np.int32)


def tcfg(**kw) -> TrainConfig:
    base = dict(tokens=6 * 4 * T, batch_size=4, grad_accum=1, lr=1e-3, warmup_frac=0.2, log_every=0,
                val_blocks=4, eval_every=0)
    base.update(kw)
    return TrainConfig(**base)


def run(model, cfg, seed=0, data=None, **kw):
    data = blocks() if data is None else data
    return loop.train(model, data, blocks(4, seed=99), cfg, seed, "cpu", arm=kw.pop("arm", "test"),
                       log=lambda *_: None, **kw)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- identical batches for both arms ----------------------------------------------------

def test_both_arms_receive_identical_batches():
    cfg = tcfg()
    base = run(neox(), cfg, seed=5, arm="baseline")
    mono_model = neox()
    monotonic.apply(mono_model, "mlp_both")
    mono = run(mono_model, dataclasses.replace(cfg, lr=5e-3, warmup_frac=0.5), seed=5, arm="monotonic")
    hashes = [r["batch_hash"] for r in base]
    assert hashes == [r["batch_hash"] for r in mono]
    assert len(hashes) == loop.steps_for(cfg, T) and len(set(hashes)) > 1
    # the hashes are those of the seeded order, and another seed gives another order
    data, rows = blocks(), cfg.batch_size * cfg.grad_accum
    order = loop.batch_order(len(data), len(hashes) * rows, 5)
    assert hashes == [loop.batch_hash(data[order[i * rows:(i + 1) * rows]]) for i in range(len(hashes))]
    assert [r["batch_hash"] for r in run(neox(), cfg, seed=6)] != hashes


def test_batch_order_covers_every_block_each_epoch():
    order = loop.batch_order(10, 25, seed=1)
    assert len(order) == 25
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert not np.array_equal(order[:10], order[10:20])  # reshuffled each epoch
    np.testing.assert_array_equal(order, loop.batch_order(10, 25, seed=1))


# --- optimizer groups and precision ---------------------------------------------------

def test_no_decay_on_v_biases_and_norms():
    model = neox()
    monotonic.apply(model, "mlp_both")
    decay, no_decay = loop.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    free = {names[id(p)] for p in no_decay["params"]}
    v_names = {n for n in names.values() if monotonic.is_constraint_param(n)}
    assert len(v_names) == 4 and v_names <= free
    assert all(n.endswith(".bias") for n in free - v_names if "norm" not in n)
    assert any("layernorm" in n or "layer_norm" in n for n in free)
    assert not decayed & v_names and all(".bias" not in n and "norm" not in n for n in decayed)
    assert decayed | free == set(names.values()) and not decayed & free


def test_train_uses_these_groups(monkeypatch):
    made = []

    class Spy(torch.optim.AdamW):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    model = neox()
    monotonic.apply(model, "mlp_in")
    v = [p for n, p in model.named_parameters() if monotonic.is_constraint_param(n)]
    run(model, tcfg(tokens=4 * T, weight_decay=0.5))
    (opt,) = made
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert {id(p) for p in v} <= by_decay[0.0] and not {id(p) for p in v} & by_decay[0.5]


def test_fp32_master_weights_after_training():
    model = neox()
    monotonic.apply(model, "mlp_both")
    run(model, tcfg(tokens=2 * 4 * T))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training  # returned in eval mode


# --- schedule and budget ------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_factor_warmup_then_decay(schedule):
    total, warmup, floor = 50, 10, 0.1
    f = [loop.lr_factor(s, total, warmup, schedule, floor) for s in range(total)]
    assert f[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])  # linear warmup to peak
    assert f[warmup] == pytest.approx(1.0)
    after = np.array(f[warmup:])
    assert (np.diff(after) <= 1e-12).all() and (after >= floor - 1e-12).all()
    if schedule == "constant":
        assert after == pytest.approx(1.0)
    else:
        assert after[-1] < 0.2 and loop.lr_factor(total, total, warmup, schedule, floor) == pytest.approx(floor)
    assert loop.lr_factor(0, 10, 0, schedule, floor) == pytest.approx(1.0)  # no warmup: start at peak


def test_history_lr_follows_schedule():
    cfg = tcfg(tokens=10 * 4 * T, warmup_frac=0.3, schedule="linear", min_lr_frac=0.0, lr=2e-3)
    hist = run(neox(), cfg)
    assert [r["lr"] for r in hist] == pytest.approx(
        [2e-3 * loop.lr_factor(s, 10, 3, "linear", 0.0) for s in range(10)])
    lrs = [r["lr"] for r in hist]
    assert lrs[0] < lrs[2] == max(lrs) and lrs[-1] < lrs[3]


def test_token_budget_sets_steps():
    assert loop.steps_for(tcfg(tokens=1000, batch_size=4, grad_accum=2), T) == 1000 // (8 * T)
    assert loop.steps_for(tcfg(tokens=10), T) == 1  # at least one step
    cfg = tcfg(tokens=7 * 4 * T + 5)
    hist = run(neox(), cfg)
    assert len(hist) == 7 and [r["step"] for r in hist] == list(range(1, 8))
    assert hist[-1]["tokens"] == 7 * 4 * T <= cfg.tokens


def test_history_fields():
    # eight distinct tokens: a unigram model that a few steps at lr 1e-2 clearly learn
    hist = run(neox(), tcfg(eval_every=2, tokens=5 * 4 * T, lr=1e-2), data=blocks(high=8))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "batch_hash", "arm", "step", "tokens"):
        assert all(key in r for r in hist), key
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in hist)
    has_val = [math.isfinite(r["val_loss"]) for r in hist]
    assert has_val == [False, True, False, True, True]  # every 2 steps and at the end
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.5  # it learns


# --- gradient accumulation -------------------------------------------------------------------

def test_grad_accum_equals_big_batch():
    big, small = neox(), neox()
    h_big = run(big, tcfg(tokens=8 * T, batch_size=8, grad_accum=1, warmup_frac=0.0))
    h_acc = run(small, tcfg(tokens=8 * T, batch_size=4, grad_accum=2, warmup_frac=0.0))
    assert len(h_big) == len(h_acc) == 1 and h_big[0]["batch_hash"] == h_acc[0]["batch_hash"]
    assert h_acc[0]["loss"] == pytest.approx(h_big[0]["loss"], rel=1e-6)
    assert h_acc[0]["grad_norm"] == pytest.approx(h_big[0]["grad_norm"], rel=1e-5)
    init = state(neox())
    moved = 0
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)
        moved += int(not torch.equal(a, init[name]))
    assert moved > 10  # the step really changed the weights


# --- failure on a non-finite loss -------------------------------------------------------------

def test_non_finite_loss_names_the_step():
    poison = VOCAB - 1
    data = blocks(high=VOCAB - 1)  # token `poison` nowhere ...
    data[17, 5] = poison  # ... but in block 17
    cfg, seed = tcfg(tokens=12 * 4 * T), 3
    rows = cfg.batch_size
    order = loop.batch_order(len(data), 12 * rows, seed)
    step = int(np.argmax(order == 17)) // rows + 1  # first optimizer step that sees block 17
    assert step > 1
    model = neox()
    with torch.no_grad():
        model.gpt_neox.embed_in.weight[poison] = float("nan")
    with pytest.raises(FloatingPointError, match=rf"step {step}/12\b"):
        run(model, cfg, seed=seed, data=data)


def test_inf_weight_fails_at_first_step():
    model = neox()
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"\[test\] non-finite loss .* step 1/"):
        run(model, tcfg())


# --- checkpoints and resume ------------------------------------------------------------------

def test_checkpoint_every_n_and_resume_is_exact():
    cfg = tcfg(tokens=7 * 4 * T, checkpoint_every=2, eval_every=3)
    saved = {}

    class Bytes(checkpoints.InMemory):  # what a real Checkpoint does: persist immediately
        def save(self, st, step):
            buf = io.BytesIO()
            torch.save(st, buf)
            saved[step] = buf.getvalue()

    model = neox()
    monotonic.apply(model, "mlp_both")  # the monotonic arm is the one that gets preempted
    full = run(model, cfg, seed=2, checkpoint=Bytes())
    assert sorted(saved) == [2, 4, 6]  # every 2 steps, never after the last

    st = torch.load(io.BytesIO(saved[4]), weights_only=True)  # tensors and plain values only: nothing unpickled
    assert st["step"] == 4 and len(st["history"]) == 4
    assert set(st) >= {"model", "optimizer", "scheduler", "rng", "history"}
    fresh = neox(seed=123)  # different init: everything must come from the checkpoint
    monotonic.apply(fresh, "mlp_both")
    resumed = run(fresh, cfg, seed=2, checkpoint=checkpoints.InMemory(st))
    final, again = state(model), state(fresh)
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    key = lambda h: [(r["step"], r["loss"], r["lr"], r["batch_hash"], r["val_loss"]) for r in h]
    np.testing.assert_array_equal(np.array(key(resumed), float), np.array(key(full), float))  # NaN == NaN
    assert resumed[4]["resumed_from"] == 4 and full[4]["resumed_from"] == -1


def test_rng_state_is_tensors_and_plain_values_and_round_trips():
    import random

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached gaussian is part of numpy's state
    buf = io.BytesIO()
    torch.save(loop.rng_state(), buf)
    draws = lambda: (random.random(), np.random.normal(), np.random.randint(1 << 30), torch.rand(3).tolist())
    expected = draws()
    loop.set_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert draws() == expected


def test_no_checkpoint_callback_when_disabled():
    kept = checkpoints.InMemory()
    run(neox(), tcfg(tokens=3 * 4 * T, checkpoint_every=0), checkpoint=kept)
    assert kept.saved == {}
