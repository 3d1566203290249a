"""What each flow step does, as plain functions: the flow file only wires them together.

Steps hand each other small dataclasses (`SetupResult`, `ArmResult`, `EvalResult`) whose fields become the
flow's artifacts, so the shapes passed between steps are written down in one place.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time

import numpy as np

from monollm import checks, config
from monollm.data import contamination, documents
from monollm.model import foundation, monotonic
from monollm.train import loop
from monollm.attacks.examples import make_examples
from monollm.evaluation.perplexity import block_nll, perplexity
from monollm.progress import log
from monollm.runtime import autocast_words, ran_on, setup_torch, step_errors, store_model

__all__ = ["log", "setup_torch", "start", "setup", "train_arm", "make_monotonic", "evaluate", "attack",
           "branches", "downstream", "order",
           "SetupResult", "ArmResult", "EvalResult", "tags", "sources", "tmpdir", "step_errors", "store_model"]


@dataclasses.dataclass
class SetupResult:
    """What `setup` makes besides the saved foundation model (the step stores each field)."""
    blocks: dict
    """Held-out packed blocks: "val", "attack_opt", "test" -> (N, block_len) int arrays."""
    train_blocks: np.ndarray
    """Training blocks (N, block_len) int: a separate artifact, loaded only by the training steps."""
    examples: dict
    """Attack windows: "test", "attack_opt" -> (N, context_len + continuation_len) int arrays."""
    hidden_act: str
    """The model's MLP activation (GELU is not monotone: the findings say so)."""
    sources: dict
    """Where the model and documents came from (see `sources`)."""
    activation_swap: dict | None = None
    """{"from", "to", "perplexity_before"}: the activation swapped into the reference model
    (monotonic.activation) and its test perplexity before the swap; None when kept."""
    untrained_perplexity: float | None = None
    """A built model's test perplexity before pretraining (None for hub and local models)."""
    pretraining: list = dataclasses.field(default_factory=list)
    """A built model's pretraining history rows (empty for hub and local models)."""
    contamination: dict | None = None
    """Held-out windows that share an n-gram with the training blocks (monollm.data.contamination.report)."""


@dataclasses.dataclass
class ArmResult:
    """What `train_arm` returns besides the saved trained model."""
    history: list
    """One dict per optimizer step (monollm.train.loop.train)."""
    constraint: dict
    """Stage -> monollm.model.monotonic.verify dict (monotonic arm: before and after training and after
    materializing; empty for the baseline)."""
    ran_on: dict
    """The device, processes and precision the arm trained on (runtime.ran_on)."""


@dataclasses.dataclass
class EvalResult:
    """What `evaluate` returns."""
    per_block: dict
    """Model name -> (nll_sum, tokens) per test block."""
    ran_on: dict
    """The device and precision the perplexities were computed on (runtime.ran_on)."""


def start(raw: dict, seed: int | None) -> config.ExperimentConfig:
    """Load and validate the profile; checks that need only metadata (sizes, context length)."""
    cfg = config.load(raw, seed=seed)
    checks.gated_access(cfg.model)  # a gated hub model without a token stops here, not in setup
    for line in checks.moving_revisions(cfg):  # not an error: setup records the commit it reads
        log(line)
    held = cfg.data.val_docs + cfg.data.attack_opt_docs + cfg.data.test_docs
    if cfg.data.source == "builtin" and cfg.data.builtin_docs <= held:
        raise config.ConfigError(
            f"'data.builtin_docs' is {cfg.data.builtin_docs}: the corpus is too small for the requested "
            f"splits (val + attack_opt + test = {held} documents, and train needs at least one more)")
    if cfg.model.source == "build":
        config.block_limit(cfg, cfg.model.build.max_position)
        config.layer_limit(cfg, cfg.model.build.num_layers)
        monotonic.check_variant("gpt_neox", cfg.monotonic.variant, "the built GPT-NeoX, model.source = \"build\"")
    elif cfg.model.source == "local":
        from transformers import AutoConfig

        meta = AutoConfig.from_pretrained(cfg.model.name, local_files_only=True)
        config.block_limit(cfg, foundation.max_positions(meta))
        config.layer_limit(cfg, monotonic.num_layers(meta))
    family = checks.model_type_if_known(cfg.model)  # a local folder, or the hub's copy in its cache
    if family:
        monotonic.check_variant(family, cfg.monotonic.variant, f"model.name {cfg.model.name!r}")
    if cfg.data.source == "local":
        _, rest = _split_or_config_error(cfg)
        if next(rest, None) is None:
            raise config.ConfigError(f"'data.path' {cfg.data.path!r}: the corpus is too small for the requested "
                                     f"splits (val + attack_opt + test = {held} documents fill it, and train "
                                     f"needs at least one more)")
    return cfg


