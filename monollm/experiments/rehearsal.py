"""A paper-shape rehearsal, offline: the hub profiles' code paths at Pythia's real shape, small budgets.

    python -m monollm.rehearsal DIR                   # Pythia: build the assets and DIR/rehearsal.toml (about a minute)
    python -m monollm.rehearsal DIR --family qwen     # Qwen2.5 (config/qwen2.5-0.5b.toml's model, at its real shape)
    python -m monollm.rehearsal DIR --family llama    # Llama 3.2 (config/llama-3.2-1b.toml's model)
    python flows/mono_flow.py --config config DIR/rehearsal.toml run

What it builds in DIR, each laid out like the real thing, so that only sizes and budgets differ
from `config/pythia-1.4b.toml`:

* `pythia/`: a GPT-NeoX from Pythia's published configuration (vocabulary of 50,304 rows,
  padding rows beyond the tokenizer, rotary_pct 0.25, the parallel residual, GELU, untied
  embeddings), narrowed and shortened to fit a CPU, randomly initialised, its weights stored in
  fp16 as on the hub, with a byte-level BPE of about 50k entries in the hub's file layout
  (`<|endoftext|>` first), so that `AutoTokenizer` / `AutoModelForCausalLM` load it as Pythia;
* `pile/`: `train/00.jsonl.zst`, `train/01.jsonl.zst`, `val.jsonl.zst` and `test.jsonl.zst`, as in
  `monology/pile-uncopyrighted`, holding local text of several kinds (Python source, prose and
  reStructuredText/Markdown documentation found on this machine), one document per file;
* `rehearsal.toml`: `config/pythia-1.4b.toml` with the model and dataset ids pointed at these
  folders (`source = "hub"` still: the same `from_pretrained` / `load_dataset` calls), the same
  ratios of documents to attack examples, the same attack windows, and budgets cut to minutes.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_PROFILE = os.path.join(ROOT, "config", "pythia-1.4b.toml")
VOCAB_ROWS = 50304
"""Pythia's embedding rows (its tokenizer has 50,277 entries; the rest is padding)."""
SHARDS = {"train/00.jsonl.zst": 220, "train/01.jsonl.zst": 220, "val.jsonl.zst": 80, "test.jsonl.zst": 140}
"""Documents per file, in this order."""

# (section, key) -> value: everything the rehearsal changes in the paper profile. Document counts keep
# the paper profile's ratios to attack.examples (attack_opt_docs = examples, test_docs = 4 x examples).
CHANGES = {
    (None, "name"): "rehearsal", (None, "device"): "cpu", (None, "threads"): 1,
    ("data", "val_docs"): 10, ("data", "attack_opt_docs"): 24, ("data", "test_docs"): 96,
    ("data", "shuffle_buffer"): 1000, ("data", "block_len"): 128,
    ("train", "tokens"): 12_288, ("train", "eval_every"): 2, ("train", "val_blocks"): 4,
    ("train", "log_every"): 1, ("train", "checkpoint_every"): 2,
    ("eval", "bootstrap"): 200, ("eval", "max_blocks"): 48,
    # the paper's tasks read the hub; the corpus tasks run the same branch offline
    ("eval.downstream", "tasks"): ["corpus_cloze", "corpus_choice"], ("eval.downstream", "limit"): 24,
    ("attack", "examples"): 24, ("attack", "batch_size"): 64, ("attack", "budget"): 640,
    ("attack.uat", "steps"): 2, ("attack.uat", "top_k"): 4, ("attack.uat", "restarts"): 1,
    ("attack.uat", "opt_examples"): 16, ("attack.uat", "controls"): 2,
    ("attack.gcg", "steps"): 2, ("attack.gcg", "top_k"): 8, ("attack.gcg", "batch"): 8,
    ("attack.gcg", "opt_examples"): 16, ("attack.gcg", "controls"): 2,
    ("attack.random_search", "steps"): 2, ("attack.random_search", "batch"): 8,
    ("attack.random_search", "opt_examples"): 16, ("attack.random_search", "controls"): 2,
    ("attack.hotflip", "max_flips"): 2, ("attack.hotflip", "candidates"): 4, ("attack.hotflip", "controls"): 2,
    ("attack.hotflip", "guidance_sample"): 256,  # 4,096 exact swaps per model cost more than the search here
    ("attack", "edit_budget"): 11,  # 1 + 2 x (1 + 4): hotflip's most at these flips and candidates
    ("attack.random_flips", "max_flips"): 2, ("attack.random_flips", "candidates"): 4,
    ("attack.random_flips", "controls"): 2,
    ("attack.random", "samples"): 2,
    ("resources", "retries"): 0, ("resources", "gpu"): 0, ("resources", "cpu"): 1,
    ("resources", "memory"): 4000, ("resources", "disk"): 2000,
}
ADDED = {("attack.uat", "guidance_sample"): 16, ("attack.gcg", "guidance_sample"): 16}
"""Keys the paper profile leaves at their defaults (64 exactly scored swaps for the gradient-guidance
check, about a minute of a trigger branch at this vocabulary on a shared core), added to the rehearsal."""
FAMILY_CHANGES = {"qwen": {("attack", "batch_size"): 16, ("eval", "batch_size"): 8}}
"""Where a family's rehearsal departs further: batches of a 151,936- or 128,256-column vocabulary hold
3-4 GB of fp32 logits at the Pythia rehearsal's batches (an attack branch was killed for memory on a
23 GB machine running several at once); these keep each under 0.5 GB."""
FAMILY_CHANGES["llama"] = FAMILY_CHANGES["qwen"]
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
"""Where the rehearsal model departs from Pythia-160m's configuration: width and depth only."""


