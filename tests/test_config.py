"""Tests for monollm.config and the `start` checks of monollm.pipeline.

Every bad profile must fail with a ConfigError whose message names the key and
what is allowed, and `pipeline.start` must fail before any model work.
"""
import copy
import glob
import json
import os
import tomllib

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from monollm import config, pipeline
from monollm.model import foundation
from monollm.train import loop
from monollm.attacks import ATTACKS
from monollm.model.monotonic import ALL_VARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro.toml")
PROFILES = sorted(glob.glob(os.path.join(ROOT, "config", "*.toml"))) + [MICRO]


with open(MICRO, "rb") as _f:
    _MICRO_RAW = tomllib.load(_f)
HELD = sum(_MICRO_RAW["data"][k] for k in ("val_docs", "attack_opt_docs", "test_docs"))


def micro(**changes) -> dict:
    """A fresh copy of the micro profile with dotted keys set (value None deletes the key)."""
    raw = copy.deepcopy(_MICRO_RAW)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


def assert_config_error(fn, *needles):
    with pytest.raises(config.ConfigError) as exc:
        fn()
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


@pytest.fixture
def no_model_work(monkeypatch):
    """Any model, tokenizer or training work inside `start` fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("pipeline.start did model work")

    for name in ("build_tokenizer", "build_model", "load_foundation", "load"):
        monkeypatch.setattr(foundation, name, forbidden)
    monkeypatch.setattr(loop, "train", forbidden)
    monkeypatch.setattr(GPTNeoXForCausalLM, "from_pretrained", forbidden)
    import transformers
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)


@pytest.fixture(scope="module")
def local_model_dir(tmp_path_factory) -> str:
    """A tiny GPT-NeoX saved with save_pretrained; its context is 32 tokens."""
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, vocab_size=128, max_position_embeddings=32))
    path = tmp_path_factory.mktemp("local_model")
    model.save_pretrained(path)
    return str(path)


def jsonl(path, n: int) -> str:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"document number {i} says hello."}) + "\n")
    return str(path)


# --- every profile loads and round-trips ------------------------------------------

@pytest.mark.parametrize("path", PROFILES, ids=os.path.basename)
def test_profile_loads_and_round_trips(path):
    cfg = config.load_file(path)
    assert isinstance(cfg, config.ExperimentConfig)
    assert config.from_dict(config.to_dict(cfg)) == cfg
    for name in cfg.attacks:  # every listed attack has its built config
        assert name in cfg.attack.params and not isinstance(cfg.attack.params[name], dict)
    # the plain dict is what a TOML profile looks like: attack tables under [attack]
    assert set(config.to_dict(cfg)["attack"]) >= set(cfg.attacks)


def test_config_dir_is_not_empty():
    assert any(p.endswith("tiny.toml") for p in PROFILES)


def test_seed_override_and_frozen():
    cfg = config.load(micro(), seed=7)
    assert cfg.seed == 7 and config.load(micro()).seed == _MICRO_RAW["seed"]
    with pytest.raises(Exception):
        cfg.seed = 3  # frozen
    assert config.from_dict(config.to_dict(cfg)) == cfg


@pytest.mark.parametrize("seed", [-1, 99999999999999999999, config.MAX_SEED + 1])
def test_out_of_range_seed_names_seed_and_range(seed):
    assert_config_error(lambda: config.load(micro(), seed=seed), "'seed'", str(seed), "0 .. 4294967295 (32 bits)")


def test_seed_range_ends_are_accepted():
    assert config.load(micro(), seed=0).seed == 0
    assert config.load(micro(), seed=config.MAX_SEED).seed == 2 ** 32 - 1


# --- step_resources: what the flow's @resources and @retry read -------------------------

DEFAULT_RESOURCES = config.ResourcesConfig()


@pytest.mark.parametrize("raw", [{}, {"resources": {}}, {"name": "x", "resources": {"gpu": 0, "cpu": 2}}],
                         ids=["empty profile", "empty table", "no retries"])
def test_step_resources_apply_every_default(raw):
    d = DEFAULT_RESOURCES
    for train in (False, True):
        got = config.step_resources(raw, train=train)
        assert got == {"gpu": d.gpu, "cpu": d.cpu, "memory": d.memory, "disk": d.disk, "retries": d.retries,
                       "shared_memory": None, "gpu_type": ""}


def test_step_resources_training_overrides_and_shared_memory():
    raw = {"resources": {"gpu": 1, "cpu": 8, "memory": 64000, "train_gpu": 4, "train_memory": 200000,
                         "train_shared_memory": 16384, "retries": 2}}
    model, train_ = config.step_resources(raw), config.step_resources(raw, train=True)
    assert (model["gpu"], model["cpu"], model["memory"], model["shared_memory"]) == (1, 8, 64000, None)
    assert (train_["gpu"], train_["cpu"], train_["memory"], train_["shared_memory"]) == (4, 8, 200000, 16384)
    assert model["retries"] == train_["retries"] == 2 and model["disk"] == train_["disk"] == DEFAULT_RESOURCES.disk


@pytest.mark.parametrize("path", PROFILES, ids=os.path.basename)
def test_step_resources_agree_with_the_loaded_config(path):
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    r = config.load(raw).resources
    train_ = config.step_resources(raw, train=True)
    assert config.step_resources(raw)["gpu"] == r.gpu and train_["retries"] == r.retries
    assert (train_["gpu"], train_["cpu"], train_["memory"]) == (r.train_gpu, r.train_cpu, r.train_memory)


def test_step_resources_refuse_bad_values_by_key():
    assert_config_error(lambda: config.step_resources({"resources": {"gpu": "x"}}), "'resources.gpu'", "integer")
    assert_config_error(lambda: config.step_resources({"resources": {"gpus": 1}}), "'resources.gpus'", "train_gpu")
    assert_config_error(lambda: config.step_resources({"resources": 3}), "'resources'", "table")
    # the type goes into a Slurm batch script line (`--gres=gpu:TYPE:N`): no separators, spaces or newlines
    for bad in ("a100:2", "a100,v100", "a 100", "a100\n#SBATCH --qos=high", "-a100", "'a100'"):
        assert_config_error(lambda: config.step_resources({"resources": {"gpu_type": bad}}), "'resources.gpu_type'",
                            "a Slurm GPU type")
    for good in ("", "a100", "h100_80gb", "nvidia_a100-sxm4-80gb", "tesla.v100"):
        assert config.step_resources({"resources": {"gpu_type": good}}, train=True)["gpu_type"] == good


def test_defaults_fill_missing_keys():
    cfg = config.load({})
    assert cfg == config.from_dict(config.to_dict(cfg))
    assert cfg.train.tokens > 0 and cfg.monotonic.variant == "mlp_both"


# --- bad input: ConfigError naming the key and the allowed values -------------------

BAD = {
    # unknown keys
    "unknown top-level key": ({"colour": "red"}, ["unknown key 'colour'", "allowed", "seed", "train"]),
    "unknown nested key": ({"train__lrr": 1e-3}, ["unknown key 'train.lrr'", "lr", "batch_size"]),
    "unknown deep key": ({"model__build__width": 3}, ["'model.build.width'", "hidden_size"]),
    "unknown attack table": ({"attack__telepathy": {"trigger_len": 3}},
                             ["'attack.telepathy'", *ATTACKS, "context_len"]),
    "unknown key in attack table": ({"attack__random__bogus": 1}, ["'attack.random.bogus'", "trigger_len"]),
    # unknown names
    "unknown variant": ({"monotonic__variant": "mlp_all"}, ["'monotonic.variant'", "'mlp_all'", *ALL_VARIANTS]),
    "unknown attack": ({"attacks": ["telepathy"]}, ["'attacks'", "'telepathy'", *ATTACKS]),
    "attack twice": ({"attacks": ["random", "random"]}, ["'attacks'", "twice"]),
    "no attack": ({"attacks": []}, ["'attacks'", *ATTACKS]),
    "unknown device": ({"device": "tpu"}, ["'device'", "auto", "cpu", "cuda"]),
    "unknown threat model": ({"attack__tokens": ["round_trip", "ascii"]}, ["'attack.tokens[1]'", "'ascii'",
                                                                           "round_trip", "printable"]),
    "no threat model": ({"attack__tokens": []}, ["'attack.tokens'", "empty"]),
    "threat model twice": ({"attack__tokens": ["printable", "printable"]}, ["'attack.tokens'", "twice"]),
    "unknown schedule": ({"train__schedule": "step"}, ["'train.schedule'", "cosine", "linear", "constant"]),
    "unknown model source": ({"model__source": "s3"}, ["'model.source'", "build", "hub", "local"]),
    "unknown data source": ({"data__source": "web"}, ["'data.source'", "builtin", "local", "hub"]),
    # non-positive budgets and batch sizes
    "zero train tokens": ({"train__tokens": 0}, ["'train.tokens'", "positive"]),
    "negative train tokens": ({"train__tokens": -100}, ["'train.tokens'", "positive"]),
    "zero pretrain tokens": ({"pretrain__tokens": 0}, ["'pretrain.tokens'", "positive"]),
    "zero train batch": ({"train__batch_size": 0}, ["'train.batch_size'", "positive"]),
    "zero pretrain batch": ({"pretrain__batch_size": 0}, ["'pretrain.batch_size'", "positive"]),
    "zero grad_accum": ({"train__grad_accum": 0}, ["'train.grad_accum'", "positive"]),
    "zero eval batch": ({"eval__batch_size": 0}, ["'eval.batch_size'", "positive"]),
    "zero attack batch": ({"attack__batch_size": 0}, ["'attack.batch_size'", "positive"]),
    "zero attack examples": ({"attack__examples": 0}, ["'attack.examples'", "positive"]),
    "zero trigger": ({"attack__random__trigger_len": 0}, ["attack.random", "trigger_len", "positive"]),
    "budget word": ({"attack__budget": "lots"}, ["'attack.budget'", "'lots'", "auto"]),
    "auto budget without cap": ({"attack__budget": "auto"}, ["'attack.max_budget'", "> 0", "auto"]),
    "auto start above cap": ({"attack__budget": "auto", "attack__max_budget": 800, "attack__auto_start": 801},
                             ["'attack.auto_start'", "801", "800"]),
    "auto start 0": ({"attack__budget": "auto", "attack__max_budget": 15}, ["'attack.auto_start'", "is 0"]),
    "negative cap": ({"attack__max_budget": -1}, ["'attack.max_budget'", ">= 0"]),
    "no budget with random_search": ({"attack__budget": 0}, ["'attack.budget'", "random_search", "auto"]),
    "float budget": ({"attack__budget": 1.5}, ["'attack.budget'", "integer or a string"]),
    "random_flips without an edit budget": ({"attack__edit_budget": 0}, ["'attack.edit_budget'", "random_flips",
                                                                          "equal forward passes"]),
    "random_flips ranked by gradient": ({"attack__random_flips__ranking": "gradient"},
                                        ["attack.random_flips.ranking", "random"]),
    "no hotflip control": ({"attack__hotflip__controls": 0}, ["attack.hotflip", "controls", ">= 1"]),
    "zero test docs": ({"data__test_docs": 0}, ["'data.test_docs'", "positive"]),
    "block_len 1": ({"data__block_len": 1}, ["'data.block_len'", "at least 2"]),
    "warmup 1": ({"train__warmup_frac": 1.0}, ["'train.warmup_frac'", "[0, 1)"]),
    "heads": ({"model__build__num_heads": 5}, ["'model.build.num_heads'", "divide"]),
    "keep no checkpoint": ({"train__keep_checkpoints": 0}, ["'train.keep_checkpoints'", ">= 1"]),
    "zero collective timeout": ({"parallel__timeout_minutes": 0}, ["'parallel.timeout_minutes'", ">= 1"]),
    "gpu type with count": ({"resources__gpu_type": "a100:1"}, ["'resources.gpu_type'", "Slurm GPU type", "a100"]),
    # wrong types
    "string for int": ({"train__tokens": "1000"}, ["'train.tokens'", "integer", "'1000'"]),
    "float for int": ({"train__batch_size": 4.5}, ["'train.batch_size'", "integer"]),
    "bool for int": ({"seed": True}, ["'seed'", "integer"]),
    "string for float": ({"train__lr": "fast"}, ["'train.lr'", "number"]),
    "int for bool": ({"train__grad_checkpointing": 1}, ["'train.grad_checkpointing'", "true or false"]),
    "int for str": ({"name": 3}, ["'name'", "string"]),
    "string for list": ({"attacks": "random"}, ["'attacks'", "list"]),
    "bad list item": ({"attack__thresholds": [0.5, "x"]}, ["'attack.thresholds[1]'", "number"]),
    "value for table": ({"model": "build"}, ["'model'", "table"]),
    "value for attack table": ({"attack__random": 3}, ["'attack.random'", "table"]),
    "order chains": ({"eval__order__chains": "german"}, ["'eval.order.chains'", "english, builtin"]),
    "order pooling": ({"eval__order__pooling": ["max"]}, ["'eval.order.pooling[0]'", "last, mean"]),
    "no order pooling": ({"eval__order__pooling": []}, ["'eval.order.pooling'", "at least one"]),
    "order fit": ({"eval__order__fit_fraction": 1.0}, ["'eval.order.fit_fraction'", "(0, 1)"]),
    "zero n-gram": ({"data__contamination_ngram": 0}, ["'data.contamination_ngram'", "1 .. 24"]),
    "n-gram above the window": ({"data__contamination_ngram": 25}, ["'data.contamination_ngram'", "1 .. 24",
                                                                    "attack.context_len"]),
    "string for decontaminate": ({"data__decontaminate": "yes"}, ["'data.decontaminate'", "true or false"]),
}


@pytest.mark.parametrize("changes,needles", BAD.values(), ids=BAD.keys())
def test_bad_input_names_key_and_allowed(changes, needles):
    raw = micro(**changes)
    assert_config_error(lambda: config.load(raw), *needles)


def test_auto_budget_loads_with_its_first_stage_resolved():
    """budget = "auto" needs only max_budget (random_search listed: "auto" is a budget); auto_start left
    out is max_budget // 16, written into the config so that the run shows the value used."""
    cfg = config.load(micro(attack__budget="auto", attack__max_budget=8000))
    assert (cfg.attack.budget, cfg.attack.max_budget, cfg.attack.auto_start) == ("auto", 8000, 500)
    assert config.from_dict(config.to_dict(cfg)) == cfg
    own = config.load(micro(attack__budget="auto", attack__max_budget=8000, attack__auto_start=1000))
    assert own.attack.auto_start == 1000
    assert config.load(micro()).attack.budget == 2000  # an integer stays one