def _split_or_config_error(cfg):
    try:
        return documents.split_documents(cfg.data, cfg.seed)
    except ValueError as err:
        raise config.ConfigError(str(err)) from None


def require_disjoint(held: dict):
    """Refuse held-out splits where a `test` document is also an `attack_opt` document (split ->
    list of texts): a trigger optimized on a text would then be reported on the same text.
    data.split_documents already skips a text seen in an earlier split; this guards that
    promise where setup relies on it."""
    shared = set(held["test"]) & set(held["attack_opt"])
    if shared:
        raise ValueError(f"{len(shared)} documents are in both the test and attack_opt splits (data.test_docs, "
                         f"data.attack_opt_docs); first: {next(iter(shared))[:80]!r}. Deduplicate the source "
                         f"(data.path)")


def tags(cfg: config.ExperimentConfig) -> list[str]:
    """Run tags that let a user find runs: profile, variant, mode and seed."""
    return [f"profile:{cfg.name}", f"variant:{cfg.monotonic.variant}", f"mode:{cfg.monotonic.mode}", f"seed:{cfg.seed}"]


def pin_data(cfg: config.ExperimentConfig) -> tuple[config.ExperimentConfig, str | None]:
    """(cfg to stream with, the dataset commit): a hub dataset's branch or tag is replaced by the
    commit it points to now (models.hub_dataset_commit), so the run streams, and records, one
    commit; unchanged for other sources, for a revision that is already a commit, and when the
    hub cannot be asked (then the commit is not recorded, and the log says so)."""
    d = cfg.data
    if d.source != "hub" or os.path.exists(d.path):
        return cfg, None
    if foundation.COMMIT.fullmatch(d.revision or ""):
        return cfg, d.revision
    commit = foundation.hub_dataset_commit(d.path, d.revision)
    if commit is None:
        log(f"data: the commit of {d.path} at {d.revision or 'main'!r} could not be asked of the hub; streaming "
            f"the branch, commit not recorded (pin data.revision to a commit to make the run repeatable)")
        return cfg, None
    log(f"data: {d.path} at {d.revision or 'main'!r} is commit {commit}; streaming that commit")
    return dataclasses.replace(cfg, data=dataclasses.replace(d, revision=commit)), commit


def sources(cfg: config.ExperimentConfig, data_commit: str | None = None) -> dict:
    """Where the run's foundation model and documents came from, for the card and later readers:
    {"model": {"source", "name", "revision", "commit"}, "data": {"source", "path", "revision",
    "commit"}}. `revision` is what the profile asked for ("" where the source has none);
    `commit` is the hub commit it resolved to where that is known offline (models.hub_commit):
    the model's once transformers has loaded it, the data's as `pin_data` resolved it
    (`data_commit`), else None."""
    m, d = cfg.model, cfg.data
    model = {"source": m.source, "name": m.name, "revision": "", "commit": None}
    if m.source == "hub":
        model.update(revision=m.revision, commit=foundation.hub_commit(m.name, m.revision))
    data_src = {"source": d.source, "path": d.path, "revision": "", "commit": None}
    if d.source == "hub":
        # a streamed dataset leaves no revision -> commit record in the cache: pin_data resolved it
        pinned = foundation.COMMIT.fullmatch(d.revision) and not os.path.exists(d.path)
        data_src.update(revision=d.revision, commit=data_commit or (d.revision if pinned else None))
    return {"model": model, "data": data_src}


