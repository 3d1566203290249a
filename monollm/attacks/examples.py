"""The attack examples: windows of held-out documents, drawn so that they come from as many
documents as possible and survive decode -> encode (`make_examples`)."""
import numpy as np

from monollm.attacks.common import rows_survive
from monollm.errors import ConfigError


def make_examples(docs: list[list[int]], n: int, context_len: int, continuation_len: int,
                  seed: int, tokenizer, split: str = "test", drop=None) -> np.ndarray:
    """`n` windows of `context_len + continuation_len` tokens from the documents of `split`.

    Only windows that survive decode -> encode are kept, so that an attacked text can be
    re-tokenized and compared token for token (with a byte-level BPE about 1% of windows do
    not). Windows are drawn in passes over the documents in a seeded order: the first pass
    takes one window per document at a seeded offset, and only when that is not enough do
    later passes take further, non-overlapping windows of the same documents. So examples
    come from as many different documents as possible. `drop` (None: keep all), a function of
    windows (B, width) int64 -> (B,) bool, leaves out the windows it marks (data.decontaminate:
    those that share an n-gram with the training text) and the draw goes on to the next, so that
    `n` are still returned. Returns (n, width) int64; raises ConfigError naming `split` when even
    all of its windows are too few (`_too_few_windows`).
    """
    width = context_len + continuation_len
    rng = np.random.default_rng(seed)
    # per document: its non-overlapping window starts (tiled from a seeded shift), in seeded order
    starts = []
    for i in rng.permutation(len(docs)):
        room = len(docs[i]) - width
        if room < 0:
            continue
        shift = int(rng.integers(0, room % width + 1))  # as many tiles as fit, at a seeded offset
        tiles = np.arange(shift, room + 1, width)
        starts.append((int(i), [int(t) for t in rng.permutation(tiles)]))
    rows: list[list[int]] = []
    dropped = 0
    for depth in range(max((len(t) for _, t in starts), default=0)):
        batch = [[int(x) for x in docs[i][t[depth]:t[depth] + width]] for i, t in starts if depth < len(t)]
        keep = rows_survive(tokenizer, batch)
        if drop is not None:
            out = np.asarray(drop(np.asarray(batch, dtype=np.int64)), dtype=bool)
            dropped, keep = dropped + int((keep & out).sum()), keep & ~out
        for window, ok in zip(batch, keep):
            if ok:
                rows.append(window)
                if len(rows) == n:
                    return np.asarray(rows, dtype=np.int64)
    raise _too_few_windows([len(d) for d in docs], len(rows), n, context_len, continuation_len, split,
                           None if drop is None else dropped)


def _too_few_windows(lengths: list[int], found: int, n: int, context_len: int, continuation_len: int,
                     split: str, dropped: int | None = None) -> ConfigError:
    """Why `split`'s documents (of `lengths` tokens) gave `found` of the `n` attack windows: every
    document shorter than a window, or too few of them, with the lengths and the keys to change;
    `dropped` (None: not decontaminating) windows were left out for sharing an n-gram with training."""
    width = context_len + continuation_len
    short = sum(length < width for length in lengths)
    window = f"an attack window of {width} tokens (attack.context_len {context_len} + attack.continuation_len " \
             f"{continuation_len})"
    sizes = f"the longest has {max(lengths, default=0)} tokens, the median {int(np.median(lengths or [0]))}"
    if lengths and short == len(lengths):
        return ConfigError(f"every one of the {len(lengths)} '{split}' documents is shorter than {window}: {sizes}. "
                           f"Shorten the window (attack.context_len, attack.continuation_len) or use longer documents "
                           f"(data.path; a .txt file's documents are its paragraphs, ended by a blank line)")
    left_out, more = "", f"or add '{split}' documents (data.{split}_docs)"
    if dropped is not None:
        left_out = f" and share no n-gram with the training text ({dropped} left out as contaminated)"
        more = f"add '{split}' documents (data.{split}_docs) or set data.decontaminate = false"
    return ConfigError(f"the '{split}' split gives only {found} attack windows of {width} tokens (context_len + "
                       f"continuation_len) that survive decode -> encode{left_out}, from {len(lengths)} documents "
                       f"({short} shorter than a window; {sizes}); {n} requested (attack.examples): lower it, "
                       f"shorten the windows, {more}")
