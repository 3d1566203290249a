"""Experiment configuration: frozen dataclasses loaded from a profile's TOML.

`load(dict) -> ExperimentConfig` checks every key and value and raises
`ConfigError` naming the key and the allowed values, so that a bad profile
fails in the flow's `start` step before any model work. Fields carry their
documentation as attribute docstrings.

This module imports neither torch nor Metaflow (the flow's decorators call `step_resources`
while Metaflow parses the command line); modules that need them are imported where used.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field

DEFAULT_FLOOR = 1e-4
"""Default init floor of the constraint (monotonic.floor)."""
MAX_SEED = 2 ** 32 - 1
"""Largest seed: 32 bits, the range every numpy seeding API accepts (np.random.seed and RandomState
take no more), so that one seed can be handed to any library unchanged."""


class ConfigError(ValueError):
    """A profile that cannot run; the message names the key and what is allowed."""


@dataclass(frozen=True)
class BuildConfig:
    """Architecture of the small GPT-NeoX built (and pretrained) when model.source = "build"."""
    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = 256
    """MLP width (the constrained matrices are hidden x intermediate)."""
    vocab_size: int = 512
    """Size of the byte-level BPE vocabulary trained on the corpus."""
    max_position: int = 128
    """Longest context the model accepts."""


@dataclass(frozen=True)
class ModelConfig:
    """Where the foundation model (`reference`) comes from."""
    source: str = "build"
    """"build" (a small GPT-NeoX built from [model.build] and pretrained on the corpus),
    "hub" (a Hugging Face hub id in `name`) or "local" (a save_pretrained directory in `name`)."""
    name: str = ""
    """Hub id or local directory; unused for "build"."""
    revision: str = "main"
    """Hub revision (branch, tag or commit) for source = "hub"; unused otherwise. The commit it
    resolved to is recorded in the run (`sources`)."""
    attn_implementation: str = "sdpa"
    """Attention kernel of every loaded model: "sdpa" (PyTorch scaled_dot_product_attention,
    flash/memory-efficient kernels on GPU) or "eager" (the reference implementation)."""
    build: BuildConfig = field(default_factory=BuildConfig)
    """Architecture for source = "build"."""


@dataclass(frozen=True)
class DataConfig:
    """Documents and their deterministic, document-level disjoint splits."""
    source: str = "builtin"
    """"builtin" (the offline generated corpus), "local" (files read through `datasets`)
    or "hub" (a hub dataset streamed through `datasets`)."""
    path: str = ""
    """Local file, glob or directory ("local"), or hub dataset id ("hub")."""
    name: str = ""
    """Hub dataset configuration name, if any."""
    revision: str = "main"
    """Hub revision (branch, tag or commit) of the dataset repository, for source = "hub";
    unused otherwise. A branch moves when the repository changes: a paper run pins a commit."""
    split: str = "train"
    """Split of the source dataset that training documents come from (and, unless the
    `*_from` keys below say otherwise, the held-out splits too)."""
    test_from: str = ""
    """Where `test` documents come from: "" (the training source, split off by document) or
    held-out text: for "hub", a file pattern inside the dataset's repository (e.g.
    "test.jsonl.zst") or a split name it declares (e.g. "test"); for "local", a file or glob
    (e.g. ".../test.jsonl.zst"). Pythia was pretrained on the Pile's train split."""
    attack_opt_from: str = ""
    """Where `attack_opt` documents come from, as `test_from`. Splits that name the same
    source are drawn from it disjointly (test first, then attack_opt, then val)."""
    val_from: str = ""
    """Where `val` documents come from, as `test_from`."""
    text_field: str = "text"
    """Column holding the document text."""
    builtin_docs: int = 3000
    """Number of documents generated for source = "builtin"."""
    val_docs: int = 100
    """Documents held out for validation loss during training."""
    attack_opt_docs: int = 100
    """Documents on which universal triggers are optimized."""
    test_docs: int = 200
    """Documents for perplexity and all attack evaluation."""
    max_train_docs: int = 0
    """Cap on training documents (0: all that remain after the held-out splits)."""
    shuffle_buffer: int = 10000
    """Buffer of the seeded shuffle applied before splitting (streams are never read whole)."""
    block_len: int = 64
    """Tokens per packed block, for training and perplexity."""