def test_unknown_attack_is_config_error_not_key_error():
    # regression: from_dict used to look the name up in the registry before validation
    with pytest.raises(config.ConfigError):
        config.load(micro(attacks=["random", "hotflip_typo"]))


def test_missing_local_model_dir(tmp_path):
    missing = str(tmp_path / "nope")
    raw = micro(model__source="local", model__name=missing)
    assert_config_error(lambda: config.load(raw), "'model.name'", missing)
    assert_config_error(lambda: config.load(micro(model__source="hub", model__name="")), "'model.name'")


def test_missing_local_data_path(tmp_path):
    missing = str(tmp_path / "docs.jsonl")
    assert_config_error(lambda: config.load(micro(data__source="local", data__path=missing)),
                        "'data.path'", missing)
    assert_config_error(lambda: config.load(micro(data__source="local", data__path="")), "'data.path'")


def test_local_data_unknown_extension(tmp_path):
    (tmp_path / "docs.docx").write_text("hello")
    msg = assert_config_error(
        lambda: config.load(micro(data__source="local", data__path=str(tmp_path / "docs.docx"))),
        "'data.path'", ".jsonl", ".parquet", ".txt")
    assert ".docx" in msg


# --- pipeline.start: checks needing sizes, before any model work ----------------------

def test_start_accepts_micro_without_model_work(no_model_work):
    cfg = pipeline.start(micro(), seed=None)
    assert cfg == config.load(micro())
    assert pipeline.start(micro(), seed=5).seed == 5