def setup(cfg: config.ExperimentConfig, out_dir: str) -> SetupResult:
    """Foundation model saved to `out_dir`, packed blocks and attack examples of every split.

    A built model's tokenizer is trained on the training documents only, then the model is
    pretrained on them; `untrained_perplexity` records the same architecture before that.
    """
    device = setup_torch(cfg)
    asked = cfg
    cfg, data_commit = pin_data(cfg)
    held, stream = _split_or_config_error(cfg)
    require_disjoint(held)
    log("splits: " + ", ".join(f"{k} {len(v)} docs" for k, v in held.items()))
    log("sources: " + "; ".join(f"{k} from {v}" for k, v in documents.split_sources(dataclasses.asdict(cfg.data)).items()))
    if cfg.model.source == "build":
        train_docs = list(stream)
        tokenizer = foundation.build_tokenizer(train_docs, cfg.model.build.vocab_size)
        model = foundation.build_model(cfg.model.build, tokenizer, cfg.seed, cfg.model.attn_implementation)
        stream = iter(train_docs)
    else:
        model, tokenizer = foundation.load_foundation(cfg.model)
    found = sources(asked, data_commit)  # after loading: the hub cache then records the model's commit
    config.block_limit(cfg, foundation.max_positions(model))
    config.layer_limit(cfg, monotonic.num_layers(model.config))
    held_ids, blocks, train_blocks = _packed(cfg, tokenizer, held, stream)
    examples, measured = _examples(cfg, tokenizer, held_ids, blocks, train_blocks)
    result = SetupResult(blocks=blocks, train_blocks=train_blocks, examples=examples, sources=found,
                         hidden_act=str(getattr(model.config, "hidden_act", "")), contamination=measured)
    if cfg.model.source == "build":
        _pretrain(cfg, model, blocks, train_blocks, device, result)
    if cfg.monotonic.activation != "keep":
        _swap_activation(cfg, model, blocks["test"], device, result)
    foundation.save(model, tokenizer, out_dir)
    return result


def reused_setup(ref: str, resolved: dict, my_key: str) -> tuple[dict, str]:
    """setup_reuse.load, logged; a refusal stops the step with its one-line reason."""
    from metaflow.exception import MetaflowException

    from monollm import setup_reuse

    try:
        found, origin = setup_reuse.load(ref, resolved, my_key)
    except setup_reuse.ReuseRefused as err:
        raise MetaflowException(f"{err}. Run without --reuse-setup to compute this run's own setup.") from None
    log(f"setup taken from run {origin} (same setup configuration and code): "
        + block_shapes(found["blocks"], found["train_blocks"]))
    return found, origin


def block_shapes(blocks: dict, train_blocks: np.ndarray) -> str:
    """"test 691x32, ..., train 5000x32": each split's packed blocks, for the log."""
    return ", ".join(f"{k} {v.shape[0]}x{v.shape[1]}" for k, v in {**blocks, "train": train_blocks}.items())


def _swap_activation(cfg: config.ExperimentConfig, model, test_blocks: np.ndarray, device: str, result: SetupResult):
    """Swap monotonic.activation into the reference model (after a built model's pretraining: the
    foundation model is trained with its own activation, as Pythia was); records its test
    perplexity before, so the reference row shows what the swap alone costs."""
    before = perplexity(*block_nll(model, test_blocks, cfg.eval.batch_size, device, name="reference before the swap"))
    old = monotonic.swap_activation(model, cfg.monotonic.activation)
    result.hidden_act = cfg.monotonic.activation
    result.activation_swap = {"from": old, "to": cfg.monotonic.activation, "perplexity_before": before}
    log(f"activation {old} -> {cfg.monotonic.activation} in every MLP (test perplexity before: {before:.2f})")


def _packed(cfg: config.ExperimentConfig, tokenizer, held: dict, stream) -> tuple[dict, dict, np.ndarray]:
    """(token ids of each held-out split, its packed blocks, the training blocks)."""
    eos, T = tokenizer.eos_token_id, cfg.data.block_len
    needed = max(cfg.train.tokens, cfg.pretrain.tokens if cfg.model.source == "build" else 0)
    with documents.tokenizer_threads():  # the step's CPUs; the same ids as one thread
        held_ids = {name: documents.tokenize(tokenizer, docs) for name, docs in held.items()}
        train_blocks = documents.train_blocks(tokenizer, stream, T, needed, eos)
    blocks = {name: documents.pack(ids, T, eos) for name, ids in held_ids.items()}
    if cfg.eval.max_blocks:
        blocks["test"] = blocks["test"][:cfg.eval.max_blocks]
    log("blocks: " + block_shapes(blocks, train_blocks))
    return held_ids, blocks, train_blocks