@dataclass(frozen=True)
class TrainConfig:
    """Recovery training (also used, as [pretrain], for the built model's pretraining)."""
    tokens: int = 200_000
    """Token budget: optimizer steps = tokens // (batch_size * grad_accum * block_len)."""
    batch_size: int = 16
    """Blocks per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    warmup_frac: float = 0.1
    """Fraction of the steps spent in linear warmup."""
    schedule: str = "cosine"
    """Decay after warmup: "cosine", "linear" or "constant"."""
    min_lr_frac: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.01
    """AdamW decay on matrices; never on constraint parameters V, biases or norms."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    compile: bool = False
    """Run the training forward/backward through torch.compile (GPU speed; first step pays the compile)."""
    eval_every: int = 0
    """Validation loss every N optimizer steps (0: only at the end)."""
    val_blocks: int = 32
    """Validation blocks per evaluation."""
    log_every: int = 10
    """Progress line every N optimizer steps."""
    checkpoint_every: int = 0
    """Mid-training checkpoint every N optimizer steps (0: none)."""
    keep_checkpoints: int = 2
    """Mid-training checkpoints kept stored per training task (>= 1): each older one is deleted
    from the datastore once a newer one is stored (one at paper scale is ~17 GB)."""
    monotonic_lr: float = 0.0
    """Per-arm override of lr for the monotonic arm (0: same as baseline); reported."""
    monotonic_warmup_frac: float = -1.0
    """Per-arm override of warmup_frac for the monotonic arm (-1: same); reported."""


@dataclass(frozen=True)
class MonotonicConfig:
    """The non-negativity constraint W = softplus(V)."""
    variant: str = "mlp_both"
    """Which matrices are constrained; resolved per architecture (see monollm.monotonic)."""
    floor: float = DEFAULT_FLOOR
    """Init floor: V = softplus^-1(max(|W|, floor))."""


@dataclass(frozen=True)
class DownstreamConfig:
    """Downstream tasks through lm-evaluation-harness, for all four models, in one foreach branch
    beside the attacks (monollm.downstream)."""
    tasks: tuple[str, ...] = ()
    """Tasks: "corpus_cloze" and "corpus_choice" (generated from the built-in corpus at run time,
    offline), lm-eval tasks read from the hub ("lambada_openai", "hellaswag", "piqa", "arc_easy",
    "winogrande"), or the path of an lm-eval task YAML file. Empty: no downstream branch."""
    limit: int = 0
    """Items per task: the first `limit` of its evaluation split (0: all)."""


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity on the test blocks."""
    batch_size: int = 32
    """Blocks per forward pass."""
    max_blocks: int = 0
    """Cap on test blocks (0: all)."""
    bootstrap: int = 2000
    """Bootstrap resamples for confidence intervals."""
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    """[eval.downstream]: tasks through lm-evaluation-harness (batch_size and bootstrap above apply)."""


@dataclass(frozen=True)
class AttackConfig:
    """Settings shared by every attack; each attack's own table is [attack.<name>]."""
    examples: int = 64
    """Test examples (context + continuation windows) attacked."""
    context_len: int = 32
    """Context tokens of an example (an attack may only perturb these or prepend)."""
    continuation_len: int = 16
    """Continuation tokens: the only tokens ever scored."""
    batch_size: int = 64
    """Sequences per scoring forward pass."""
    thresholds: tuple[float, ...] = (0.5, 1.0, 2.0)
    """dNLL thresholds (nats/token) for success rates."""
    search_precision: str = "auto"
    """Precision of the attacks' searches (gradients and candidate re-scoring): "bf16" (autocast),
    "fp32", or "auto" (bf16 on CUDA, fp32 elsewhere). Every reported clean and attacked NLL is
    scored in fp32 whatever this says."""
    params: dict = field(default_factory=dict)
    """Per-attack configs, filled from [attack.<name>] tables by the attack registry."""


@dataclass(frozen=True)
class ParallelConfig:
    """Recovery training over several processes in one step, one per GPU (torchrun inside the step)."""
    strategy: str = "ddp"
    """"ddp": every process holds the whole model and gradients are averaged; "fsdp": parameters,
    gradients and optimizer state are sharded over the processes (models too large for one GPU)."""
    processes: int = 0
    """Training processes of a training step; 0: one per visible GPU (one on CPU). Above 1 on CPU,
    the processes talk over gloo (how the tests run it)."""
    timeout_minutes: int = 60
    """How long a training process waits in a collective (all-reduce, barrier) before the process
    group gives up: torch.distributed.init_process_group(timeout=...). torch's default (10 minutes
    under NCCL) is shorter than writing a large sharded checkpoint can take."""