def documents(limit_bytes: int = 4_000_000, seed: int = 0) -> list[str]:
    """Local text of several kinds, one document per file, in a seeded order: Python source from the
    standard library, and documentation (.rst, .md, .txt) from installed packages."""
    paths = sysconfig.get_paths()
    found = []
    for base, exts in ((paths["stdlib"], (".py",)), (paths["purelib"], (".rst", ".md", ".txt"))):
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "__pycache__", "idlelib"))
            found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(exts)]
    random.Random(seed).shuffle(found)
    docs, size = [], 0
    for path in found:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(6_000).strip()  # about a Pile document's mean length
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) >= 1500:  # long enough for a 48-token attack window and more
            docs.append(text)
            size += len(text)
        if size >= limit_bytes and len(docs) >= sum(SHARDS.values()):
            break
    if len(docs) < sum(SHARDS.values()):
        raise RuntimeError(f"found only {len(docs)} local text files of 1,500+ characters; "
                           f"the rehearsal needs {sum(SHARDS.values())}")
    return docs


def write_pile(docs: list[str], out: str):
    """The documents as the Pile's jsonl.zst files (SHARDS), in order."""
    import zstandard

    start = 0
    for name, n in SHARDS.items():
        path = os.path.join(out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lines = "".join(json.dumps({"text": t, "meta": {"pile_set_name": "local"}}) + "\n"
                        for t in docs[start:start + n])
        with open(path, "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(lines.encode()))
        start += n


# family -> (its paper profile, the published configuration, the special tokens (EOS first), where the
# rehearsal departs from it). Values from each model's config.json and tokenizer files on the hub.
FAMILIES = {
    "pythia": ("pythia-1.4b.toml", None, None, None),
    "qwen": ("qwen2.5-0.5b.toml", dict(  # Qwen/Qwen2.5-0.5B
        model_type="qwen2", vocab_size=151936, tie_word_embeddings=True, hidden_act="silu", rms_norm_eps=1e-6,
        num_attention_heads=14, num_key_value_heads=2, rope_theta=1_000_000.0, rope_scaling=None,
        max_position_embeddings=32768, use_sliding_window=False, sliding_window=None, max_window_layers=24,
        initializer_range=0.02, bos_token_id=151643, eos_token_id=151643, attention_dropout=0.0),
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        dict(hidden_size=112, num_hidden_layers=2, intermediate_size=608)),
    "llama": ("llama-3.2-1b.toml", dict(  # meta-llama/Llama-3.2-1B
        model_type="llama", vocab_size=128256, tie_word_embeddings=True, hidden_act="silu", rms_norm_eps=1e-5,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=500_000.0, max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        attention_bias=False, mlp_bias=False, initializer_range=0.02, bos_token_id=128000, eos_token_id=128001),
        ("<|end_of_text|>", "<|begin_of_text|>"),
        dict(hidden_size=256, head_dim=8, num_hidden_layers=2, intermediate_size=1024)),
}
"""The Qwen and Llama rehearsal models keep every published setting but width and depth: the
width is cut by shrinking each head (14 x 8 and 32 x 8 dimensions), so the head counts, and with
them grouped-query attention's grouping, are the real ones."""


def family_tokenizer(docs: list[str], specials: tuple[str, ...], vocab_size: int = 50_000):
    """A byte-level BPE trained on `docs` with the family's special tokens (EOS first, id 0), in the
    layout the hub's fast tokenizers load from; Llama's (BOS among the specials) prepends BOS when
    asked for special tokens, as Llama 3's does (the flow never asks: it encodes without them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    eos, bos = specials[0], ("<|begin_of_text|>" if "<|begin_of_text|>" in specials else None)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos,
                                   pad_token=None if bos else eos, add_bos_token=bool(bos))


def write_family_model(docs: list[str], out: str, family: str, seed: int = 0):
    """A `family` model (FAMILIES) at its real vocabulary and heads, small width and depth, random
    init, saved in bf16 with its tokenizer; the special tokens keep the family's names, the ids
    are the small tokenizer's (the embedding's rows beyond it are never used, as Qwen's padding
    rows are)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _, published, specials, shape = FAMILIES[family]
    tokenizer = family_tokenizer(docs, specials)
    settings = dict(published)
    ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id or tokenizer.eos_token_id}
    config = AutoConfig.for_model(settings.pop("model_type"), **{**settings, **shape, **ids})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def write_model(docs: list[str], out: str, seed: int = 0):
    """A Pythia-shaped GPT-NeoX with a ~50k byte-level BPE, saved as the hub stores Pythia (fp16)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from monollm.model import foundation

    tokenizer = foundation.build_tokenizer(docs, 50_000)
    assert tokenizer.eos_token_id == 0 and len(tokenizer) < VOCAB_ROWS
    config = GPTNeoXConfig(vocab_size=VOCAB_ROWS, max_position_embeddings=2048, rotary_pct=0.25,
                           rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu",
                           tie_word_embeddings=False, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=0,
                           initializer_range=0.02, **SHAPE)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config).half()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def profile_text(model_dir: str, pile_dir: str, family: str = "pythia") -> str:
    """The family's paper profile (`config/pythia-1.4b.toml` for Pythia) with CHANGES applied and the
    ids pointed at the local folders."""
    with open(paper_profile(family)) as f:
        text = f.read()
    changes = {**CHANGES, **FAMILY_CHANGES.get(family, {})}
    changes["model", "name"], changes["data", "path"] = model_dir, pile_dir
    for (section, key), value in changes.items():
        text = _set(text, section, key, value)
    for (section, key), value in ADDED.items():
        text = _add(text, section, key, value)
    return text


def paper_profile(family: str = "pythia") -> str:
    """The path of the profile a family's rehearsal starts from."""
    return os.path.join(ROOT, "config", FAMILIES[family][0])


