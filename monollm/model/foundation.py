"""The foundation model and its tokenizer: built here, from a local directory, or from the hub.

A model directory written by `save` carries `checksums.json` (every file's size and SHA-256),
and every load verifies the files against it first, so that a model damaged in storage or
transfer is refused by name instead of loading as garbage (or as a confusing safetensors
error). A directory without it (a hub download, a local mirror) is loaded as it is.
"""
from __future__ import annotations

import json
import os
import re

import torch

from monollm import checkpoints, saving
from monollm.constants import COMMIT_PATTERN
from monollm.errors import ConfigError, FixableError

EOS = "<|endoftext|>"
MANIFEST = "checksums.json"


class CorruptModel(FixableError):
    """A model directory saved by `save` whose files no longer match their checksums; `path` and
    `problem` (what is wrong, naming the file) say which (`damaged` makes one)."""
    path, problem = "", ""


def damaged(path: str, problem: str, what: str = "", next_step: str = "") -> CorruptModel:
    """The CorruptModel for model directory `path`: `problem`, what the caller knows the model as
    (`what`: run, model name) and `next_step`, what to do about it (the one place its words are made)."""
    err = CorruptModel(f"stored model {path}{f' ({what})' if what else ''} is damaged: {problem}. "
                       + (next_step or "Resume the run from the step that produced this model "
                          "(resume STEP --origin-run-id RUN), or start a new run."))
    err.path, err.problem = path, problem
    return err


def build_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE trained on `docs`, wrapped as an ordinary transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS)


def build_model(build, tokenizer, seed: int, attn_implementation: str = "sdpa"):
    """A randomly initialised GPT-NeoX (Pythia's architecture) sized by `build` (BuildConfig).

    Like Pythia, the embedding has padding rows beyond the tokenizer (rounded up to a
    multiple of 64), which attacks must never use.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    rows = -(-len(tokenizer) // 64) * 64
    config = GPTNeoXConfig(
        vocab_size=rows, hidden_size=build.hidden_size, num_hidden_layers=build.num_layers,
        num_attention_heads=build.num_heads, intermediate_size=build.intermediate_size,
        max_position_embeddings=build.max_position, rotary_pct=0.25, use_parallel_residual=True,
        hidden_act="gelu", tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config).float()


def quiet_progress():
    """No per-file progress bars from transformers (loading and writing weights): a step's log
    keeps its own progress lines only."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_foundation(mcfg):
    """(model, tokenizer) from the hub (`model.source = "hub"`) or a local directory ("local").

    Weights load in fp32: recovery training keeps fp32 master weights (bf16 only under autocast).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_progress()
    kwargs = {"local_files_only": True} if mcfg.source == "local" else {"revision": mcfg.revision}
    if mcfg.source == "local":
        verify(mcfg.name, f"model.name {mcfg.name!r}")  # checked only if `save` wrote it
    tokenizer = AutoTokenizer.from_pretrained(mcfg.name, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(mcfg.name, dtype=torch.float32,
                                                 attn_implementation=mcfg.attn_implementation, **kwargs)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {mcfg.name!r} has no EOS token, which packing needs")
    return model, tokenizer


COMMIT = re.compile(COMMIT_PATTERN)
"""A full git commit hash: a hub revision that cannot move."""


def hub_commit(repo_id: str, revision: str, repo_type: str = "model") -> str | None:
    """The commit `revision` of hub repository `repo_id` points to, as recorded in the local hub
    cache (transformers records it there when it loads a model), or `revision` itself when it is
    a commit hash; None when neither says (a local folder, or nothing cached). Never asks the hub:
    what is recorded is what the run read, not what the branch points to now."""
    if not repo_id or os.path.exists(repo_id):  # a folder has no revisions
        return None
    if COMMIT.fullmatch(revision or ""):
        return revision
    from huggingface_hub import HfApi

    try:
        return HfApi().resolve_revision(repo_id, repo_type=repo_type, revision=revision or None,
                                        local_files_only=True).resolved
    except Exception:  # nothing cached for it (the hub's own errors vary): unknown, not a failure
        return None


def hub_dataset_commit(repo_id: str, revision: str) -> str | None:
    """The commit branch or tag `revision` of hub dataset `repo_id` points to now, asked of the hub
    (a dataset is streamed, which leaves no record in the cache); None when the hub cannot be
    asked (offline, unknown repository). Call it before streaming and stream that commit, so
    that what is recorded is what is read."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo_id, revision=revision or None).sha
    except Exception:  # offline or not on the hub (the hub's own errors vary): unknown, not a failure
        return None


