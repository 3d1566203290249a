"""The Qwen2.5 and Llama 3 rehearsal assets (monollm.experiments.rehearsal, --family): the published
configuration at a small width and depth, loaded back through the Auto classes; and the gated-access
check `start` makes for a gated hub model."""
import json
import os

import pytest
import torch

from monollm import checks, config
from monollm.errors import ConfigError
from monollm.experiments import rehearsal

DOCS = [f"def f{i}(x):\n    return x * {i} + {i * i}  # a line of text number {i}\n" * 3 for i in range(60)]
REAL = {  # family -> (model_type, vocabulary rows, query heads, key/value heads, RoPE base, norm class)
    "qwen": ("qwen2", 151936, 14, 2, 1_000_000.0, "Qwen2RMSNorm"),
    "llama": ("llama", 128256, 32, 8, 500_000.0, "LlamaRMSNorm"),
}


@pytest.fixture(scope="module", params=sorted(REAL))
def family_model(request, tmp_path_factory):
    out = str(tmp_path_factory.mktemp(request.param))
    rehearsal.write_family_model(DOCS, out, request.param)
    return request.param, out


def test_the_assets_load_with_the_auto_classes_at_the_real_shape(family_model):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    family, path = family_model
    model_type, rows, heads, kv_heads, theta, norm = REAL[family]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(path))
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.model_type, cfg.vocab_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        model_type, rows, heads, kv_heads)
    assert cfg.tie_word_embeddings and cfg.hidden_act == "silu" and str(cfg.dtype).endswith("bfloat16")
    assert cfg.rope_parameters["rope_theta"] == theta
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.get_input_embeddings().weight.shape[0] == rows
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    assert any(type(m).__name__ == norm for m in model.modules())
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features * heads == attn.q_proj.out_features * kv_heads  # grouped-query attention
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) < rows and tok.eos_token == rehearsal.FAMILIES[family][2][0]
    ids = tok("def f(x): return x", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "def f(x): return x"
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([ids])).logits).all()