def test_start_block_len_above_built_context(no_model_work):
    ctx = _MICRO_RAW["model"]["build"]["max_position"]
    assert_config_error(lambda: pipeline.start(micro(data__block_len=ctx + 1), None),
                        "'data.block_len'", str(ctx + 1), str(ctx))
    pipeline.start(micro(data__block_len=ctx), None)  # exactly the context is fine


def test_start_attack_window_above_context(no_model_work):
    assert_config_error(lambda: pipeline.start(micro(attack__context_len=60), None),
                        "'attack.context_len'", "continuation_len")


def test_start_block_len_above_local_model_context(no_model_work, local_model_dir):
    raw = micro(model__source="local", model__name=local_model_dir, data__block_len=32)
    assert pipeline.start(raw, None).model.source == "local"  # fits the local model's 32 tokens
    raw["data"]["block_len"] = 33
    assert_config_error(lambda: pipeline.start(raw, None), "'data.block_len'", "33", "32")


def test_start_missing_local_model(no_model_work, tmp_path):
    raw = micro(model__source="local", model__name=str(tmp_path / "missing"))
    assert_config_error(lambda: pipeline.start(raw, None), "'model.name'", "not a directory")


def test_start_missing_local_data(no_model_work, tmp_path):
    raw = micro(data__source="local", data__path=str(tmp_path / "missing" / "*.jsonl"))
    assert_config_error(lambda: pipeline.start(raw, None), "'data.path'", "matches no file")


