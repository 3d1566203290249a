"""Documents, deterministic document-level splits, tokenization and packing.

Every source goes through the same `datasets` streaming path: the built-in corpus
as an in-memory dataset turned into a stream, local files and hub datasets with
`streaming=True`. A seeded buffer shuffle orders the stream; the first documents
become `test`, then `attack_opt`, then `val`, and the rest `train`, so the splits
are disjoint by construction and never need the whole dataset in memory.
"""
from __future__ import annotations

import codecs
import contextlib
import glob
import itertools
import os
from collections.abc import Iterator

import numpy as np

from monollm.errors import ConfigError

SPLITS = ("test", "attack_opt", "val")
PARALLELISM = "TOKENIZERS_PARALLELISM"
"""Environment variable that turns the fast tokenizer's threads on or off (read at each batch)."""
FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
"""Compressed text files (e.g. the Pile's `*.jsonl.zst`) stream through `datasets` as they are."""


def file_format(path: str) -> str | None:
    """`datasets` builder of a file from its extension, looking through a compression suffix."""
    stem, ext = os.path.splitext(path.lower())
    if ext in COMPRESSIONS:
        ext = os.path.splitext(stem)[1]
    return FORMATS.get(ext)


def local_files(path: str, key: str = "data.path") -> tuple[str, list[str]]:
    """(datasets builder, files) for a local file, directory or glob; raises ConfigError naming
    `key` if unusable."""
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if os.path.isfile(f))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise ConfigError(f"'{key}' matches no file: {path!r}")
    kinds = {file_format(f) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ConfigError(f"'{key}' {path!r} must hold files of one format "
                          f"({', '.join(sorted(FORMATS))}, optionally {', '.join(COMPRESSIONS)}); "
                          f"found {sorted({os.path.splitext(f)[1] for f in files})}")
    return kinds.pop(), files


def document_stream(cfg, seed: int, held_out: str = "") -> Iterator[str]:
    """Non-empty document texts of the configured source in a seeded, shuffled order.

    cfg: DataConfig. `held_out` names another source of the same kind (a hub split, or local
    files: see DataConfig.test_from); "" reads the training source. The shuffle uses a
    buffer of `cfg.shuffle_buffer` documents, so a streamed hub dataset is never read whole.
    Text that is not UTF-8 raises ConfigError naming the key, the file and the byte (`not_utf8`).
    """
    try:
        yield from _stream(cfg, seed, held_out)
    except UnicodeDecodeError as err:
        raise not_utf8(cfg, held_out, err) from None


def _stream(cfg, seed: int, held_out: str) -> Iterator[str]:
    import datasets

    if cfg.source == "builtin":
        from monollm.data import corpus

        ds = datasets.Dataset.from_dict({cfg.text_field: corpus.generate(cfg.builtin_docs)}).to_iterable_dataset()
    elif cfg.source == "local":
        builder, files = local_files(held_out or cfg.path)
        extra = {"sample_by": "paragraph"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **extra)
    else:
        ds = _hub_stream(cfg, held_out)
    ds = ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
    for row in ds:
        if cfg.text_field not in row:
            raise KeyError(f"data.text_field {cfg.text_field!r} is not a column of {cfg.path or cfg.source!r}; "
                           f"columns: {sorted(row)}")
        text = row[cfg.text_field]
        if isinstance(text, str) and text.strip():
            yield text


def not_utf8(cfg, held_out: str, err: UnicodeDecodeError) -> ConfigError:
    """The ConfigError for a source whose bytes are not UTF-8: the key (`data.path`, or the
    `data.<split>_from` naming `held_out`), and for local files the first file that is not and the
    byte offset of its first bad byte (`datasets` names neither)."""
    key = next((f"data.{name}_from" for name in SPLITS if held_out and getattr(cfg, f"{name}_from") == held_out),
               "data.path")
    where = held_out or cfg.path
    builder, files = local_files(where, key) if cfg.source == "local" else (None, [])
    found = first_non_utf8(files) if builder in ("text", "json", "csv") else None  # parquet is binary
    if found is None:
        bad = err.object[err.start:err.start + 1].hex() if isinstance(err.object, bytes) else "?"
        return ConfigError(f"'{key}' {where!r} holds text that is not UTF-8 (byte 0x{bad}, {err.reason}); "
                           f"re-encode the source as UTF-8")
    path, offset, byte = found
    unpacked = " of its decompressed text" if path.lower().endswith(COMPRESSIONS) else ""
    return ConfigError(f"'{key}' {where!r}: {path} is not UTF-8 text: byte 0x{byte:02x} at byte offset {offset}"
                       f"{unpacked}. Re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8), or leave it out of "
                       f"'{key}'")


def first_non_utf8(files: list[str], chunk: int = 1 << 20) -> tuple[str, int, int] | None:
    """(file, byte offset, byte) of the first byte of `files` that is not UTF-8, reading each file
    (compressed ones decompressed) a chunk at a time; None when every one is UTF-8."""
    import fsspec

    for path in files:
        decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
        with fsspec.open(path, "rb", compression="infer") as f:
            while True:
                data = f.read(chunk)
                held = len(decoder.getstate()[0])  # bytes of a character begun in the previous chunk
                try:
                    decoder.decode(data, final=not data)
                except UnicodeDecodeError as bad:
                    return path, offset - held + bad.start, bad.object[bad.start]
                if not data:
                    break
                offset += len(data)
    return None


def _hub_stream(cfg, held_out: str):
    """A hub dataset (or a folder laid out like one) streamed at `data.revision`: the training
    split, or a held-out split named by a file pattern inside it (e.g. "test.jsonl.zst") or by a
    split name. A local folder has no revisions: `datasets` ignores it there."""
    import datasets

    if held_out and any(c in held_out for c in "./*"):
        # a file of the repository: needs no split declared by the dataset (the Pile copy ships
        # val.jsonl.zst and test.jsonl.zst beside train/, which split inference files under train)
        return datasets.load_dataset(cfg.path, cfg.name or None, data_files={"held_out": held_out},
                                     split="held_out", streaming=True, revision=cfg.revision or None)
    return datasets.load_dataset(cfg.path, cfg.name or None, split=held_out or cfg.split, streaming=True,
                                 revision=cfg.revision or None)


def split_sources(d: dict) -> dict[str, str]:
    """Where each split's documents come from, for the card and the log: split -> description.

    d: the [data] table of a resolved config (a dict; keys absent in older runs count as "").
    """
    main = {"builtin": "the built-in corpus", "local": d.get("path", ""),
            "hub": f"{d.get('path', '')} [{d.get('split', 'train')}]"}[d.get("source", "builtin")]
    out = {"train": main}
    for name in SPLITS:
        held = d.get(f"{name}_from", "")
        if not held:
            out[name] = f"{main}, held out by document"
        else:
            out[name] = f"{d['path']} [{held}]" if d.get("source") == "hub" else held
    return out


def split_documents(cfg, seed: int) -> tuple[dict[str, list[str]], Iterator[str]]:
    """Held-out splits (test, attack_opt, val) as lists, and the rest of the stream for `train`.

    Each held-out split is filled from its own source (`data.<split>_from`) or, by default,
    from the start of the training source's stream; splits that share a source take
    consecutive, disjoint documents of it, and no text is in two held-out splits. Raises
    ValueError when a source runs out before its splits are full.
    """
    stream = document_stream(cfg, seed)
    streams = {"": stream}
    held, seen = {}, set()
    for name in SPLITS:
        src = getattr(cfg, f"{name}_from")
        if src not in streams:
            streams[src] = document_stream(cfg, seed, held_out=src)
        want = getattr(cfg, f"{name}_docs")
        # a text already in an earlier held-out split is skipped: sources repeat documents (the
        # Pile's val and test files share some), and a trigger must never be reported on its own text
        fresh = (t for t in streams[src] if t not in seen)
        held[name] = list(itertools.islice(fresh, want))
        seen.update(held[name])
        if len(held[name]) < want:
            where = f"data.{name}_from {src!r}" if src else "the corpus"
            raise ValueError(f"{where} ran out while filling '{name}': {len(held[name])} of {want} "
                             f"documents (data.{name}_docs); it is too small for the requested splits"
                             + _paragraphs_hint(cfg, src, held[name]))
    if cfg.max_train_docs:
        stream = itertools.islice(stream, cfg.max_train_docs)
    return held, stream


def _paragraphs_hint(cfg, src: str, docs: list[str]) -> str:
    """For .txt sources, how they are cut into documents (one document per line makes one document
    of the whole file), with the longest document read; "" for other sources."""
    if cfg.source != "local" or local_files(src or cfg.path)[0] != "text":
        return ""
    longest = max((len(d.split()) for d in docs), default=0)
    return (f". In .txt files a document is a paragraph, ended by a blank line: lines without blank lines between "
            f"them are one document (the longest read has {longest} words)")


@contextlib.contextmanager
def tokenizer_threads():
    """Within the block, a fast tokenizer encodes each batch of documents on all usable CPUs
    (its Rust thread pool), when there is more than one; the ids are the same as on one thread.

    TOKENIZERS_PARALLELISM (false in the Makefile, the Dockerfile and the tests, so that a
    process forked after tokenizing never inherits a thread pool it cannot use) is set to
    "true" for the block, and afterwards back to its value, or to "false" if it had none (so
    that the tokenizer does not warn at every later fork, e.g. a subprocess).
    """
    before = os.environ.get(PARALLELISM)
    if len(os.sched_getaffinity(0)) > 1:
        os.environ[PARALLELISM] = "true"
    try:
        yield
    finally:
        os.environ[PARALLELISM] = before if before is not None else "false"


def tokenize(tokenizer, docs: list[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens."""
    return tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []


def pack(token_docs, block_len: int, eos_id: int, max_blocks: int = 0, chunk: int = 1000) -> np.ndarray:
    """Join documents (lists of token ids) with EOS and cut into full blocks: (N, block_len)
    int32, the tail dropped. No padding: every position is a real token.

    Works `chunk` documents at a time, carrying each unfinished block into the next chunk, so a
    long stream is held as compact arrays; `max_blocks` > 0 stops reading once it has as many.
    """
    parts, carry, count = [], [], 0
    docs = iter(token_docs)
    while not max_blocks or count < max_blocks:
        batch = list(itertools.islice(docs, chunk))
        if not batch:
            break
        flat = carry + [t for d in batch for t in (*d, eos_id)]
        n = len(flat) // block_len
        parts.append(np.asarray(flat[:n * block_len], dtype=np.int32).reshape(n, block_len))
        carry, count = flat[n * block_len:], count + n
    blocks = np.concatenate(parts) if parts else np.zeros((0, block_len), dtype=np.int32)
    return blocks[:max_blocks] if max_blocks else blocks


def train_blocks(tokenizer, stream: Iterator[str], block_len: int, tokens_needed: int,
                 eos_id: int, chunk: int = 1000) -> np.ndarray:
    """Pack training documents until `tokens_needed` tokens (or the stream's end).

    Tokenizes in chunks so a streamed source is read only as far as the budget needs;
    the trainer cycles over the blocks (reshuffled each epoch) if they are fewer.
    """
    blocks = pack(_tokenized(tokenizer, stream, chunk), block_len, eos_id, -(-tokens_needed // block_len), chunk)
    if len(blocks) == 0:
        raise ValueError("the training split is empty: no documents remain after the held-out splits")
    return blocks


def _tokenized(tokenizer, stream: Iterator[str], chunk: int):
    """Token ids of each document of `stream`, tokenized `chunk` documents at a time."""
    while docs := list(itertools.islice(stream, chunk)):
        yield from tokenize(tokenizer, docs)