def max_positions(model) -> int:
    """Longest context the model (or its transformers config) accepts."""
    return int(getattr(getattr(model, "config", model), "max_position_embeddings", 0) or 2 ** 31)


def save(model, tokenizer, path: str):
    """Hugging Face format (safetensors + tokenizer files) that vanilla transformers loads, plus
    `checksums.json` (file -> size and SHA-256), written last: `load` verifies against it."""
    quiet_progress()
    with saving.disk_space(path, saving.state_bytes(model.state_dict()), "the model's files"):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        files = checkpoints.digests(path, skip=(MANIFEST,))
        with open(os.path.join(path, MANIFEST + ".tmp"), "w") as f:
            json.dump({"files": files}, f, indent=1)
    os.replace(os.path.join(path, MANIFEST + ".tmp"), os.path.join(path, MANIFEST))


def verify(path: str, what: str = "", next_step: str = "") -> str:
    """`path` when it has no `checksums.json` (not saved by `save`) or every file it lists is whole
    and unchanged; else raises CorruptModel (`damaged`) naming the directory, `what` the caller
    knows it as (run, model name) and `next_step`, what to do about it."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest):
        return path
    with open(manifest) as f:
        problem = checkpoints.damage(path, json.load(f)["files"], "model")
    if problem:
        raise damaged(path, problem, what, next_step)
    return path


def load(path: str, device: str = "cpu", attn_implementation: str = "sdpa", what: str = "", next_step: str = ""):
    """(model in eval mode on `device`, tokenizer) from a `save` directory, verified first
    (`verify`: `what` and `next_step` go into its error)."""
    from transformers import AutoTokenizer

    model = load_model(path, device, attn_implementation, what=what, next_step=next_step)
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_tokenizer(path: str):
    """The tokenizer of a `save` (or `save_pretrained`) directory, without loading the model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_model(path: str, device: str = "cpu", attn_implementation: str = "sdpa", verified: bool = False,
               what: str = "", next_step: str = ""):
    """The model of a `save` (or `save_pretrained`) directory, in eval mode on `device`; its files
    are verified first (`verify`) unless `verified` (the caller checked them already).

    The attention kernel is not stored with the weights, so every load names it.
    """
    from transformers import AutoModelForCausalLM

    if not verified:
        verify(path, what, next_step)
    quiet_progress()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                 attn_implementation=attn_implementation)
    return model.to(device).eval()


def compute_precision(device: str, asked: str = "auto") -> str:
    """"bf16" or "fp32": what a model step computes in on `device` when `asked` is "auto", "bf16"
    or "fp32". "auto" is bf16 autocast on CUDA and fp32 elsewhere, as training, perplexity and the
    attacks' searches do; the weights stay fp32 either way. Steps record it (runtime.ran_on)."""
    if asked == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return asked


def pick_device(name: str) -> str:
    """"auto" -> cuda when available, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        # a ConfigError: the steps that load models first stop with this one line (errors.user_errors)
        raise ConfigError("'device' is \"cuda\" but no CUDA device is visible in this step: run the flow where "
                          "its steps get a GPU (--with kubernetes, batch or slurm, and resources.gpu), or set "
                          "device = \"auto\" (the GPU where there is one) or \"cpu\"")
    return name
