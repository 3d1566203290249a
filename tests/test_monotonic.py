"""Tests for monollm.model.monotonic on tiny random models (CPU, fixed seeds)."""

import pytest
import torch
from torch.nn.utils import parametrize
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from monollm.model import monotonic as mono

VOCAB = 128
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64)

EXPECTED_MATRICES = {
    "mlp_in": 2, "mlp_both": 4, "mlp_in_attn_out": 4,
    "gated_updown": 4, "gated_all": 6,
}


def neox(seed=0):
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL)).eval()


def gated(seed=0, cls=LlamaForCausalLM, cfg=LlamaConfig):
    torch.manual_seed(seed)
    return cls(cfg(**SMALL, num_key_value_heads=2)).eval()


def model_for(variant, seed=0):
    return neox(seed) if variant in mono.VARIANTS["gpt_neox"] else gated(seed)


def batch(seed=1, n=2, t=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, t), generator=g)


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def train(model, lr, steps, seed=1):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        opt.zero_grad()
        lm_loss(model, batch(seed + step)).backward()
        opt.step()


def v_params(model):
    return [(n, p) for n, p in model.named_parameters() if mono.is_constraint_param(n)]


# 1. non-negativity after apply and after training ---------------------------

@pytest.mark.parametrize("variant", list(EXPECTED_MATRICES))
def test_nonnegative_after_apply_and_training(variant):
    model = model_for(variant)
    names = mono.apply(model, variant)
    assert len(names) == EXPECTED_MATRICES[variant]
    r = mono.verify(model, variant)
    assert r["matrices"] == r["parametrized"] == EXPECTED_MATRICES[variant]
    assert r["negative"] == 0 and r["min"] >= mono.DEFAULT_FLOOR * (1 - 1e-5)

    model.train()
    train(model, lr=1e-2, steps=5)
    r = mono.verify(model, variant)
    assert r["negative"] == 0 and r["min"] >= 0
    assert r["matrices"] == EXPECTED_MATRICES[variant]


def test_selection_is_by_role_in_model_order():
    names = [n for n, _ in mono.constrained_linears(neox(), "mlp_in_attn_out")]
    assert names == [
        "gpt_neox.layers.0.attention.dense", "gpt_neox.layers.0.mlp.dense_h_to_4h",
        "gpt_neox.layers.1.attention.dense", "gpt_neox.layers.1.mlp.dense_h_to_4h",
    ]
    names = [n for n, _ in mono.constrained_linears(gated(), "gated_updown")]
    assert names == [f"model.layers.{i}.mlp.{p}" for i in (0, 1)
                     for p in ("up_proj", "down_proj")]


@pytest.mark.parametrize("cls,cfg", [(Qwen2ForCausalLM, Qwen2Config),
                                     (MistralForCausalLM, MistralConfig)])
def test_other_gated_families(cls, cfg):
    model = gated(cls=cls, cfg=cfg)
    assert len(mono.apply(model, "gated_all")) == 6
    assert mono.verify(model, "gated_all")["negative"] == 0


def test_variant_tables_consistent():
    assert set(mono.ALL_VARIANTS) == set(EXPECTED_MATRICES)
    assert mono.VARIANTS["llama"] == mono.VARIANTS["qwen2"] == mono.VARIANTS["mistral"]
    assert "mlp_both" in mono.VARIANTS["gpt_neox"]


# 2. gradients reach V ---------------------------------------------------------

def test_gradients_reach_v():
    model = neox()
    mono.apply(model, "mlp_both")
    vs = v_params(model)
    assert len(vs) == 4
    lm_loss(model, batch()).backward()
    for name, v in vs:
        assert v.grad is not None and v.grad.abs().sum() > 0, name


def test_is_constraint_param():
    assert mono.is_constraint_param("a.mlp.dense_h_to_4h.parametrizations.weight.original")
    assert not mono.is_constraint_param("a.mlp.dense_h_to_4h.weight")
    assert not mono.is_constraint_param("a.mlp.dense_h_to_4h.bias")


# 3. init round trip -------------------------------------------------------------