def _set(text: str, section: str | None, key: str, value) -> str:
    """`key = value` in `[section]` (None: the top level) of TOML `text`; the key must be there."""
    starts = [m.start() for m in re.finditer(r"^\[.*\]\s*$", text, re.M)]
    lo = 0 if section is None else text.index(f"\n[{section}]\n") + 1
    hi = next((s for s in starts if s > lo), len(text))
    pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    body, n = pattern.subn(f"{key} = {json.dumps(value)}", text[lo:hi], count=1)
    if not n:
        raise KeyError(f"the paper profile has no {key!r} in [{section or 'top level'}]")
    return text[:lo] + body + text[hi:]


def _add(text: str, section: str, key: str, value) -> str:
    """`key = value` added at the top of `[section]` of TOML `text`; the key must not be there yet."""
    head = f"\n[{section}]\n"
    body = text.split(head)[1].split("\n[")[0]
    if re.search(rf"^{re.escape(key)} = ", body, re.M):
        raise KeyError(f"the paper profile already sets {key!r} in [{section}]: change it in CHANGES")
    return text.replace(head, f"{head}{key} = {json.dumps(value)}\n", 1)


def build(out: str, family: str = "pythia") -> str:
    """Everything in `out` (see the module docstring) for `family` (FAMILIES); returns the profile's path."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    docs = documents()
    model_dir, pile_dir = os.path.join(out, family), os.path.join(out, "pile")
    write_pile(docs, pile_dir)
    # like the real models' tokenizers, the tokenizer is trained on the whole corpus
    if family == "pythia":
        write_model(docs, model_dir)
    else:
        write_family_model(docs, model_dir, family)
    path = os.path.join(out, "rehearsal.toml")
    with open(path, "w") as f:
        f.write(profile_text(model_dir, pile_dir, family))
    return path


def main(argv: list[str] | None = None):
    """`python -m monollm.rehearsal DIR`: build the rehearsal in DIR and say how to run it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    family = "pythia"
    if len(argv) == 3 and argv[1] == "--family" and argv[2] in FAMILIES:
        family, argv = argv[2], argv[:1]
    if len(argv) != 1 or argv[0].startswith("-"):  # --help is not a folder to build in
        print(f"usage: python -m monollm.rehearsal DIR [--family {'|'.join(FAMILIES)}]\n\n{__doc__.strip()}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    profile = build(os.path.abspath(argv[0]), family)
    print(f"built the rehearsal in {os.path.dirname(profile)}; run it with\n"
          f"  python flows/mono_flow.py --config config {profile} run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