def test_start_builtin_corpus_too_small(no_model_work):
    assert_config_error(lambda: pipeline.start(micro(data__builtin_docs=HELD), None),
                        "'data.builtin_docs'", str(HELD), "too small")
    pipeline.start(micro(data__builtin_docs=HELD + 1), None)


def test_start_builtin_corpus_too_small_with_local_model(no_model_work, local_model_dir):
    raw = micro(model__source="local", model__name=local_model_dir, data__builtin_docs=HELD - 10)
    assert_config_error(lambda: pipeline.start(raw, None), "'data.builtin_docs'", "too small")


def test_start_local_corpus_too_small(no_model_work, tmp_path):
    path = jsonl(tmp_path / "docs.jsonl", 50)  # test_docs alone wants 60
    msg = assert_config_error(lambda: pipeline.start(micro(data__source="local", data__path=path), None),
                              "data.test_docs", "too small")
    assert "50" in msg


def test_start_local_corpus_without_train_docs(no_model_work, tmp_path):
    # held-out splits fill exactly, nothing is left for training
    path = jsonl(tmp_path / "docs.jsonl", HELD)
    assert_config_error(lambda: pipeline.start(micro(data__source="local", data__path=path), None),
                        "train", "too small")
    path = jsonl(tmp_path / "docs.jsonl", HELD + 1)
    assert pipeline.start(micro(data__source="local", data__path=path), None).data.source == "local"


