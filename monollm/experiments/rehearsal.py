"""A paper-shape rehearsal, offline: the hub profiles' code paths at Pythia's real shape, small budgets.

    python -m monollm.rehearsal DIR          # build the assets and DIR/rehearsal.toml (about a minute)
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
    ("attack.random", "samples"): 2,
    ("resources", "retries"): 0, ("resources", "gpu"): 0, ("resources", "cpu"): 1,
    ("resources", "memory"): 4000, ("resources", "disk"): 2000,
}
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


def profile_text(model_dir: str, pile_dir: str) -> str:
    """`config/pythia-1.4b.toml` with CHANGES applied and the ids pointed at the local folders."""
    with open(PAPER_PROFILE) as f:
        text = f.read()
    changes = dict(CHANGES)
    changes["model", "name"], changes["data", "path"] = model_dir, pile_dir
    for (section, key), value in changes.items():
        text = _set(text, section, key, value)
    return text


def _set(text: str, section: str | None, key: str, value) -> str:
    """`key = value` in `[section]` (None: the top level) of TOML `text`; the key must be there."""
    starts = [m.start() for m in re.finditer(r"^\[.*\]\s*$", text, re.M)]
    lo = 0 if section is None else text.index(f"\n[{section}]\n") + 1
    hi = next((s for s in starts if s > lo), len(text))
    pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    body, n = pattern.subn(f"{key} = {json.dumps(value)}", text[lo:hi], count=1)
    if not n:
        raise KeyError(f"{PAPER_PROFILE} has no {key!r} in [{section or 'top level'}]")
    return text[:lo] + body + text[hi:]


def build(out: str) -> str:
    """Everything in `out` (see the module docstring); returns the profile's path."""
    docs = documents()
    model_dir, pile_dir = os.path.join(out, "pythia"), os.path.join(out, "pile")
    write_pile(docs, pile_dir)
    write_model(docs, model_dir)  # like Pythia's, the tokenizer is trained on the whole corpus
    path = os.path.join(out, "rehearsal.toml")
    with open(path, "w") as f:
        f.write(profile_text(model_dir, pile_dir))
    return path


def main(argv: list[str] | None = None):
    """`python -m monollm.rehearsal DIR`: build the rehearsal in DIR and say how to run it."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):  # --help is not a folder to build in
        print(f"usage: python -m monollm.rehearsal DIR\n\n{__doc__.strip()}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    profile = build(os.path.abspath(argv[0]))
    print(f"built the rehearsal in {os.path.dirname(profile)}; run it with\n"
          f"  python flows/mono_flow.py --config config {profile} run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