@dataclass(frozen=True)
class ResourcesConfig:
    """What each model step asks of a remote backend (@resources)."""
    gpu: int = 0
    """GPUs per model step (0 or 1: evaluation and attacks use one)."""
    train_gpu: int = -1
    """GPUs of the two training steps (-1: same as gpu); above 1, see [parallel]."""
    train_cpu: int = -1
    """CPUs of the two training steps (-1: same as cpu)."""
    train_memory: int = -1
    """Memory of the two training steps, MB (-1: same as memory)."""
    train_shared_memory: int = 0
    """/dev/shm of the two training steps, MiB (0: the backend's default, 64 MiB on Kubernetes,
    too small for NCCL between several GPUs)."""
    cpu: int = 2
    """CPUs per model step."""
    memory: int = 8000
    """Memory per model step, MB."""
    disk: int = 10240
    """Local disk per model step, MB (Kubernetes ephemeral storage): model files, checkpoints, caches."""
    retries: int = 0
    """@retry attempts of the training steps; a retried task continues from its last checkpoint."""


@dataclass(frozen=True)
class ExperimentConfig:
    """One run of the experiment."""
    name: str = "tiny"
    """Profile name (runs are tagged with it)."""
    seed: int = 0
    """Seed of splits, init, batch order and attacks; one run = one seed. In 0 .. 2**32-1
    (MAX_SEED), the range numpy's seeding accepts."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu" or "cuda"."""
    threads: int = 0
    """torch CPU threads per step (0: torch's default)."""
    attacks: tuple[str, ...] = ("random",)
    """Attack types, one foreach branch each."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    """Pretraining of a built model (model.source = "build" only)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    monotonic: MonotonicConfig = field(default_factory=MonotonicConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


def _build(cls, raw: dict, where: str):
    """Construct dataclass `cls` from `raw`, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where or 'config'}' must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "params"]
    extra = {k: v for k, v in raw.items() if k not in names}
    if extra and cls is not AttackConfig:
        raise ConfigError(f"unknown key '{_join(where, sorted(extra)[0])}' (allowed: {', '.join(names)})")
    kwargs = {n: _coerce(hints[n], raw[n], _join(where, n)) for n in names if n in raw}
    if cls is AttackConfig:
        kwargs["params"] = extra  # [attack.<name>] tables, checked against the registry in load()
    return cls(**kwargs)


def _coerce(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _require(ok: bool, key: str, message: str):
    if not ok:
        raise ConfigError(f"'{key}' {message}")


def _one_of(value, allowed, key: str):
    _require(value in allowed, key, f"is {value!r}; allowed: {', '.join(map(str, allowed))}")


def _check_train(t: TrainConfig, key: str):
    for name in ("tokens", "batch_size", "grad_accum"):
        _require(getattr(t, name) > 0, f"{key}.{name}", "must be positive")
    _require(t.lr > 0, f"{key}.lr", "must be positive")
    _require(0 <= t.warmup_frac < 1, f"{key}.warmup_frac", "must be in [0, 1)")
    _one_of(t.schedule, ("cosine", "linear", "constant"), f"{key}.schedule")
    _require(0 <= t.min_lr_frac <= 1, f"{key}.min_lr_frac", "must be in [0, 1]")
    _require(t.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
    _require(t.max_grad_norm > 0, f"{key}.max_grad_norm", "must be positive")
    for name in ("eval_every", "val_blocks", "log_every", "checkpoint_every"):
        _require(getattr(t, name) >= 0, f"{key}.{name}", "must be >= 0")
    _require(t.keep_checkpoints >= 1, f"{key}.keep_checkpoints", "must be >= 1 (the newest checkpoint is always kept)")
    _require(t.monotonic_lr >= 0, f"{key}.monotonic_lr", "must be >= 0 (0: same as lr)")
    _require(t.monotonic_warmup_frac == -1 or 0 <= t.monotonic_warmup_frac < 1,
             f"{key}.monotonic_warmup_frac", "must be in [0, 1), or -1 for the same as warmup_frac")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check values that types alone cannot; returns cfg or raises ConfigError."""
    from monollm.attacks import ATTACKS
    from monollm.monotonic import ALL_VARIANTS

    _require(0 <= cfg.seed <= MAX_SEED, "seed", f"is {cfg.seed}; allowed: 0 .. 2**32-1 ({MAX_SEED}), "
             f"the range numpy's seeding accepts (np.random.seed takes no more)")
    _one_of(cfg.device, ("auto", "cpu", "cuda"), "device")
    _require(cfg.threads >= 0, "threads", "must be >= 0")
    _require(len(cfg.attacks) > 0, "attacks", f"must name at least one of: {', '.join(ATTACKS)}")
    for name in cfg.attacks:
        _one_of(name, tuple(ATTACKS), "attacks")
    _require(len(set(cfg.attacks)) == len(cfg.attacks), "attacks", "lists an attack twice")
    m = cfg.model
    _one_of(m.source, ("build", "hub", "local"), "model.source")
    _one_of(m.attn_implementation, ("sdpa", "eager"), "model.attn_implementation")
    if m.source == "build":
        b = m.build
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
            _require(getattr(b, name) > 0, f"model.build.{name}", "must be positive")
        _require(b.hidden_size % b.num_heads == 0, "model.build.num_heads", "must divide hidden_size")
        _require(b.vocab_size >= 300, "model.build.vocab_size", "must be >= 300 (256 bytes + merges)")
        _check_train(cfg.pretrain, "pretrain")
    else:
        _require(bool(m.name), "model.name", f"is required for model.source = {m.source!r}")
        if m.source == "local":
            _require(os.path.isdir(m.name), "model.name", f"is not a directory: {m.name!r}")
    d = cfg.data
    _one_of(d.source, ("builtin", "local", "hub"), "data.source")
    if d.source != "builtin":
        _require(bool(d.path), "data.path", f"is required for data.source = {d.source!r}")
    if d.source == "local":
        from monollm.data import local_files

        local_files(d.path)  # raises ConfigError naming the path
    for split in ("test", "attack_opt", "val"):
        held = getattr(d, f"{split}_from")
        _require(not held or d.source != "builtin", f"data.{split}_from",
                 "applies to data.source = \"local\" or \"hub\" (the built-in corpus has one source)")
        if held and d.source == "local":
            local_files(held, f"data.{split}_from")
    for name in ("val_docs", "attack_opt_docs", "test_docs", "block_len", "shuffle_buffer", "builtin_docs"):
        _require(getattr(d, name) > 0, f"data.{name}", "must be positive")
    _require(d.max_train_docs >= 0, "data.max_train_docs", "must be >= 0")
    _require(d.block_len >= 2, "data.block_len", "must be at least 2")
    _check_train(cfg.train, "train")
    _one_of(cfg.monotonic.variant, ALL_VARIANTS, "monotonic.variant")
    _require(0 < cfg.monotonic.floor < 1, "monotonic.floor", "must be in (0, 1)")
    e = cfg.eval
    _require(e.batch_size > 0, "eval.batch_size", "must be positive")
    _require(e.max_blocks >= 0, "eval.max_blocks", "must be >= 0")
    _require(e.bootstrap >= 100, "eval.bootstrap", "must be >= 100")
    from monollm.downstream import check as check_downstream

    check_downstream(e.downstream)  # task names and files, naming eval.downstream.tasks[i]
    a = cfg.attack
    for name in ("examples", "context_len", "continuation_len", "batch_size"):
        _require(getattr(a, name) > 0, f"attack.{name}", "must be positive")
    _require(all(t > 0 for t in a.thresholds), "attack.thresholds", "must all be positive")
    _one_of(a.search_precision, ("auto", "bf16", "fp32"), "attack.search_precision")
    r = cfg.resources
    for name in ("gpu", "cpu", "memory", "retries", "disk", "train_shared_memory"):
        _require(getattr(r, name) >= 0, f"resources.{name}", "must be >= 0")
    for name in ("gpu", "cpu", "memory"):
        _require(getattr(r, f"train_{name}") >= -1, f"resources.train_{name}",
                 f"must be >= 0 (or -1: same as resources.{name})")
    # evaluation and attacks run in one process on one device: more GPUs would sit idle
    _require(r.gpu <= 1, "resources.gpu", f"is {r.gpu}: evaluation and attacks use one GPU; ask for several "
             "in the training steps with resources.train_gpu (see docs/cluster.md, 'Past one GPU')")
    p = cfg.parallel
    _one_of(p.strategy, ("ddp", "fsdp"), "parallel.strategy")
    _require(p.processes >= 0, "parallel.processes", "must be >= 0 (0: one per visible GPU)")
    _require(p.timeout_minutes >= 1, "parallel.timeout_minutes", "must be >= 1")
    gpus = r.gpu if r.train_gpu < 0 else r.train_gpu
    _require(p.processes in (0, gpus) or gpus == 0, "parallel.processes",
             f"is {p.processes} but the training steps ask for {gpus} GPUs: one process per GPU (or 0)")
    if p.processes > 1:
        _require(cfg.train.batch_size % p.processes == 0, "train.batch_size",
                 f"is {cfg.train.batch_size}: the global micro-batch is split evenly over "
                 f"{p.processes} processes (parallel.processes), so it must be a multiple of it")
    return cfg


def load(raw: dict, seed: int | None = None) -> ExperimentConfig:
    """Build and validate a config from a parsed profile; `seed` overrides the profile's."""
    raw = dict(raw)
    if seed is not None:
        raw["seed"] = seed
    built = _build(ExperimentConfig, raw, "")
    for name in built.attacks:  # before from_dict, which looks each name up in the registry
        _one_of(name, _attack_names(), "attacks")
    params = built.attack.params
    unknown = sorted(set(params) - set(_attack_names()))
    if unknown:
        settings = ", ".join(f.name for f in dataclasses.fields(AttackConfig) if f.name != "params")
        raise ConfigError(f"unknown key 'attack.{unknown[0]}' (attack settings are {settings}, "
                          f"or a table named after an attack: {', '.join(_attack_names())})")
    return validate(from_dict(raw))


def step_resources(raw: dict, train: bool = False, step: str = "") -> dict:
    """What a model step (`train`: one of the two training steps) asks of a remote backend, read
    from a parsed profile (the flow's `config`) with every [resources] default applied; the
    flow's @resources and @retry take these values, so a key (or the whole table) may be absent.

    Returns {"gpu", "cpu", "memory", "disk", "retries", "shared_memory"}: in a training step each
    `train_<key>` set (not -1) replaces `<key>`; shared_memory (MiB) is train_shared_memory in a
    training step, None otherwise or when 0 (the backend's default). Steps that use no GPU ask for
    none: `step = "setup"` unless it pretrains a built model (a hub or local model is only loaded
    and saved), and `step = "cpu"` (make_monotonic). Raises ConfigError like `load`.
    """
    r = _build(ResourcesConfig, raw.get("resources", {}), "resources")
    out = {"gpu": r.gpu, "cpu": r.cpu, "memory": r.memory, "disk": r.disk, "retries": r.retries,
           "shared_memory": None}
    if train:
        out.update({key: getattr(r, f"train_{key}") for key in ("gpu", "cpu", "memory")
                    if getattr(r, f"train_{key}") != -1})
        out["shared_memory"] = r.train_shared_memory or None
    model = raw.get("model", {})
    source = model.get("source", ModelConfig.source) if isinstance(model, dict) else ModelConfig.source
    if step == "cpu" or (step == "setup" and source != "build"):
        out["gpu"] = 0
    return out


def _attack_names():
    from monollm.attacks import ATTACKS

    return tuple(ATTACKS)


def load_file(path: str, seed: int | None = None) -> ExperimentConfig:
    """Parse a TOML profile and load it."""
    with open(path, "rb") as f:
        return load(tomllib.load(f), seed=seed)


def to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict shaped like the TOML profile (attack tables under `attack`);
    `from_dict(to_dict(cfg)) == cfg`."""
    out = dataclasses.asdict(cfg)
    params = out["attack"].pop("params")
    out["attack"].update(params)
    return out


def from_dict(raw: dict) -> ExperimentConfig:
    """Rebuild a config that `load` already validated (e.g. the `cfg` artifact in a later step),
    without re-checking paths that only exist where the run started."""
    from monollm.attacks import attack_config

    cfg = _build(ExperimentConfig, raw, "")
    # every [attack.<name>] table is checked, also for attacks the profile does not run now
    names = list(cfg.attacks) + [n for n in cfg.attack.params if n not in cfg.attacks]
    built = {name: attack_config(name, cfg.attack.params.get(name, {}), f"attack.{name}") for name in names}
    return dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, params=built))


def block_limit(cfg: ExperimentConfig, max_position: int):
    """Raise if blocks or attack windows do not fit the model's context."""
    _require(cfg.data.block_len <= max_position, "data.block_len",
             f"is {cfg.data.block_len}, above the model's context of {max_position} tokens")
    a = cfg.attack
    longest = a.context_len + a.continuation_len + max(
        (getattr(p, "trigger_len", 0) for p in a.params.values()), default=0)
    _require(longest <= max_position, "attack.context_len",
             f"+ continuation_len + trigger length is {longest}, above the model's context of {max_position}")
