"""The checks a loaded profile must pass that types alone cannot express, one per section.

`validate(cfg)` runs them all (monollm.config.load calls it) and raises ConfigError naming the
key and what is allowed. Checks that need the model (its context length) are `context_fits`,
run once the model's config is known. Torch-free: registries that live next to torch code
(attacks, constraint variants) are imported inside the check that needs them.
"""
from __future__ import annotations

import dataclasses
import os
import re

from monollm.constants import (ACTIVATIONS, BUDGET_CEILING, COMMIT_PATTERN, INITS, MAX_SEED, MODES, RESTART_CEILING,
                               STEP_CEILING, THREAT_MODELS)
from monollm.model.layers import layer_indices
from monollm.schema import one_of, require


def validate(cfg):
    """Check every section of an ExperimentConfig (resolved); returns it or raises ConfigError."""
    _check_top(cfg)
    _check_model(cfg.model)
    if cfg.model.source == "build":
        train_section(cfg.pretrain, "pretrain")
    _check_data(cfg.data)
    train_section(cfg.train, "train")
    _check_monotonic(cfg.monotonic)
    _check_eval(cfg.eval)
    _check_attack(cfg.attack, cfg.attacks)
    width = cfg.attack.context_len + cfg.attack.continuation_len
    require(0 < cfg.data.contamination_ngram <= width, "data.contamination_ngram",
            f"is {cfg.data.contamination_ngram}; allowed: 1 .. {width} (an attack window's length, "
            f"attack.context_len + attack.continuation_len)")
    _check_resources(cfg.resources)
    _check_parallel(cfg.parallel, cfg.resources, cfg.train)
    return cfg


def attack_tables(cfg, names: tuple[str, ...], attack_cls):
    """The attacks a profile runs and its [attack.<name>] tables name registered attacks."""
    for name in cfg.attacks:
        one_of(name, names, "attacks")
    unknown = sorted(set(cfg.attack.params) - set(names))
    if unknown:
        settings = ", ".join(f.name for f in dataclasses.fields(attack_cls) if f.name != "params")
        require(False, f"attack.{unknown[0]}", f"is unknown (attack settings are {settings}, "
                f"or a table named after an attack: {', '.join(names)})")


def _check_top(cfg):
    from monollm.attacks import ATTACKS

    require(0 <= cfg.seed <= MAX_SEED, "seed", f"is {cfg.seed}; allowed: 0 .. {MAX_SEED} (32 bits), "
            f"the range numpy's seeding accepts (np.random.seed takes no more)")
    one_of(cfg.device, ("auto", "cpu", "cuda"), "device")
    require(cfg.threads >= 0, "threads", "must be >= 0")
    require(len(cfg.attacks) > 0, "attacks", f"must name at least one of: {', '.join(ATTACKS)}")
    for name in cfg.attacks:
        one_of(name, tuple(ATTACKS), "attacks")
    require(len(set(cfg.attacks)) == len(cfg.attacks), "attacks", "lists an attack twice")


def _check_model(m):
    one_of(m.source, ("build", "hub", "local"), "model.source")
    one_of(m.attn_implementation, ("sdpa", "eager"), "model.attn_implementation")
    if m.source == "build":
        b = m.build
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
            require(getattr(b, name) > 0, f"model.build.{name}", "must be positive")
        require(b.hidden_size % b.num_heads == 0, "model.build.num_heads", "must divide hidden_size")
        require(b.vocab_size >= 300, "model.build.vocab_size", "must be >= 300 (256 bytes + merges)")
    else:
        require(bool(m.name), "model.name", f"is required for model.source = {m.source!r}")
        if m.source == "local":
            require(os.path.isdir(m.name), "model.name", f"is not a directory: {m.name!r}")


def _check_data(d):
    from monollm.data.documents import local_files

    one_of(d.source, ("builtin", "local", "hub"), "data.source")
    if d.source != "builtin":
        require(bool(d.path), "data.path", f"is required for data.source = {d.source!r}")
    if d.source == "local":
        local_files(d.path)  # raises ConfigError naming the path
    for split in ("test", "attack_opt", "val"):
        held = getattr(d, f"{split}_from")
        require(not held or d.source != "builtin", f"data.{split}_from",
                "applies to data.source = \"local\" or \"hub\" (the built-in corpus has one source)")
        if held and d.source == "local":
            local_files(held, f"data.{split}_from")
    for name in ("val_docs", "attack_opt_docs", "test_docs", "block_len", "shuffle_buffer", "builtin_docs"):
        require(getattr(d, name) > 0, f"data.{name}", "must be positive")
    require(d.max_train_docs >= 0, "data.max_train_docs", "must be >= 0")
    require(d.block_len >= 2, "data.block_len", "must be at least 2")


