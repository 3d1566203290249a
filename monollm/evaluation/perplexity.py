"""Perplexity, defined once: exp of the token-weighted mean NLL over every predicted token.

A packed block of T tokens predicts its tokens 1..T-1, each exactly once; blocks do
not overlap, so no token is counted twice. Per-block sums are kept so that
differences between models get paired bootstrap intervals over blocks.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from monollm.model.foundation import compute_precision


class NonFiniteNLL(FloatingPointError):
    """An NLL that is NaN or infinite: the model's weights or numerics are broken, and any
    perplexity or attack result computed from it would be meaningless."""


def require_finite(values, what: str):
    """`values` ((N,) array or tensor) unchanged when every entry is finite; else raises
    NonFiniteNLL naming `what` (which model, which numbers) and the first bad index."""
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise NonFiniteNLL(f"{what}: {len(bad)} of {arr.size} NLLs are not finite (first: index {bad[0]}, "
                           f"{arr.flat[bad[0]]}); the model's weights or numerics are broken (NaN/inf)")
    return values


@torch.no_grad()
def block_nll(model, blocks: np.ndarray, batch_size: int, device: str, log=None,
              name: str = "model") -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and predicted-token count per block; raises NonFiniteNLL naming `name` (the
    model) as soon as a block's NLL is NaN or infinite.

    blocks: (N, T) int. Returns (nll_sum (N,) float64, tokens (N,) int64).
    """
    was_training = model.training
    model.eval()
    sums, counts = [], []
    t0 = time.time()
    for start in range(0, len(blocks), batch_size):
        ids = torch.as_tensor(blocks[start:start + batch_size], dtype=torch.long, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=compute_precision(device) == "bf16"):
            logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        sums.append(require_finite(nll.sum(dim=1).double().cpu().numpy(),
                                   f"perplexity of {name!r} on blocks {start}..{start + len(ids) - 1}"))
        counts.append(np.full(len(ids), ids.shape[1] - 1, dtype=np.int64))
        done = min(start + batch_size, len(blocks))
        if log and (done == len(blocks) or (start // batch_size) % 20 == 19):
            rate = done / max(time.time() - t0, 1e-9)
            log(f"  {done}/{len(blocks)} blocks, {rate:.1f} blocks/s, ETA {(len(blocks) - done) / rate:.0f}s")
    model.train(was_training)
    if not sums:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(sums), np.concatenate(counts)


def perplexity(nll_sum: np.ndarray, tokens: np.ndarray) -> float:
    """exp(token-weighted mean NLL)."""
    return float(np.exp(nll_sum.sum() / tokens.sum()))
