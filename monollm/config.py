# long: the schema, one frozen dataclass per profile table with a docstring per field
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
import tomllib
from dataclasses import dataclass, field
from typing import ClassVar

from monollm import checks
from monollm.constants import DEFAULT_FLOOR, MAX_SEED
from monollm.errors import ConfigError
from monollm.model.layers import layer_indices
from monollm.schema import build

__all__ = ["ConfigError", "DEFAULT_FLOOR", "MAX_SEED", "ExperimentConfig", "load", "load_file", "from_dict",
           "to_dict", "step_resources", "block_limit", "layer_limit"]


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
    contamination_ngram: int = 13
    """n of the n-gram overlap measured in setup: a held-out window (attack window or block) is
    contaminated when a run of n consecutive token ids in it also occurs in the training blocks
    (the `contamination` artifact, shown on the card; docs/method.md). At most an attack window's
    length (attack.context_len + attack.continuation_len)."""
    decontaminate: bool = False
    """Replace every contaminated attack window of test and attack_opt by the next clean window of
    the same split, so that attack.examples stay as configured; setup stops, saying how many were
    contaminated, when a split has too few clean windows. Blocks are measured, never dropped."""


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
    monotonic_lr: float | None = None
    """Per-arm override of lr for the monotonic arm; left out, the same as `lr` (a loaded config
    holds the resolved value). An arm difference the findings report first."""
    monotonic_warmup_frac: float | None = None
    """Per-arm override of warmup_frac for the monotonic arm; left out, the same as `warmup_frac`
    (a loaded config holds the resolved value)."""

    def __post_init__(self):
        # resolved once, here: every reader (steps, card, findings, compare) sees concrete values
        if self.monotonic_lr is None:
            object.__setattr__(self, "monotonic_lr", self.lr)
        if self.monotonic_warmup_frac is None:
            object.__setattr__(self, "monotonic_warmup_frac", self.warmup_frac)


@dataclass(frozen=True)
class MonotonicConfig:
    """The constraint on the selected matrices (W = softplus(V) in the default mode) and its
    attribution controls; docs/method.md says what each mode holds fixed."""
    variant: str = "mlp_both"
    """Which matrices are constrained; resolved per architecture (see monollm.model.monotonic)."""
    floor: float = DEFAULT_FLOOR
    """Init floor: V = softplus^-1(max(|W|, floor))."""
    mode: str = "nonneg"
    """"nonneg" (W = softplus(V) >= 0, the constraint), "sign_frozen" (W = sign(W0) * softplus(V):
    the reference's sign pattern frozen, magnitudes free; no change of the weights at init) or
    "abs_init_free" (W = V from the constraint's start, max(|W0|, floor) with init "abs": the
    constraint's change of the weights at init, no constraint afterwards)."""
    layers: str = "all"
    """Which transformer layers the variant's matrices are taken from: "all", "top:K" (the last
    K layers), "bottom:K" (the first K) or indices "0,3,5" (0 = the layer next to the
    embeddings). Resolved against the model's number of layers when it is known."""
    init: str = "abs"
    """Where the constrained weights start: "abs" (max(|W0|, floor): every weight keeps its
    magnitude, negative ones flip sign) or "clip" (max(W0, floor): the nearest matrix >= floor to
    W0, negative weights drop to the floor). Only for the modes that change the weights at init
    (nonneg, abs_init_free); docs/method.md has both measured."""
    activation: str = "keep"
    """The MLP activation of both arms: "keep" (the model's) or "relu" (swapped into the
    reference model in `setup`, so every model has it and the reference shows what it costs)."""


@dataclass(frozen=True)
class DownstreamConfig:
    """Downstream tasks through lm-evaluation-harness, for all four models, in one foreach branch
    beside the attacks (monollm.evaluation.downstream)."""
    tasks: tuple[str, ...] = ()
    """Tasks: "corpus_cloze" and "corpus_choice" (generated from the built-in corpus at run time,
    offline), lm-eval tasks read from the hub ("lambada_openai", "hellaswag", "piqa", "arc_easy",
    "winogrande"), or the path of an lm-eval task YAML file. Empty: no downstream branch."""
    limit: int = 0
    """Items per task: the first `limit` of its evaluation split (0: all)."""