def _examples(cfg: config.ExperimentConfig, tokenizer, held_ids: dict, blocks: dict,
              train_blocks: np.ndarray) -> tuple[dict, dict]:
    """(attack windows of test and attack_opt, the `contamination` report): the held-out windows
    that share a data.contamination_ngram-gram with the training blocks, counted among the windows
    drawn as usual and the blocks scored; with data.decontaminate, those attack windows are then
    replaced by the next clean windows of their split."""
    a, n = cfg.attack, cfg.data.contamination_ngram
    shared = contamination.shared_ngrams(held_ids, train_blocks, n, tokenizer.eos_token_id)

    def draw(drop=None):
        try:
            return {name: make_examples(held_ids[name], a.examples, a.context_len, a.continuation_len,
                                        cfg.seed, tokenizer, split=name, drop=drop) for name in ("test", "attack_opt")}
        except ValueError as err:  # too few windows: one line naming what to change
            raise config.ConfigError(str(err)) from None

    examples = draw()
    units = {("test", "attack windows"): examples["test"], ("test", "blocks"): blocks["test"],
             ("attack_opt", "attack windows"): examples["attack_opt"], ("val", "blocks"): blocks["val"]}
    windows = tuple(k for k in units if k[1] == "attack windows") if cfg.data.decontaminate else ()
    measured = contamination.report(units, shared, n, train_blocks.size, replaced=windows)
    log(contamination.describe(measured))
    if cfg.data.decontaminate:
        examples = draw(functools.partial(contamination.flagged, shared=shared, n=n))
    return examples, measured


def _pretrain(cfg: config.ExperimentConfig, model, blocks: dict, train_blocks: np.ndarray, device: str,
              result: SetupResult):
    """Pretrain a built model in place; records its perplexity before and its history."""
    result.untrained_perplexity = perplexity(*block_nll(model, blocks["test"], cfg.eval.batch_size, device,
                                                        name="built model before pretraining"))
    log(f"pretraining the built model (untrained test perplexity {result.untrained_perplexity:.1f})")
    result.pretraining = loop.train(model, train_blocks, blocks["val"], cfg.train_for("pretrain"), cfg.seed,
                                     device, arm="pretrain", log=log)


def train_arm(cfg: config.ExperimentConfig, model_dir: str, blocks: dict, arm: str, out_dir: str,
              checkpointer=None, on_step=None) -> ArmResult:
    """Recovery training of one arm; the monotonic arm is constrained, trained, materialized.

    `blocks`: "train" and "val" packed blocks. `checkpointer` (a
    monollm.checkpoints.StepCheckpointer, or None) saves mid-training checkpoints (in the
    background: the last one is stored before this returns) and finds the one to continue from. `on_step(row)` receives every history row as it is made (the live
    training card). With several training processes (`[parallel]`, one per GPU) the training
    runs under torchrun (monollm.train.distributed). The trained model is saved to `out_dir` as a
    plain transformers checkpoint.
    """
    device = setup_torch(cfg)
    log(f"[{arm}] loading the model it starts from ({device}); {len(blocks['train'])} training blocks")
    from monollm.train import distributed

    world = distributed.processes(cfg, device)
    # with several processes this one only coordinates: the model stays on the CPU
    model, tokenizer = foundation.load(model_dir, device if world == 1 else "cpu", cfg.model.attn_implementation,
                                   what=f"the model the {arm} arm starts from")
    checks, m = {}, cfg.monotonic
    if arm == "monotonic":
        layers = monotonic.resolve_layers(model, m.layers)
        # monotonic_init's signs are the reference's (checked in make_monotonic): the pattern to hold
        reference = monotonic.snapshot(model, m.variant, m.mode, m.floor, layers, m.init)
        monotonic.apply(model, m.variant, m.floor, m.mode, layers, m.init)
        checks["before_training"] = monotonic.verify(model, m.variant, m.mode, layers, reference)
    started = time.perf_counter()
    if world > 1:
        history = distributed.train_model(cfg, model, model_dir, blocks, arm, cfg.seed + 1, world, log=log,
                                          raw_config=config.to_dict(cfg), checkpointer=checkpointer,
                                          on_step=on_step)
    else:
        history = _train_one_process(cfg, model, blocks, arm, device, checkpointer, on_step)
    if checkpointer:
        log(checkpointer.times.report(arm, time.perf_counter() - started, stored_only=world > 1))
    if arm == "monotonic":
        held = reference if m.mode == "sign_frozen" else None  # abs_init_free: free after its start
        checks["after_training"] = monotonic.verify(model, m.variant, m.mode, layers, held)
        monotonic.materialize(model)
        checks["after_materializing"] = monotonic.verify(model, m.variant, m.mode, layers, held)
        _require_promise(checks, m.mode)
    foundation.save(model.float(), tokenizer, out_dir)
    return ArmResult(history=history, constraint=checks,
                     ran_on=ran_on(device, autocast_words(foundation.compute_precision(device)), world))