def one_arm_only(raw, key: str):
    """A parsed [pretrain] table sets no per-arm override (pretraining has one arm)."""
    for name in ("monotonic_lr", "monotonic_warmup_frac"):
        require(not (isinstance(raw, dict) and name in raw), f"{key}.{name}",
                "applies to [train] only (pretraining has one arm)")


def train_section(t, key: str):
    """A [train] or [pretrain] table (resolved: the per-arm settings hold concrete values)."""
    for name in ("tokens", "batch_size", "grad_accum"):
        require(getattr(t, name) > 0, f"{key}.{name}", "must be positive")
    require(t.lr > 0, f"{key}.lr", "must be positive")
    require(0 <= t.warmup_frac < 1, f"{key}.warmup_frac", "must be in [0, 1)")
    one_of(t.schedule, ("cosine", "linear", "constant"), f"{key}.schedule")
    require(0 <= t.min_lr_frac <= 1, f"{key}.min_lr_frac", "must be in [0, 1]")
    require(t.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
    require(t.max_grad_norm > 0, f"{key}.max_grad_norm", "must be positive")
    for name in ("eval_every", "val_blocks", "log_every", "checkpoint_every"):
        require(getattr(t, name) >= 0, f"{key}.{name}", "must be >= 0")
    require(t.keep_checkpoints >= 1, f"{key}.keep_checkpoints", "must be >= 1 (the newest checkpoint is always kept)")
    require(t.monotonic_lr > 0, f"{key}.monotonic_lr", "must be positive (leave it out for the same as lr)")
    require(0 <= t.monotonic_warmup_frac < 1, f"{key}.monotonic_warmup_frac",
            "must be in [0, 1) (leave it out for the same as warmup_frac)")


def _check_monotonic(m):
    from monollm.model.monotonic import ALL_VARIANTS

    one_of(m.variant, ALL_VARIANTS, "monotonic.variant")
    require(0 < m.floor < 1, "monotonic.floor", "must be in (0, 1)")
    one_of(m.mode, MODES, "monotonic.mode")
    one_of(m.init, INITS, "monotonic.init")
    require(m.init == "abs" or m.mode != "sign_frozen", "monotonic.init",
            f"is {m.init!r}; mode \"sign_frozen\" keeps the reference's weights at init, so only \"abs\" applies")
    one_of(m.activation, ACTIVATIONS, "monotonic.activation")
    layer_indices(m.layers, None)  # the form now; the range once the model's depth is known


def _check_eval(e):
    require(e.batch_size > 0, "eval.batch_size", "must be positive")
    require(e.max_blocks >= 0, "eval.max_blocks", "must be >= 0")
    require(e.bootstrap >= 100, "eval.bootstrap", "must be >= 100")
    from monollm.evaluation.downstream import check as check_downstream

    check_downstream(e.downstream)  # task names and files, naming eval.downstream.tasks[i]
    _check_order(e.order)


def _check_order(o):
    from monollm.evaluation.order_chains import CHAIN_SETS, load_chains

    is_file = o.chains.endswith((".jsonl", ".json")) and os.path.isfile(o.chains)
    require(o.chains in ("auto", *CHAIN_SETS) or is_file, "eval.order.chains",
            f"is {o.chains!r}; allowed: auto, {', '.join(CHAIN_SETS)}, an existing .jsonl file of chains or "
            ".json pairs file")
    if is_file:  # a file of another shape fails here, before any model work
        try:
            load_chains(o.chains)
        except (ValueError, OSError) as err:  # a field of another type, bytes that are not UTF-8, a folder
            require(False, "eval.order.chains", f"{o.chains!r} cannot be read: {err}")
    one_of(o.method, ("published", "per_axis"), "eval.order.method")  # monollm.evaluation.order.METHODS
    require(len(o.pooling) > 0, "eval.order.pooling", "must name at least one of: last, mean")
    for i, p in enumerate(o.pooling):
        one_of(p, ("last", "mean"), f"eval.order.pooling[{i}]")
    require(0 < o.fit_fraction < 1, "eval.order.fit_fraction", "must be in (0, 1)")
    require(0 <= o.split_seed <= MAX_SEED, "eval.order.split_seed", f"must be in 0 .. {MAX_SEED}")
    require(o.directions > 0, "eval.order.directions", "must be positive")
    require(o.probe_c > 0, "eval.order.probe_c", "must be positive")
    require(o.batch_size > 0, "eval.order.batch_size", "must be positive")


def _check_attack(a, attacks):
    for name in ("examples", "context_len", "continuation_len", "batch_size"):
        require(getattr(a, name) > 0, f"attack.{name}", "must be positive")
    require(a.budget == "auto" or (isinstance(a.budget, int) and a.budget >= 0), "attack.budget",
            f"is {a.budget!r}; must be >= 0 (0: no budget) or \"auto\"")
    require(a.max_budget >= 0, "attack.max_budget", f"is {a.max_budget}; must be >= 0")
    if a.budget == "auto":
        require(a.max_budget > 0, "attack.max_budget", f"is {a.max_budget}; must be > 0 with attack.budget = \"auto\"")
        require(1 <= a.auto_start <= a.max_budget, "attack.auto_start",
                f"is {a.auto_start}; must be 1 to attack.max_budget ({a.max_budget}) with attack.budget = \"auto\"")
    require(a.edit_budget >= 0, "attack.edit_budget", f"is {a.edit_budget}; must be >= 0 (0: no budget)")
    require(all(t > 0 for t in a.compute_targets), "attack.compute_targets",
            f"is {list(a.compute_targets)}; every target must be > 0 (nats above control)")
    require(2 <= a.curve_points <= 24, "attack.curve_points", f"is {a.curve_points}; must be 2 to 24")
    # random_search exists to be compared with the gradient searches at equal forward passes
    require(a.budget == "auto" or a.budget > 0 or "random_search" not in attacks, "attack.budget",
            "must be set (> 0 or \"auto\") when attacks lists \"random_search\": it is compared with uat and gcg "
            "at equal forward passes, which only a budget gives")
    # so is random_flips with hotflip, per example
    require(a.edit_budget > 0 or "random_flips" not in attacks, "attack.edit_budget",
            "must be set (> 0) when attacks lists \"random_flips\": it is compared with hotflip at equal "
            "forward passes per example, which only a budget gives")
    require(all(t > 0 for t in a.thresholds), "attack.thresholds", "must all be positive")
    one_of(a.search_precision, ("auto", "bf16", "fp32"), "attack.search_precision")
    require(len(a.tokens) > 0, "attack.tokens", "is empty: name at least one threat model (\"round_trip\", "
            "\"printable\")")
    for i, tokens in enumerate(a.tokens):
        one_of(tokens, THREAT_MODELS, f"attack.tokens[{i}]")
    require(len(set(a.tokens)) == len(a.tokens), "attack.tokens", f"lists a threat model twice: {list(a.tokens)}")
    _check_ceilings(a, attacks)


def _check_ceilings(a, attacks):
    """attack.budget, and every trigger search's restarts and steps, at most their ceiling (constants);
    and no budget so large that a search listed in `attacks` would need more restarts than that."""
    which, budget = ("attack.max_budget", a.max_budget) if a.budget == "auto" else ("attack.budget", a.budget)
    require(budget <= BUDGET_CEILING, which, f"is {budget}; allowed: at most {BUDGET_CEILING} forward passes per search")
    require(a.edit_budget <= BUDGET_CEILING, "attack.edit_budget",
            f"is {a.edit_budget}; allowed: at most {BUDGET_CEILING} forward passes per example")
    for name, params in sorted(a.params.items()):
        for key, ceiling in (("restarts", RESTART_CEILING), ("steps", STEP_CEILING)):
            value = getattr(params, key, None)
            require(value is None or value <= ceiling, f"attack.{name}.{key}",
                    f"is {value}; allowed: at most {ceiling}")
        most = getattr(params, "restart_passes", None)
        if budget and name in attacks and most is not None:
            per = most(min(params.opt_examples or a.examples, a.examples))  # attack_opt holds attack.examples
            require(budget <= RESTART_CEILING * per, which,
                    f"is {budget}: {name} would need more than {RESTART_CEILING} restarts to spend it (one restart "
                    f"spends at most {per} forward passes here); lower it, or raise attack.{name}.steps")


def _check_resources(r):
    for name in ("gpu", "cpu", "memory", "retries", "disk", "train_shared_memory"):
        require(getattr(r, name) >= 0, f"resources.{name}", "must be >= 0")
    for name in ("gpu", "cpu", "memory"):
        require(getattr(r, f"train_{name}") >= 0, f"resources.train_{name}",
                f"must be >= 0 (leave it out for the same as resources.{name})")
    # evaluation and attacks run in one process on one device: more GPUs would sit idle
    require(r.gpu <= 1, "resources.gpu", f"is {r.gpu}: evaluation and attacks use one GPU; ask for several "
            "in the training steps with resources.train_gpu (see docs/cluster.md, 'Past one GPU')")
    gpu_type(r.gpu_type)


GPU_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A Slurm gres type as gres.conf names it (a100, h100_80gb, tesla-v100): ':' and ',' separate
gres fields, so neither they, spaces nor quotes may appear."""


def gpu_type(value: str):
    """resources.gpu_type is "" or a Slurm gres type (GPU_TYPE); raises ConfigError naming it."""
    require(value == "" or GPU_TYPE.fullmatch(value) is not None, "resources.gpu_type",
            f"is {value!r}: a Slurm GPU type as the cluster names it (letters, digits, '_', '.', '-'; "
            f"e.g. \"a100\", as in `sinfo -o %G`: gpu:a100:4), or \"\" for any GPU")


def _check_parallel(p, r, train):
    one_of(p.strategy, ("ddp", "fsdp"), "parallel.strategy")
    require(p.processes >= 0, "parallel.processes", "must be >= 0 (0: one per visible GPU)")
    require(p.timeout_minutes >= 1, "parallel.timeout_minutes", "must be >= 1")
    require(p.processes in (0, r.train_gpu) or r.train_gpu == 0, "parallel.processes",
            f"is {p.processes} but the training steps ask for {r.train_gpu} GPUs: one process per GPU (or 0)")
    if p.processes > 1:
        require(train.batch_size % p.processes == 0, "train.batch_size",
                f"is {train.batch_size}: the global micro-batch is split evenly over "
                f"{p.processes} processes (parallel.processes), so it must be a multiple of it")


def context_fits(cfg, max_position: int):
    """Blocks and attack windows (context, continuation and the longest prefix an attack
    prepends: its config's `prefix_len`) fit the model's context of `max_position` tokens."""
    require(cfg.data.block_len <= max_position, "data.block_len",
            f"is {cfg.data.block_len}, above the model's context of {max_position} tokens")
    a = cfg.attack
    longest = a.context_len + a.continuation_len + max((p.prefix_len for p in a.params.values()), default=0)
    require(longest <= max_position, "attack.context_len",
            f"+ continuation_len + trigger length is {longest}, above the model's context of {max_position}")


def moving_revisions(cfg) -> list[str]:
    """One warning line per hub revision of the profile (model.revision, data.revision) that is a
    branch or tag, not a commit: it may point elsewhere by the time a second lab repeats the run.
    Not an error: the run records the commit it reads (`sources`), and monollm.experiments.pin
    writes it back into a copy of the profile. Local folders have no revisions: nothing to say."""
    asked = (("model.revision", cfg.model.source == "hub" and not os.path.isdir(cfg.model.name), cfg.model.revision),
             ("data.revision", cfg.data.source == "hub" and not os.path.exists(cfg.data.path), cfg.data.revision))
    return [f"warning: {key} {revision or 'main'!r} is a branch or tag, not a commit: the run records the commit it "
            f"reads; pin it with python -m monollm.experiments.pin RUN PROFILE OUT.toml (docs/results.md)"
            for key, hub, revision in asked if hub and not re.fullmatch(COMMIT_PATTERN, revision or "")]


def model_type_if_known(m) -> str:
    """The `model_type` of model.name's config.json when it can be read without a download: a
    local folder, or a hub id whose config is in the hub cache (at model.revision); "" otherwise
    (then `make_monotonic` checks the variant once the model is loaded). m: ModelConfig."""
    import json

    if m.source == "build":
        return ""
    path = os.path.join(m.name, "config.json")
    if not os.path.isdir(m.name):
        import huggingface_hub

        cached = huggingface_hub.try_to_load_from_cache(m.name, "config.json", revision=m.revision or None)
        path = cached if isinstance(cached, str) else ""
    try:
        with open(path) as f:
            return str(json.load(f).get("model_type", ""))
    except (OSError, ValueError):
        return ""


GATED_OWNERS = ("meta-llama",)
"""Hub owners whose models are gated: downloading one needs a token of an account that accepted its licence."""


def gated_access(m):
    """A gated hub model (GATED_OWNERS) is reachable: a token is given (HF_TOKEN, or a stored
    `hf auth login`), or the run is offline (HF_HUB_OFFLINE) with the model in the hub cache, or
    model.name is a local folder. Else raises ConfigError naming model.name, in `start`, before any
    job is queued: without it, `setup` would fail on the hub's refusal after its step started."""
    owner = m.name.split("/")[0] if "/" in m.name else ""
    if m.source != "hub" or owner not in GATED_OWNERS or os.path.isdir(m.name):
        return
    from huggingface_hub import get_token, try_to_load_from_cache

    if os.environ.get("HF_TOKEN") or get_token():
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    cached = try_to_load_from_cache(m.name, "config.json", revision=m.revision or None)
    require(offline and isinstance(cached, str), "model.name",
            f"is {m.name!r}, a gated hub model, and HF_TOKEN is not set: give the run a token of an account "
            f"that accepted the model's licence on the hub (HF_TOKEN; docs/cluster.md, section 3), or point "
            f"model.name at a local mirror (a folder), or run offline (HF_HUB_OFFLINE=1) with the model in the "
            f"hub cache")