@dataclass(frozen=True)
class OrderConfig:
    """Order preservation (monollm.evaluation.order): probe directions per layer on ordered text pairs, for
    all four models, in one foreach branch beside the attacks."""
    enabled: bool = False
    """Measure it (a branch named "order")."""
    chains: str = "auto"
    """"english" (hub models), "builtin" (the built-in corpus's words), "auto" (builtin for a built
    model, english otherwise), the path of a .jsonl file of chains or of a .json pairs file of the
    published format, whose own fit / eval split is used when it has one
    (monollm.evaluation.order_chains)."""
    method: str = "published"
    """"published": `directions` probe directions pooled over every axis, each a logistic
    regression with intercept on a bootstrap sample of the fit pairs' standardized pooled states
    (stronger texts 1, weaker 0), pairs split by chain; a held-out pair scores the share of
    directions along which the stronger text scores at least as high (to 1e-6). "per_axis": one
    probe per axis on stronger-minus-weaker differences, every pair checked against every axis'
    direction, pairs split by topic. docs/method.md#order-preservation defines both exactly."""
    pooling: tuple[str, ...] = ("last", "mean")
    """Poolings of each layer's hidden states: "last" (the last token; primary), "mean" (a check)."""
    fit_fraction: float | None = None
    """Share of the chains (published) or topics (per_axis) whose pairs fit the probes; the others'
    pairs are checked. Left out, 0.7 (published) or 0.5 (per_axis) (a loaded config holds the
    resolved value); unused when the chains file has its own split."""
    split_seed: int = 42
    """Seed of the published method's chain split and of its directions' bootstrap samples
    (per_axis splits the topics with the run's `seed`)."""
    directions: int = 64
    """Probe directions of the published method, each fit on its own bootstrap sample."""
    probe_c: float = 1.0
    """Inverse L2 strength of the per_axis method's probes."""
    batch_size: int = 32
    """Texts per forward pass."""

    def __post_init__(self):
        if self.fit_fraction is None:  # resolved once, here (see TrainConfig)
            object.__setattr__(self, "fit_fraction", 0.5 if self.method == "per_axis" else 0.7)


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
    order: OrderConfig = field(default_factory=OrderConfig)
    """[eval.order]: order preservation (bootstrap above applies)."""


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
    tokens: tuple[str, ...] = ("round_trip",)
    """Which tokens an attack may insert (the threat model): "round_trip", every token but special
    ones and padding rows whose text encodes back to itself, control bytes included; "printable",
    of those only the ones whose text is printable (newline and tab allowed). One, or a list: every
    attack then runs under each, the first as branch `<attack>`, the others as `<attack>@<tokens>`,
    and the worst case is reported per threat model."""
    budget: int | str = 0
    """Forward passes (sequences through the model, gradient passes included) that every
    universal-trigger search (uat, gcg, random_search) spends against each model: restarts run
    until it is spent (their `restarts` is then ignored), so that every search and both models
    get the same compute, to within one step. 0: no budget, each search runs its own restarts
    and steps. "auto": each search doubles its passes from `auto_start` until the last doubling
    no longer raises the damage on its optimisation examples (a paired bootstrap CI that reaches
    0), or up to `max_budget`; then every model's search is brought up to the largest budget any
    reached (monollm.attacks.budgets). Required (> 0 or "auto") when `attacks` lists random_search.
    At most 10**9 (BUDGET_CEILING), and at most what 10000 restarts (RESTART_CEILING) of each listed
    search can spend: `start` refuses more, as it refuses any search's `restarts` above 10000 or
    `steps` above 100000."""
    max_budget: int = 0
    """With budget = "auto": the most forward passes a search may spend against one model (the cap)."""
    auto_start: int | None = None
    """With budget = "auto": the forward passes of the first stage, before the first doubling; left
    out, max_budget // 16 (four doublings to the cap)."""
    edit_budget: int = 0
    """Forward passes that every per-input search (hotflip, random_flips) spends on each example
    against each model, gradient passes included: a search that finds no better flip among its
    candidates widens to the next ones instead of stopping, so that both models get the same compute
    per example (monollm.attacks.flip_budget), and records a budget curve. 0: no budget, each search
    stops at its flip budget or when no flip helps, and has no curve. Required (> 0) when `attacks`
    lists random_flips."""
    compute_targets: tuple[float, ...] = ()
    """Damage levels (nats per continuation token above control) at which the attacker's compute
    multiplier is read: the forward passes each model's worst case needs to reach each level
    (docs/method.md, "Robustness as attack compute"). Empty: 1/4 and 1/2 of the final damage of the
    model damaged more, which that model reaches within the budget by construction."""
    curve_points: int = 8
    """Points of every search's budget curve: the best-so-far perturbation at fractions
    2**-(curve_points - 1), ..., 1/4, 1/2, 1 of its forward passes (log-spaced, so that the last
    step is a doubling), scored on the test examples on every model."""
    params: dict = field(default_factory=dict)
    """Per-attack configs, filled from [attack.<name>] tables by the attack registry."""
    EXTRA_TABLES: ClassVar[str] = "params"
    """The profile's [attack.<name>] tables are collected into `params` (schema.build)."""
    ONE_OR_MANY: ClassVar[tuple] = ("tokens",)
    """`tokens = "printable"` reads as `tokens = ["printable"]` (schema.build)."""

    def __post_init__(self):
        if self.auto_start is None:  # resolved here, so that the run's resolved_config shows the value used
            object.__setattr__(self, "auto_start", self.max_budget // 16)


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
    train_gpu: int | None = None
    """GPUs of the two training steps; left out, the same as `gpu` (a loaded config holds the
    resolved value). Above 1, see [parallel]."""
    train_cpu: int | None = None
    """CPUs of the two training steps; left out, the same as `cpu`."""
    train_memory: int | None = None
    """Memory of the two training steps, MB; left out, the same as `memory`."""
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
    gpu_type: str = ""
    """GPU model the steps with GPUs ask for on Slurm, as the cluster's gres type ("a100" ->
    `--gres=gpu:a100:N`); "" asks for any GPU (`--gres=gpu:N`: the partition decides). Slurm
    only: Kubernetes and AWS Batch ignore it (@kubernetes takes a vendor, not a model; there the
    node pool or node selector, or Batch's compute environment, decides the GPU model)."""

    def __post_init__(self):
        for key in ("gpu", "cpu", "memory"):  # resolved once, here (see TrainConfig)
            if getattr(self, f"train_{key}") is None:
                object.__setattr__(self, f"train_{key}", getattr(self, key))


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
    pipeline_check: bool = False
    """True for a profile that checks the pipeline and cannot answer the question (a small model
    built here, trained on generated text): the console, the card, the notebook and `compare` then
    say so next to every answer (results.wording.pipeline_check_line)."""
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

    def train_for(self, arm: str) -> TrainConfig:
        """The training settings of `arm`: "baseline", "monotonic" (its per-arm overrides
        applied) or "pretrain" (the built model's pretraining)."""
        if arm == "pretrain":
            return self.pretrain
        if arm == "monotonic":
            t = self.train
            return dataclasses.replace(t, lr=t.monotonic_lr, warmup_frac=t.monotonic_warmup_frac)
        return self.train


def load(raw: dict, seed: int | None = None) -> ExperimentConfig:
    """Build and validate a config from a parsed profile; `seed` overrides the profile's."""
    raw = dict(raw)
    if seed is not None:
        raw["seed"] = seed
    checks.one_arm_only(raw.get("pretrain", {}), "pretrain")
    checks.attack_tables(build(ExperimentConfig, raw, ""), _attack_names(), AttackConfig)
    return checks.validate(from_dict(raw))


def step_resources(raw: dict, train: bool = False, step: str = "") -> dict:
    """What a model step (`train`: one of the two training steps) asks of a remote backend, read
    from a parsed profile (the flow's `config`) with every [resources] default applied; the
    flow's @resources and @retry take these values, so a key (or the whole table) may be absent.

    Returns {"gpu", "cpu", "memory", "disk", "retries", "shared_memory", "gpu_type"}: in a training step the
    `train_<key>` values (resolved: `<key>`'s where left out); shared_memory (MiB) is
    train_shared_memory in a training step, None otherwise or when 0 (the backend's default).
    Steps that use no GPU ask for none: `step = "setup"` unless it pretrains a built model (a hub
    or local model is only loaded and saved), and `step = "cpu"` (make_monotonic). Raises
    ConfigError like `load`.
    """
    r = build(ResourcesConfig, raw.get("resources", {}), "resources")
    checks.gpu_type(r.gpu_type)  # it goes into a batch script line: refused before any job is written
    prefix = "train_" if train else ""
    out = {key: getattr(r, prefix + key) for key in ("gpu", "cpu", "memory")}
    out.update(disk=r.disk, retries=r.retries, shared_memory=(r.train_shared_memory or None) if train else None,
               gpu_type=r.gpu_type)
    model = raw.get("model", {})
    source = model.get("source", ModelConfig.source) if isinstance(model, dict) else ModelConfig.source
    if step == "cpu" or (step == "setup" and source != "build"):
        out["gpu"] = 0
    return out


def _attack_names() -> tuple[str, ...]:
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
    """Rebuild a config that `load` already validated (e.g. the `resolved_config`
    artifact in a later step), without re-checking paths that only exist where the run started."""
    from monollm.attacks import attack_config

    cfg = build(ExperimentConfig, raw, "")
    # every [attack.<name>] table is checked, also for attacks the profile does not run now
    names = list(cfg.attacks) + [n for n in cfg.attack.params if n not in cfg.attacks]
    built = {name: attack_config(name, cfg.attack.params.get(name, {}), f"attack.{name}") for name in names}
    return dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, params=built))


def block_limit(cfg: ExperimentConfig, max_position: int):
    """Raise ConfigError if blocks or attack windows do not fit the model's context."""
    checks.context_fits(cfg, max_position)


def layer_limit(cfg: ExperimentConfig, num_layers: int):
    """Raise ConfigError if monotonic.layers names a layer the model (of `num_layers`) does not have."""
    layer_indices(cfg.monotonic.layers, num_layers)
