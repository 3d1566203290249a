"""Held-out text that also occurs in the training tokens, measured by n-gram overlap.

A held-out window (an attack window of `test` or `attack_opt`, or a packed block of any held-out
split) is *contaminated* when one of its runs of `n` consecutive token ids (an n-gram, n =
data.contamination_ngram) also occurs in the training blocks: the very tokens the run trains on
(the arms, and a built model's pretraining). Sources that repeat text across their files (the
Pile's licences and changelogs) put such windows into held-out splits that are disjoint by
document.

Cost: the n-grams of the held-out documents (small) are hashed to 64-bit integers and sorted;
the training blocks (large) are read in chunks of CHUNK tokens, each chunk's n-grams hashed and
looked up in that sorted array, so memory stays at the held-out side plus one chunk whatever the
training budget, and time grows linearly with it (docs/method.md gives a measurement). Two
different n-grams share a hash with probability about 2**-64 per pair: negligible next to the
counts reported.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ngram_hashes", "shared_ngrams", "flagged", "report", "describe", "CHUNK"]

CHUNK = 1 << 22
"""Training tokens hashed at a time (32 MiB of hashes)."""
_MULT = np.uint64(0x9E3779B97F4A7C15)
"""Odd 64-bit multiplier of the polynomial hash (arithmetic wraps modulo 2**64)."""


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of every run of `n` consecutive ids along the last axis.

    ids: (..., L) int. Returns (..., L - n + 1) uint64; empty along that axis when L < n."""
    x = np.asarray(ids).astype(np.uint64) + np.uint64(1)  # + 1: a run of id 0 does not hash to 0
    m = max(x.shape[-1] - n + 1, 0)
    h = np.zeros(x.shape[:-1] + (m,), dtype=np.uint64)
    if m:
        for k in range(n):
            h = h * _MULT + x[..., k:k + m]
    return h


def shared_ngrams(held_ids: dict, train_blocks: np.ndarray, n: int, eos_id: int) -> np.ndarray:
    """Sorted hashes of the n-grams of the held-out documents that occur in the training tokens.

    held_ids: split -> token ids of its documents, each split read as the stream its blocks are
    packed from (documents joined by `eos_id`), so that every attack window and every block of it
    is covered. train_blocks: (N, T) int, read row after row as one stream (n-grams across two
    rows count: the rows are consecutive text), CHUNK tokens at a time."""
    held = [ngram_hashes(np.fromiter((t for d in docs for t in (*d, eos_id)), dtype=np.int64), n)
            for docs in held_ids.values()]
    index = np.unique(np.concatenate(held)) if held else np.zeros(0, np.uint64)
    found = np.zeros(len(index), dtype=bool)
    flat = np.asarray(train_blocks).reshape(-1)
    for start in range(0, len(flat), CHUNK) if len(index) else ():
        h = np.sort(ngram_hashes(flat[start:start + CHUNK + n - 1], n))  # sorted: ~10x faster lookups
        at = np.minimum(np.searchsorted(index, h), len(index) - 1)
        found[at[index[at] == h]] = True
    return index[found]


def flagged(windows: np.ndarray, shared: np.ndarray, n: int) -> np.ndarray:
    """Which windows (B, W) int contain an n-gram among `shared` (shared_ngrams): (B,) bool."""
    if len(windows) == 0:
        return np.zeros(0, dtype=bool)
    return np.isin(ngram_hashes(windows, n), shared).any(axis=-1)


def report(units: dict, shared: np.ndarray, n: int, train_tokens: int, replaced: tuple = ()) -> dict:
    """The `contamination` artifact: {"n", "train_tokens", "rows"}, one row per measured unit.

    units: (split, unit) -> windows (N, W) int, e.g. ("test", "attack windows") -> the attack
    examples as drawn without decontamination; `replaced`: the keys whose contaminated windows
    were then replaced by clean ones (data.decontaminate). A row: split, unit, windows,
    contaminated, rate (contaminated / windows) and replaced (how many)."""
    rows = []
    for (split, unit), windows in units.items():
        hit = int(flagged(np.asarray(windows), shared, n).sum())
        rows.append({"split": split, "unit": unit, "windows": len(windows), "contaminated": hit,
                     "rate": hit / len(windows) if len(windows) else 0.0,
                     "replaced": hit if (split, unit) in replaced else 0})
    return {"n": n, "train_tokens": int(train_tokens), "rows": rows}


def describe(found: dict | None) -> str:
    """One sentence on the `contamination` artifact, for the setup log and the card."""
    if not found:
        return "held-out contamination: not measured (the run predates it)"
    parts = []
    for r in found["rows"]:
        part = f"{r['split']} {r['unit']} {r['contaminated']} of {r['windows']} ({r['rate']:.1%})"
        parts.append(part + (", replaced by clean ones (data.decontaminate)" if r["replaced"] else ""))
    return (f"held-out windows sharing a {found['n']}-gram of token ids with the {found['train_tokens']:,} "
            f"training tokens: " + "; ".join(parts))
