"""The constraint's modes, layer selection, init and activation swap (monollm.model.monotonic), on tiny
random GPT-NeoX models (CPU, fixed seeds), and what make_monotonic / train_arm record for each."""
import copy
import os
import tomllib

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.utils import parametrize
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

from monollm import config, pipeline
from monollm.model import foundation
from monollm.results import report
from monollm.model import monotonic as mono
from test_monotonic import SMALL, batch, gated, neox, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def weights(model, variant="mlp_both", layers=None):
    return {n: m.weight.detach().clone() for n, m in mono.constrained_linears(model, variant, layers)}


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


# 1. sign_frozen ---------------------------------------------------------------------------

def test_sign_frozen_starts_at_w0_and_keeps_its_signs_through_training(tmp_path):
    model = neox()
    lin = model.gpt_neox.layers[0].mlp.dense_h_to_4h
    with torch.no_grad():
        lin.weight[0, 0] = 0.0  # the sign rule: a zero counts as positive, starting at +floor
    w0 = weights(model)
    signs = mono.snapshot(model, "mlp_both", "sign_frozen")
    mono.apply(model, "mlp_both", mode="sign_frozen")
    for name, w in weights(model).items():  # no change at init beyond the floor
        torch.testing.assert_close(w, torch.where(w0[name] >= 0, 1.0, -1.0) * w0[name].abs().clamp_min(mono.DEFAULT_FLOOR),
                                   rtol=1e-5, atol=1e-7)
    assert lin.weight[0, 0].item() == pytest.approx(mono.DEFAULT_FLOOR, rel=1e-4)
    r = mono.verify(model, "mlp_both", "sign_frozen", reference=signs)
    assert r["sign_flipped"] == 0 and r["negative"] > 0 and r["parametrized"] == 4

    train(model.train(), lr=5e-2, steps=8)
    after = weights(model)
    assert any(not torch.equal(after[n], w0[n]) for n in w0)  # the magnitudes trained
    for name, w in after.items():
        assert torch.equal(w >= 0, signs[name]), name
    assert mono.verify(model, "mlp_both", "sign_frozen", reference=signs)["sign_flipped"] == 0

    _materialized_loads_as_vanilla(model, tmp_path, expect_parametrized=4)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert mono.verify(reloaded, "mlp_both", "sign_frozen", reference=signs)["sign_flipped"] == 0


def test_sign_frozen_verify_counts_flipped_signs():
    model = neox()
    signs = mono.snapshot(model, "mlp_both", "sign_frozen")
    with torch.no_grad():
        w = model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight
        w[2, 3] = -w[2, 3] if w[2, 3] != 0 else 1.0
    assert mono.verify(model, "mlp_both", "sign_frozen", reference=signs)["sign_flipped"] == 1
    with pytest.raises(ValueError, match="signs"):
        mono.verify(model, "mlp_both", "sign_frozen")


# 2. abs_init_free -------------------------------------------------------------------------

def test_abs_init_free_starts_like_the_constraint_then_goes_negative(tmp_path):
    model = neox()
    expected = mono.snapshot(model, "mlp_both", "abs_init_free")
    assert mono.apply(model, "mlp_both", mode="abs_init_free")
    for name, w in weights(model).items():
        assert torch.equal(w, expected[name])  # exactly max(|W0|, floor)
    r = mono.verify(model, "mlp_both", "abs_init_free", reference=expected)
    assert r == {"matrices": 4, "negative": 0, "min": r["min"], "parametrized": 0, "init_mismatch": 0}
    # the same start as the constraint's, up to softplus's round trip
    constrained = neox()
    mono.apply(constrained, "mlp_both")
    for name, w in weights(constrained).items():
        torch.testing.assert_close(w, expected[name], rtol=1e-5, atol=1e-7)

    train(model.train(), lr=1e-2, steps=8)
    r = mono.verify(model, "mlp_both", "abs_init_free")
    assert r["negative"] > 0 and "init_mismatch" not in r and mono.violations(r, "abs_init_free") == 0
    assert mono.verify(model, "mlp_both", "abs_init_free", reference=expected)["init_mismatch"] > 0
    _materialized_loads_as_vanilla(model, tmp_path, expect_parametrized=0)


def _materialized_loads_as_vanilla(model, path, expect_parametrized: int):
    ids = batch(seed=9)
    before = logits(model, ids)
    assert mono.materialize(model) == expect_parametrized
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any("parametrizations" in k for k in model.state_dict())
    model.save_pretrained(path)
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    assert type(reloaded) is GPTNeoXForCausalLM
    assert torch.equal(logits(reloaded, ids), before)


# 3. layers ---------------------------------------------------------------------------------