def test_softplus_inverse_round_trip_and_stable():
    x = torch.logspace(-4, 2, 2001)  # floor .. 100
    v = mono.softplus_inverse(x)
    assert torch.isfinite(v).all()
    torch.testing.assert_close(torch.nn.functional.softplus(v), x, rtol=1e-5, atol=0)
    # Large inputs: the naive log(expm1(x)) would be inf; stable form ~= x.
    big = torch.tensor([100.0, 1e3, 1e5])
    assert torch.isfinite(mono.softplus_inverse(big)).all()
    torch.testing.assert_close(mono.softplus_inverse(big), big)
    # Returns the input dtype (computed in fp32 internally).
    assert mono.softplus_inverse(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_apply_initialises_to_abs_with_floor():
    model = neox()
    lin = model.gpt_neox.layers[0].mlp.dense_h_to_4h
    with torch.no_grad():
        lin.weight[0, 0] = 0.0  # exercise the floor
        lin.weight[0, 1] = -0.05  # exercise |W|
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    mono.apply(model, "mlp_in")
    expected = w0.abs().clamp_min(mono.DEFAULT_FLOOR)
    torch.testing.assert_close(lin.weight, expected, rtol=1e-5, atol=1e-7)
    assert abs(lin.weight[0, 0].item() - mono.DEFAULT_FLOOR) < 1e-9  # floor once
    assert torch.equal(lin.bias, b0)  # biases stay free and untouched
    assert parametrize.is_parametrized(lin, "weight")
    assert not parametrize.is_parametrized(lin, "bias")


# 4. small updates move fp32 weights, not pure bf16 ones ---------------------------

def _entry_after_small_steps(dtype):
    """Apply mlp_both, take 3 AdamW steps at lr 1e-5; return (V, W) before/after
    at the dense_h_to_4h entry whose |W0| is closest to 0.02."""
    model = neox().to(dtype)
    lin = model.gpt_neox.layers[0].mlp.dense_h_to_4h
    idx = (lin.weight.detach().float().abs() - 0.02).abs().argmin()
    mono.apply(model, "mlp_both")
    v = lin.parametrizations.weight.original
    before = (v.detach().flatten()[idx].clone(), lin.weight.detach().flatten()[idx].clone())
    train(model, lr=1e-5, steps=3)
    after = (v.detach().flatten()[idx].clone(), lin.weight.detach().flatten()[idx].clone())
    return before, after, v.dtype


def test_small_update_moves_weight_in_fp32():
    (v0, w0), (v1, w1), vdtype = _entry_after_small_steps(torch.float32)
    assert vdtype == torch.float32
    assert abs(w0.item() - 0.02) < 2e-3
    assert v1 != v0 and w1 != w0


def test_small_update_lost_in_pure_bf16():
    # V ~ softplus^-1(0.02) ~ -3.9, where bf16 spacing is 2^-6 ~ 0.016: an Adam
    # step of ~1e-5 rounds away, which is why pure-bf16 training never moved.
    (v0, w0), (v1, w1), vdtype = _entry_after_small_steps(torch.bfloat16)
    assert vdtype == torch.bfloat16
    assert v1 == v0 and w1 == w0


# 5. materialize -------------------------------------------------------------------

def test_materialize_and_vanilla_reload(tmp_path):
    model = neox()
    mono.apply(model, "mlp_both")
    train(model.train(), lr=1e-2, steps=2)
    model.eval()
    lins = [m for _, m in mono.constrained_linears(model, "mlp_both")]
    expected = [torch.nn.functional.softplus(m.parametrizations.weight.original).detach()
                for m in lins]
    ids = batch(seed=9)
    with torch.no_grad():
        logits = model(input_ids=ids).logits

    assert mono.materialize(model) == 4
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    for m, e in zip(lins, expected):
        assert type(m.weight) is torch.nn.Parameter
        assert torch.equal(m.weight.detach(), e) and (m.weight >= 0).all()
    keys = model.state_dict().keys()
    assert not any("parametrizations" in k for k in keys)
    assert "gpt_neox.layers.0.mlp.dense_h_to_4h.weight" in keys
    r = mono.verify(model, "mlp_both")
    assert r == {"matrices": 4, "negative": 0, "min": r["min"], "parametrized": 0}

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, logits)
    assert mono.verify(reloaded, "mlp_both")["negative"] == 0


# 6. verify really counts -----------------------------------------------------------

def test_verify_counts_negative_entries():
    model = neox()
    mono.apply(model, "mlp_in_attn_out")
    mono.materialize(model)
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.dense.weight[3, 5] = -1.0
    r = mono.verify(model, "mlp_in_attn_out")
    assert r["negative"] == 1 and r["min"] == -1.0 and r["parametrized"] == 0
    # Unconstrained weights are not counted, and an untouched model is caught.
    assert mono.verify(neox(), "mlp_both")["negative"] > 0


# 7. clear errors ------------------------------------------------------------------

def test_unsupported_architecture():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4,
                                      vocab_size=VOCAB, n_positions=64))
    with pytest.raises(ValueError, match="gpt2") as exc:
        mono.apply(gpt2, "mlp_both")
    for arch in ("gpt_neox", "llama", "qwen2", "mistral"):
        assert arch in str(exc.value)


def test_unknown_variant():
    with pytest.raises(ValueError, match="gated_all") as exc:
        mono.constrained_linears(neox(), "gated_all")
    for v in mono.VARIANTS["gpt_neox"]:
        assert v in str(exc.value)
    with pytest.raises(ValueError, match="nope") as exc:
        mono.apply(gated(), "nope")
    assert "gated_updown" in str(exc.value) and "gated_all" in str(exc.value)


# 8. apply twice ---------------------------------------------------------------------

def test_apply_twice_raises():
    model = neox()
    mono.apply(model, "mlp_in")
    with pytest.raises(ValueError, match="already"):
        mono.apply(model, "mlp_in")
    with pytest.raises(ValueError, match="already"):
        mono.apply(model, "mlp_both")  # overlaps dense_h_to_4h
