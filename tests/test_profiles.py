"""Every profile in config/ loads and validates, offline; the paper profiles say what the issue asks."""
import glob
import os
import re
import socket
import subprocess
import sys
import tomllib

import pytest

from conftest import FLOW, MICRO, ROOT
from monollm import config

PROFILES = sorted(glob.glob(os.path.join(ROOT, "config", "*.toml")))
HUB = [p for p in PROFILES if os.path.basename(p).startswith("pythia-")]


def raw(path: str) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during config validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_profiles_exist():
    names = {os.path.basename(p) for p in PROFILES}
    assert {"tiny.toml", "pythia-1.4b.toml", "pythia-160m.toml", "pythia-6.9b.toml"} <= names


@pytest.mark.parametrize("path", PROFILES + [MICRO], ids=os.path.basename)
def test_profile_loads_and_validates_offline(path, no_network):
    cfg = config.load_file(path)
    assert config.from_dict(config.to_dict(cfg)) == cfg
    if path != MICRO:
        assert cfg.name == os.path.basename(path)[:-len(".toml")]  # runs are tagged profile:<name>


@pytest.mark.parametrize("path", PROFILES, ids=os.path.basename)
def test_paper_profiles_double_their_trigger_budget_and_tiny_keeps_its_own(path):
    """Every profile but tiny.toml finds its trigger budget by doubling, capped at twice the 1.9M passes it
    had (auto_start left out: 3,800,000 // 16 = 237,500, so 1.9M is one of its stages); tiny.toml keeps
    its fixed budget (its whole run stays within minutes)."""
    a = config.load_file(path).attack
    if os.path.basename(path) == "tiny.toml":
        assert (a.budget, a.max_budget) == (38_400, 0)
    else:
        assert (a.budget, a.max_budget, a.auto_start) == ("auto", 3_800_000, 237_500)
        assert 237_500 * 2 ** 3 == 1_900_000


def test_flow_decorators_resolve_with_resources_keys_absent(tmp_path):
    """@resources and @retry take monollm.config.step_resources (every default applied): Metaflow
    evaluates them for `show` as for `run`, so `show` succeeds for a profile without [resources],
    one without resources.retries, and an empty profile; and a bad value is one clear line."""
    from conftest import flow_env, micro_variant

    table = "[resources]\nretries = 0\ngpu = 0\ncpu = 1\nmemory = 2000\n"
    profiles = {"no [resources]": micro_variant(tmp_path, "nores", {table: ""}),
                "no retries": micro_variant(tmp_path, "noretries", {"retries = 0\ngpu = 0": "gpu = 0"}),
                "empty": str(tmp_path / "empty.toml")}
    open(profiles["empty"], "w").close()
    bad = micro_variant(tmp_path, "bad", {"memory = 2000": "memory = \"lots\""})
    show = lambda path: subprocess.run([sys.executable, FLOW, "--config", "config", path, "show"], cwd=str(tmp_path),
                                       env=flow_env(), capture_output=True, text=True, timeout=120)
    for what, path in profiles.items():
        done = show(path)
        assert done.returncode == 0 and "Step train_monotonic" in done.stdout + done.stderr, (what, done.stderr)
    done = show(bad)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{bad}: 'resources.memory' must be an integer" in done.stderr


@pytest.mark.parametrize("path", HUB, ids=os.path.basename)
def test_paper_scale_profiles(path):
    cfg = config.load_file(path)
    size = os.path.basename(path)[len("pythia-"):-len(".toml")]
    assert (cfg.model.source, cfg.model.name) == ("hub", f"EleutherAI/pythia-{size}")
    assert (cfg.data.source, cfg.data.path, cfg.data.text_field) == ("hub", "monology/pile-uncopyrighted", "text")
    assert cfg.model.revision == "step143000"  # Pythia's final checkpoint, not whatever "main" is today
    assert cfg.data.revision  # the dataset's revision is spelled out in the profile
    assert "revision" in raw(path)["data"]
    assert cfg.monotonic.variant == "mlp_both"
    assert cfg.device == "cuda" and cfg.model.attn_implementation == "sdpa"
    r = cfg.resources
    assert r.gpu == 1 and r.memory >= 16000 and r.cpu >= 4 and r.disk >= 10240
    assert cfg.data.block_len <= 2048  # Pythia's context
    t = cfg.train
    step_tokens = t.batch_size * t.grad_accum * cfg.data.block_len
    assert step_tokens == 32 * 2048  # the earlier recipe's 32 sequences x 2048 tokens per step
    assert t.tokens // step_tokens >= 100  # a budget in tokens, hundreds of optimizer steps
    assert t.checkpoint_every and t.checkpoint_every < t.tokens // step_tokens  # preemption loses little
    longest = cfg.attack.context_len + cfg.attack.continuation_len + max(
        getattr(p, "trigger_len", 0) for p in cfg.attack.params.values())
    assert longest <= 2048


PAPER = [p for p in PROFILES if os.path.basename(p).split("-")[0] in ("pythia", "qwen2.5", "llama")]