def test_start_rejects_bad_values_too(no_model_work):
    assert_config_error(lambda: pipeline.start(micro(train__tokens=0), None), "'train.tokens'")


def test_data_revision_is_read_and_names_its_key_when_wrong():
    raw = {"data": {"source": "hub", "path": "monology/pile-uncopyrighted", "revision": "a1b2c3"}}
    cfg = config.load(raw)
    assert cfg.data.revision == "a1b2c3" and config.load({}).data.revision == "main"
    assert config.from_dict(config.to_dict(cfg)) == cfg
    with pytest.raises(config.ConfigError, match="'data.revision'"):
        config.load({"data": {**raw["data"], "revision": 3}})


# --- settings that default to another one are resolved once, at load --------------------

def test_left_out_per_arm_settings_resolve_to_the_shared_ones():
    cfg = config.load(micro())
    t = cfg.train
    assert (t.monotonic_lr, t.monotonic_warmup_frac) == (t.lr, t.warmup_frac)
    assert cfg.train_for("monotonic") == cfg.train_for("baseline") == t
    assert cfg.train_for("pretrain") is cfg.pretrain
    assert config.to_dict(cfg)["train"]["monotonic_lr"] == t.lr  # what the card and compare show
    r = cfg.resources
    assert (r.train_gpu, r.train_cpu, r.train_memory) == (r.gpu, r.cpu, r.memory)
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_a_per_arm_override_reaches_only_the_monotonic_arm():
    cfg = config.load(micro(train__monotonic_lr=5e-3, train__monotonic_warmup_frac=0.5))
    mono, base = cfg.train_for("monotonic"), cfg.train_for("baseline")
    assert (mono.lr, mono.warmup_frac) == (5e-3, 0.5)
    assert (base.lr, base.warmup_frac) == (cfg.train.lr, cfg.train.warmup_frac) != (5e-3, 0.5)