def test_layers_select_only_their_matrices():
    model = neox()
    names = mono.apply(model, "mlp_both", layers=(1,))
    assert names == ["gpt_neox.layers.1.mlp.dense_h_to_4h", "gpt_neox.layers.1.mlp.dense_4h_to_h"]
    assert not parametrize.is_parametrized(model.gpt_neox.layers[0].mlp.dense_h_to_4h)
    assert mono.verify(model, "mlp_both", layers=(1,))["negative"] == 0
    assert mono.verify(model, "mlp_both")["negative"] > 0  # layer 0 stays free
    assert mono.layer_of("model.layers.12.mlp.up_proj") == 12
    with pytest.raises(ValueError, match="no modules in layers"):
        mono.constrained_linears(neox(), "mlp_both", (5,))


def test_resolve_layers_follows_the_models_depth():
    model = neox()  # 2 layers
    assert mono.resolve_layers(model, "all") is None
    assert mono.resolve_layers(model, "top:1") == (1,) and mono.resolve_layers(model, "bottom:1") == (0,)
    with pytest.raises(config.ConfigError, match="monotonic.layers.*0 .. 1"):
        mono.resolve_layers(model, "3")


# 4. init = clip ------------------------------------------------------------------------------

def test_clip_init_starts_at_the_nearest_matrix_above_the_floor():
    model = neox()
    w0 = weights(model)
    mono.apply(model, "mlp_both", init="clip")
    for name, w in weights(model).items():
        expected = w0[name].clamp_min(mono.DEFAULT_FLOOR)
        torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-7)
        # negative weights sit at the floor, positive ones keep their value
        assert torch.allclose(w[w0[name] < 0], torch.tensor(mono.DEFAULT_FLOOR), rtol=1e-4)
    free = neox()
    expected = mono.snapshot(free, "mlp_both", "abs_init_free", init="clip")
    mono.apply(free, "mlp_both", mode="abs_init_free", init="clip")
    assert mono.verify(free, "mlp_both", "abs_init_free", reference=expected)["init_mismatch"] == 0
    assert mono.verify(free, "mlp_both", "abs_init_free",
                       reference=mono.snapshot(neox(), "mlp_both", "abs_init_free"))["init_mismatch"] > 0
    with pytest.raises(ValueError, match="sign_frozen"):
        mono.apply(neox(), "mlp_both", mode="sign_frozen", init="clip")
    with pytest.raises(ValueError, match="allowed: abs, clip"):
        mono.start_weight(w0["gpt_neox.layers.0.mlp.dense_h_to_4h"], 1e-4, "round")


# 5. activation swap and the property it buys ------------------------------------------------

def test_swap_activation_is_saved_and_reloads(tmp_path):
    model = neox()
    assert mono.swap_activation(model, "relu") == "gelu"
    assert model.config.hidden_act == "relu"
    assert all(isinstance(layer.mlp.act, torch.nn.ReLU) for layer in model.gpt_neox.layers)
    ids = batch()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.hidden_act == "relu"
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def _lowered_outputs(mlp, seed=0, n=64) -> int:
    """Cases where raising one input coordinate lowered some output of `mlp` (float64). Inputs are
    wide (std 50) so that pre-activations reach where GELU decreases (below about -0.75)."""
    g = torch.Generator().manual_seed(seed)
    width = mlp.dense_h_to_4h.in_features
    x = 50 * torch.randn(n, width, generator=g, dtype=torch.float64)
    lowered = 0
    with torch.no_grad():
        base = mlp(x)
        for j in range(width):
            step = torch.zeros(width, dtype=torch.float64)
            step[j] = torch.rand(1, generator=g, dtype=torch.float64).item() * 2
            lowered += int((mlp(x + step) < base - 1e-12).any(dim=1).sum())
    return lowered


def test_relu_mlp_with_every_matrix_nonnegative_is_monotone():
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL, hidden_act="relu")).double()
    mono.apply(model, "mlp_both")
    for layer in model.gpt_neox.layers:
        assert _lowered_outputs(layer.mlp) == 0
    # the property is not free: GELU, or one matrix left free, breaks it
    gelu = neox().double()
    mono.apply(gelu, "mlp_both")
    assert _lowered_outputs(gelu.gpt_neox.layers[0].mlp) > 0
    half = GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL, hidden_act="relu")).double()
    mono.apply(half, "mlp_in")
    assert _lowered_outputs(half.gpt_neox.layers[0].mlp) > 0


def test_mlp_monotone_only_for_a_monotone_activation_and_every_matrix_nonnegative():
    full = dict(report.DEFAULT_SETTING)

    def monotone(act, **changes):
        return report.activation_findings(act, {**full, **changes}, None, 1.0)["mlp_monotone"]

    assert monotone("relu") and not monotone("gelu")
    for changes in ({"mode": "sign_frozen"}, {"mode": "abs_init_free"}, {"variant": "mlp_in"},
                    {"variant": "gated_all"}, {"layers": "top:1"}):
        assert not monotone("relu", **changes), changes
    swap = {"from": "gelu", "to": "relu", "perplexity_before": 12.5}
    note = report.activation_findings("relu", full, swap, 14.0)["activation_note"]
    assert "12.5" in note and "14" in note and "'gelu'" in note