def make_monotonic(cfg: config.ExperimentConfig, model_dir: str, out_dir: str) -> dict:
    """Put `reference` under monotonic.mode (from monotonic.init), verify, materialize and save
    `monotonic_init`."""
    setup_torch(cfg)
    m = cfg.monotonic
    model, tokenizer = foundation.load(model_dir, what="reference")
    layers = monotonic.resolve_layers(model, m.layers)
    reference = monotonic.snapshot(model, m.variant, m.mode, m.floor, layers, m.init)
    names = monotonic.apply(model, m.variant, m.floor, m.mode, layers, m.init)
    checks = {"applied": monotonic.verify(model, m.variant, m.mode, layers, reference)}
    monotonic.materialize(model)
    checks["init_materialized"] = monotonic.verify(model, m.variant, m.mode, layers, reference)
    _require_promise(checks, m.mode)
    log(f"constrained {len(names)} matrices ({m.variant}, floor {m.floor:g})"
        + ("" if (m.mode, m.layers, m.init) == ("nonneg", "all", "abs") else
           f", mode {m.mode}, layers {m.layers}, init {m.init}"))
    foundation.save(model, tokenizer, out_dir)
    return checks


def _train_one_process(cfg, model, blocks: dict, arm: str, device: str, checkpointer, on_step):
    """monollm.train.loop.train in this process; checkpoints are sealed and stored while training goes
    on, and the last one is stored before this returns (or raises: a NaN keeps its last good one)."""
    try:
        history = loop.train(model, blocks["train"], blocks["val"], cfg.train_for(arm), cfg.seed + 1, device,
                              arm=arm, log=log, checkpoint=checkpointer, on_step=on_step)
    except BaseException:
        if checkpointer:
            with contextlib.suppress(Exception):  # the training error is the one to report
                checkpointer.wait()
        raise
    if checkpointer:
        checkpointer.wait()
    return history


def _require_promise(checks: dict, mode: str):
    """Stop the run where a stage found no matrices or broke `mode`'s promise (monotonic.PROMISE)."""
    for stage, c in checks.items():
        if monotonic.violations(c, mode) or not c["matrices"]:
            raise RuntimeError(f"constraint check failed {stage} (mode {mode}): {c}")


def evaluate(cfg: config.ExperimentConfig, model_dirs: dict, test_blocks: np.ndarray) -> EvalResult:
    """Per-block NLL of every model on the same test blocks (name -> (nll_sum, tokens)), and what
    they were computed on."""
    device = setup_torch(cfg)
    out = {}
    for name, path in model_dirs.items():
        log(f"perplexity of {name} on {len(test_blocks)} test blocks")
        model, _ = foundation.load(path, device, cfg.model.attn_implementation, what=name)
        out[name] = block_nll(model, test_blocks, cfg.eval.batch_size, device, log=log, name=name)
    return EvalResult(per_block=out, ran_on=ran_on(device, autocast_words(foundation.compute_precision(device))))


def tmpdir(step: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f"monollm-{step}-", dir=os.environ.get("MONOLLM_TMP"))