@pytest.mark.parametrize("changes, words", [
    ({"train__monotonic_lr": 0}, ["'train.monotonic_lr'", "leave it out"]),
    ({"train__monotonic_warmup_frac": -1}, ["'train.monotonic_warmup_frac'", "leave it out"]),
    ({"resources__train_gpu": -1}, ["'resources.train_gpu'", "leave it out"]),
    ({"pretrain__monotonic_lr": 1e-3}, ["'pretrain.monotonic_lr'", "[train] only"]),
], ids=["lr 0", "warmup -1", "train_gpu -1", "pretrain override"])
def test_the_old_sentinel_values_are_refused_with_what_to_do(changes, words):
    assert_config_error(lambda: config.load(micro(**changes)), *words)


# --- [monotonic] mode, layers, init, activation ----------------------------------------

MONOTONIC_BAD = {
    "unknown mode": ({"monotonic__mode": "positive"}, ["'monotonic.mode'", "'positive'", "nonneg", "sign_frozen",
                                                         "abs_init_free"]),
    "unknown init": ({"monotonic__init": "zeros"}, ["'monotonic.init'", "'zeros'", "abs", "clip"]),
    "unknown activation": ({"monotonic__activation": "swish"}, ["'monotonic.activation'", "'swish'", "keep",
                                                                 "relu"]),
    "empty layers": ({"monotonic__layers": ""}, ["'monotonic.layers'", "empty", "all", "top:K"]),
    "top:0": ({"monotonic__layers": "top:0"}, ["'monotonic.layers'", "empty"]),
    "malformed layers": ({"monotonic__layers": "first"}, ["'monotonic.layers'", "'first'", "bottom:K", "0,3,5"]),
    "layer twice": ({"monotonic__layers": "1,1"}, ["'monotonic.layers'", "twice"]),
    "layers as a list": ({"monotonic__layers": [0, 1]}, ["'monotonic.layers'", "string"]),
    "sign_frozen with clip": ({"monotonic__mode": "sign_frozen", "monotonic__init": "clip"},
                                   ["'monotonic.init'", "sign_frozen", "abs"]),
}


@pytest.mark.parametrize("changes,needles", MONOTONIC_BAD.values(), ids=MONOTONIC_BAD.keys())
def test_bad_monotonic_settings_fail_in_start(no_model_work, changes, needles):
    assert_config_error(lambda: pipeline.start(micro(**changes), None), *needles)


def test_monotonic_defaults_and_good_settings_load():
    m = config.load(micro()).monotonic
    assert (m.mode, m.layers, m.init, m.activation) == ("nonneg", "all", "abs", "keep")
    for changes in ({"monotonic__mode": "sign_frozen"}, {"monotonic__mode": "abs_init_free", "monotonic__init":
                    "clip"}, {"monotonic__layers": "top:1"}, {"monotonic__layers": "0, 1"},
                    {"monotonic__activation": "relu"}):
        cfg = config.load(micro(**changes))
        assert config.from_dict(config.to_dict(cfg)) == cfg