def test_llama_keeps_its_rope_scaling_and_prepends_bos_as_llama_3_does(family_model):
    from transformers import AutoConfig, AutoTokenizer

    family, path = family_model
    cfg, tok = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    if family != "llama":
        assert cfg.use_sliding_window is False and tok.bos_token is None
        return
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["factor"] == 32.0
    assert (cfg.max_position_embeddings, cfg.head_dim) == (131072, 8)
    assert tok("x")["input_ids"][0] == tok.bos_token_id == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok("x", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id  # the flow's encoding


def without_added(lines: list[str]) -> list[str]:
    """A rehearsal profile's lines less those rehearsal.ADDED put first in their sections, each checked there."""
    lines = list(lines)
    for (section, key), value in rehearsal.ADDED.items():
        at = lines.index(f"[{section}]") + 1
        assert lines[at] == f"{key} = {json.dumps(value)}", (section, lines[at])
        del lines[at]
    return lines


@pytest.mark.parametrize("family", sorted(REAL))
def test_the_profile_is_the_familys_paper_profile_with_the_rehearsals_changes(family, tmp_path):
    paper = open(rehearsal.paper_profile(family)).read().splitlines()
    ours = without_added(rehearsal.profile_text(str(tmp_path / family), str(tmp_path / "pile"), family).splitlines())
    changed = [(a, b) for a, b in zip(paper, ours) if a != b]
    changes = {**rehearsal.CHANGES, **rehearsal.FAMILY_CHANGES[family]}
    assert len(paper) == len(ours) and len(changed) == len(changes) + 2  # + the two ids
    path = tmp_path / "rehearsal.toml"
    path.write_text("\n".join(ours) + "\n")
    cfg = config.load_file(str(path))
    assert cfg.monotonic.variant == "gated_updown" and cfg.model.source == "hub"


def test_the_cli_takes_a_family():
    assert rehearsal.main(["--help"]) == 0
    assert rehearsal.main(["DIR", "--family", "gpt2"]) == 2  # an unknown family: the usage line


# --- gated access -----------------------------------------------------------------------------

LLAMA = os.path.join(rehearsal.ROOT, "config", "llama-3.2-1b.toml")


@pytest.fixture
def no_token(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no stored login either


def test_a_gated_model_without_a_token_is_refused_in_start_with_one_line(no_token, monkeypatch):
    from monollm import pipeline

    raw = config.load_file(LLAMA)
    with pytest.raises(ConfigError) as err:
        checks.gated_access(raw.model)
    message = str(err.value)
    assert "\n" not in message and "'model.name'" in message and "HF_TOKEN" in message
    assert "meta-llama/Llama-3.2-1B" in message and "local mirror" in message
    import tomllib

    with open(LLAMA, "rb") as f, pytest.raises(ConfigError, match="HF_TOKEN"):
        pipeline.start(tomllib.load(f), None)  # the flow's start step: before any job is queued


def test_a_token_an_offline_cache_or_a_local_mirror_lets_it_start(no_token, monkeypatch, tmp_path):
    import dataclasses

    import huggingface_hub

    model = config.load_file(LLAMA).model
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    checks.gated_access(model)
    monkeypatch.delenv("HF_TOKEN")
    checks.gated_access(dataclasses.replace(model, name=str(tmp_path)))  # a local mirror (a folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError):  # offline, but not in the cache
        checks.gated_access(model)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(tmp_path / "config.json"))
    checks.gated_access(model)  # offline with the model in the hub cache
    for name in ("qwen2.5-0.5b", "pythia-1.4b"):  # not gated
        monkeypatch.delenv("HF_HUB_OFFLINE")
        checks.gated_access(config.load_file(os.path.join(rehearsal.ROOT, "config", f"{name}.toml")).model)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- a variant the model's family does not have -------------------------------------------------

def test_start_refuses_a_variant_the_family_does_not_have_naming_the_family_and_its_variants(tmp_path, monkeypatch):
    import json
    import tomllib

    import huggingface_hub

    from monollm import pipeline

    def raw(path, **changes):
        with open(path, "rb") as f:
            profile = tomllib.load(f)
        for key, value in changes.items():
            section, name = key.split(".")
            profile[section][name] = value
        return profile

    tiny = os.path.join(rehearsal.ROOT, "config", "tiny.toml")
    with pytest.raises(ConfigError) as err:  # the built model is a GPT-NeoX
        pipeline.start(raw(tiny, **{"monotonic.variant": "gated_updown"}), None)
    assert "\n" not in str(err.value) and "'monotonic.variant'" in str(err.value)
    assert "gpt_neox" in str(err.value) and "mlp_in, mlp_both, mlp_in_attn_out" in str(err.value)
    folder = tmp_path / "qwen"  # a local mirror of a Qwen2 model: its config.json says its family
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    qwen = os.path.join(rehearsal.ROOT, "config", "qwen2.5-0.5b.toml")
    model = checks.model_type_if_known
    assert model(config.load(raw(qwen, **{"model.name": str(folder)})).model) == "qwen2"
    with pytest.raises(ConfigError, match=r"family, qwen2 \(model.name .*; its variants: gated_updown, gated_all"):
        pipeline.start(raw(qwen, **{"model.name": str(folder), "monotonic.variant": "mlp_both"}), None)
    # a hub id: only its cached config.json is read (no download); not cached, setup's load decides
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert model(config.load(raw(qwen)).model) == ""
    pipeline.start(raw(qwen, **{"monotonic.variant": "mlp_both"}), None)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(folder / "config.json"))
    with pytest.raises(ConfigError, match="family, qwen2 .model.name 'Qwen/Qwen2.5-0.5B'"):
        pipeline.start(raw(qwen, **{"monotonic.variant": "mlp_both"}), None)
    pipeline.start(raw(qwen), None)  # its own variant, gated_updown