def test_constraint_holds_follows_the_mode():
    base = {"stage": ["applied", "after_training"], "matrices": [4, 4], "negative": [0, 7]}
    assert not report.constraint_holds(pd.DataFrame(base), "nonneg")
    free = pd.DataFrame({**base, "init_mismatch": [0, np.nan]})
    assert report.constraint_holds(free, "abs_init_free")
    assert "7 negative entries after training" in report.mode_note(free, "abs_init_free")
    assert not report.constraint_holds(pd.DataFrame({**base, "init_mismatch": [3, np.nan]}), "abs_init_free")
    assert report.constraint_holds(pd.DataFrame({**base, "sign_flipped": [0, 0]}), "sign_frozen")
    assert not report.constraint_holds(pd.DataFrame({**base, "sign_flipped": [0, 1]}), "sign_frozen")


# 6. through the pipeline: make_monotonic and train_arm record each mode's promise -------------

@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**{**SMALL, "max_position_embeddings": 32}))
    tokenizer = foundation.build_tokenizer(["hello world " * 20, "monotone weights"], 300)
    path = str(tmp_path_factory.mktemp("reference"))
    foundation.save(model, tokenizer, path)
    return path


def _cfg(model_dir, **monotonic):
    with open(os.path.join(ROOT, "tests", "micro.toml"), "rb") as f:
        raw = copy.deepcopy(tomllib.load(f))
    raw["model"] = {"source": "local", "name": model_dir}
    raw["data"]["block_len"] = 16
    raw["train"].update(tokens=16 * 8 * 6, batch_size=8, lr=1e-2, eval_every=0, val_blocks=4, log_every=0)
    raw["monotonic"].update(monotonic)
    return config.load(raw)


@pytest.mark.parametrize("mode,init", [("nonneg", "abs"), ("sign_frozen", "abs"), ("abs_init_free", "abs"),
                                       ("nonneg", "clip"), ("abs_init_free", "clip")])
def test_pipeline_records_each_modes_promise(local_model, tmp_path, mode, init):
    cfg = _cfg(local_model, mode=mode, init=init, layers="top:1")
    blocks = np.random.default_rng(0).integers(0, 128, (16, 16))
    init_dir, trained_dir = str(tmp_path / "init"), str(tmp_path / "trained")
    checks = pipeline.make_monotonic(cfg, local_model, init_dir)
    arm = pipeline.train_arm(cfg, init_dir, {"train": blocks, "val": blocks[:4]}, "monotonic", trained_dir)
    checks.update(arm.constraint)
    table = report.constraint_table(checks)
    assert list(table["stage"]) == ["applied", "init_materialized", "before_training", "after_training",
                                    "after_materializing"]
    assert (table["matrices"] == 2).all()  # the last layer's two MLP matrices
    assert report.constraint_holds(table, mode)
    reference = AutoModelForCausalLM.from_pretrained(local_model)
    trained = AutoModelForCausalLM.from_pretrained(trained_dir)  # vanilla transformers
    free_layer = reference.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    assert torch.equal(AutoModelForCausalLM.from_pretrained(init_dir).gpt_neox.layers[0].mlp.dense_h_to_4h.weight,
                       free_layer)  # layer 0 is not touched at init
    start = AutoModelForCausalLM.from_pretrained(init_dir).gpt_neox.layers[1].mlp.dense_h_to_4h.weight
    torch.testing.assert_close(start, mono.start_weight(reference.gpt_neox.layers[1].mlp.dense_h_to_4h.weight,
                                                        cfg.monotonic.floor, "abs" if mode == "sign_frozen" else init)
                               * (torch.where(reference.gpt_neox.layers[1].mlp.dense_h_to_4h.weight >= 0, 1.0, -1.0)
                                  if mode == "sign_frozen" else 1.0), rtol=1e-5, atol=1e-7)
    if mode == "sign_frozen":
        assert (table["sign_flipped"] == 0).all()
        ref = mono.snapshot(reference, "mlp_both", "sign_frozen", layers=(1,))
        assert mono.verify(trained, "mlp_both", "sign_frozen", (1,), ref)["sign_flipped"] == 0
    elif mode == "abs_init_free":
        assert list(table["init_mismatch"][:3]) == [0, 0, 0]
        assert table.set_index("stage").loc["after_training", "negative"] > 0
    else:
        assert (table["negative"] == 0).all()