def test_start_layer_out_of_range_names_the_built_models_layers(no_model_work):
    n = _MICRO_RAW["model"]["build"]["num_layers"]
    for spec, bad in ((f"0,{n}", str(n)), (f"top:{n + 1}", f"top:{n + 1}"), (f"bottom:{n + 3}", f"bottom:{n + 3}")):
        assert_config_error(lambda: pipeline.start(micro(monotonic__layers=spec), None),
                            "'monotonic.layers'", bad, f"{n} layers", f"0 .. {n - 1}")
    pipeline.start(micro(monotonic__layers=f"top:{n}"), None)  # every layer is fine


def test_start_layer_out_of_range_of_a_local_model(no_model_work, local_model_dir):
    raw = micro(model__source="local", model__name=local_model_dir, data__block_len=32, monotonic__layers="2")
    assert_config_error(lambda: pipeline.start(raw, None), "'monotonic.layers'", "2 layers", "0 .. 1")
    raw["monotonic"]["layers"] = "1"
    assert pipeline.start(raw, None).monotonic.layers == "1"


def test_one_threat_model_may_be_given_alone_or_in_a_list():
    assert config.load(micro(attack__tokens="printable")).attack.tokens == ("printable",)
    both = config.load(micro(attack__tokens=["printable", "round_trip"]))
    assert both.attack.tokens == ("printable", "round_trip") and config.from_dict(config.to_dict(both)) == both


@pytest.mark.parametrize("changes, key, allowed", [
    ({"attack__budget": 10 ** 12}, "'attack.budget'", "at most 1000000000"),
    ({"attack__budget": 2 ** 63 - 1}, "'attack.budget'", "at most 1000000000"),
    ({"attack__uat__restarts": 10_001}, "'attack.uat.restarts'", "at most 10000"),
    ({"attack__gcg__restarts": 10 ** 9}, "'attack.gcg.restarts'", "at most 10000"),
    ({"attack__random_search__steps": 100_001}, "'attack.random_search.steps'", "at most 100000"),
    ({"attack__uat__steps": 2 ** 40}, "'attack.uat.steps'", "at most 100000"),
])
def test_budgets_restarts_and_steps_above_their_ceiling_are_refused_with_one_line(changes, key, allowed):
    msg = assert_config_error(lambda: config.load(micro(**changes)), key, allowed)
    assert "\n" not in msg


def tiny_search(budget: int) -> dict:
    """random_search alone, one example a step, one candidate a step, one step a restart: a restart spends
    at most 1 (the step) + 1 (the start) = 2 forward passes, so 10000 restarts spend at most 20000."""
    return micro(attacks=["random_search"], attack__budget=budget, attack__random_search__steps=1,
                 attack__random_search__batch=1, attack__random_search__opt_examples=1,
                 attack__random_search__guidance_sample=0)


def test_a_budget_that_would_need_more_restarts_than_the_ceiling_is_refused():
    assert config.load(tiny_search(20_000)).attack.budget == 20_000
    msg = assert_config_error(lambda: config.load(tiny_search(20_001)), "'attack.budget'", "more than 10000 restarts",
                              "at most 2 forward passes", "attack.random_search.steps")
    assert "\n" not in msg
    from monollm.attacks import trigger
    from monollm.constants import RESTART_CEILING

    assert trigger.MAX_RESTARTS == RESTART_CEILING  # the search stops where start's check says it would


def test_an_auto_budget_is_held_to_the_ceiling_by_its_cap():
    raw = tomllib.loads(open(MICRO).read())
    raw["attack"].update(budget="auto", max_budget=10**9 + 1)
    assert_config_error(lambda: config.load(raw), "'attack.max_budget'", "1000000001", "at most 1000000000")