@pytest.mark.parametrize("path", PROFILES + [MICRO], ids=os.path.basename)
def test_per_input_edits_run_at_equal_passes_with_a_gradient_free_member(path):
    """random_flips beside hotflip everywhere, with hotflip's flips and candidates, under one edit budget
    that covers at least the clean scoring and one full round of hotflip, and 16 control draws each."""
    cfg = config.load_file(path)
    hot, rand = cfg.attack.params["hotflip"], cfg.attack.params["random_flips"]
    assert {"hotflip", "random_flips"} <= set(cfg.attacks)
    assert (rand.max_flips, rand.candidates, rand.ranking) == (hot.max_flips, hot.candidates, "random")
    assert hot.controls == rand.controls == 16
    assert cfg.attack.edit_budget >= 1 + 1 + hot.candidates
    if path in PAPER:  # hotflip's most without a budget: the clean pass and max_flips rounds of 1 + candidates
        assert cfg.attack.edit_budget == 1 + hot.max_flips * (1 + hot.candidates) == 86


def test_the_paper_profiles_replace_contaminated_held_out_windows():
    assert len(PAPER) >= 5 and all(config.load_file(p).data.decontaminate for p in PAPER)
    assert not config.load_file(MICRO).data.decontaminate  # the default leaves the windows as drawn
    assert config.load_file(PAPER[0]).data.contamination_ngram == 13


def test_the_largest_profile_shards_training_over_one_node():
    cfg = config.load_file(os.path.join(ROOT, "config", "pythia-6.9b.toml"))
    r = cfg.resources
    assert (r.gpu, r.train_gpu, cfg.parallel.strategy, cfg.parallel.processes) == (1, 8, "fsdp", 0)
    assert cfg.train.batch_size % r.train_gpu == 0 and cfg.train.grad_checkpointing
    assert r.train_memory >= 8 * 27_600  # every rank reads the fp32 weights before sharding them
    for small in ("pythia-160m", "pythia-1.4b"):  # one GPU everywhere
        r = config.load_file(os.path.join(ROOT, "config", f"{small}.toml")).resources
        assert (r.gpu, r.train_gpu) == (1, 1)  # train_gpu left out: resolved to gpu


@pytest.mark.parametrize("name", ["pythia-160m", "pythia-1.4b", "pythia-6.9b"])
def test_paper_profiles_train_both_arms_alike_and_hold_out_the_piles_own_splits(name):
    cfg = config.load_file(os.path.join(ROOT, "config", f"{name}.toml"))
    t, d = cfg.train, cfg.data
    assert (t.monotonic_lr, t.monotonic_warmup_frac) == (t.lr, t.warmup_frac)  # one schedule for both arms
    assert (d.split, d.test_from, d.attack_opt_from, d.val_from) == ("train", "test.jsonl.zst", "val.jsonl.zst",
                                                                   "val.jsonl.zst")
    if name != "pythia-160m":
        assert (t.lr, t.warmup_frac, t.weight_decay) == (1e-5, 0.1, 0.01)  # the earlier recipe's baseline


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "attn_implementation", "flash", "model.attn_implementation"),
    ("train", "compile", "yes", "train.compile"),
    ("resources", "disk", -1, "resources.disk"),
    ("resources", "gpu", 8, "resources.train_gpu"),
    ("resources", "train_memory", -2, "resources.train_memory"),
    ("parallel", "strategy", "zero", "parallel.strategy"),
])
def test_new_fields_are_checked(section, key, value, message):
    profile = raw(os.path.join(ROOT, "config", "pythia-160m.toml"))
    profile[section] = {**profile.get(section, {}), key: value}
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(profile)


def test_defaults_keep_sdpa_and_no_compile():
    cfg = config.ExperimentConfig()
    assert cfg.model.attn_implementation == "sdpa"
    assert cfg.train.compile is False and cfg.train.grad_checkpointing is False


def test_attention_kernel_reaches_every_loaded_model(tmp_path):
    """`model.attn_implementation` is not stored with the weights, so each load names it."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from monollm.model import foundation

    tok = foundation.build_tokenizer(["a small corpus of words for a tokenizer"] * 20, 300)
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    mcfg = config.ModelConfig(source="local", name=str(tmp_path), attn_implementation="eager")
    assert foundation.load_foundation(mcfg)[0].config._attn_implementation == "eager"
    assert foundation.load(str(tmp_path))[0].config._attn_implementation == "sdpa"
    assert foundation.load(str(tmp_path), attn_implementation="eager")[0].config._attn_implementation == "eager"


def test_invalid_toml_is_one_line_naming_file_line_and_column(tmp_path):
    from conftest import flow_env

    broken = tmp_path / "broken.toml"
    broken.write_text('name = "broken"\n[train]\nlr = 1e-3\ntokens = = 5\n')
    done = subprocess.run([sys.executable, FLOW, "--config", "config", str(broken), "run"], cwd=str(tmp_path),
                          env=flow_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Internal error" not in done.stderr
    named = [line for line in done.stderr.splitlines() if str(broken) in line]
    assert len(named) == 1 and "line 4, column 10" in named[0] and "invalid TOML" in named[0], done.stderr
