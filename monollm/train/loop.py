"""Causal-LM training on packed blocks: recovery training of both arms, and pretraining.

fp32 master weights always; bf16 autocast only on CUDA. Pure-bf16 weights with
AdamW at lr ~1e-5 leave small weights unchanged, which is how the earlier pipeline
froze its constrained weights.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from monollm.model import monotonic
from monollm.model.foundation import compute_precision
from monollm.evaluation.perplexity import block_nll


def steps_for(tcfg, block_len: int) -> int:
    """Optimizer steps that spend the token budget (at least 1)."""
    return max(1, tcfg.tokens // (tcfg.batch_size * tcfg.grad_accum * block_len))


def batch_order(n_blocks: int, n_rows: int, seed: int) -> np.ndarray:
    """Block indices for `n_rows` rows: seeded permutations of all blocks, one per epoch.

    Depends only on (n_blocks, seed), so both arms see the same blocks in the same order
    and a resumed run continues at the same data position.
    """
    rng = np.random.default_rng(seed)
    epochs = -(-n_rows // n_blocks)
    return np.concatenate([rng.permutation(n_blocks) for _ in range(epochs)])[:n_rows]


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_frac: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then decay."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_frac + (1 - min_frac) * shape


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on plain matrices only; none on V (decay would pull W to
    softplus(0) = 0.693), biases or norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or monotonic.is_constraint_param(name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def rng_state() -> dict:
    """Every global RNG's state (python, numpy, torch CPU, CUDA) as tensors and plain values, so
    that a checkpoint holding it loads with torch.load(weights_only=True): nothing is unpickled."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # MT19937: key (624,) uint32, pos, cached gaussian
    state = {"python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
             "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Restore what `rng_state` returned."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["words"].tolist()), py["gauss"]))
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
                         "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def batch_hash(batch: np.ndarray) -> int:
    """Fingerprint of a batch's token ids, logged so that runs can prove identical data."""
    return zlib.crc32(np.ascontiguousarray(batch, dtype=np.int32).tobytes())


class OneProcess:
    """How `train` runs in a single process; monollm.train.distributed.Parallel is the same
    interface for several processes (DDP or FSDP), each taking its share of every batch."""
    rank, world = 0, 1

    def wrap(self, model, device: str):
        """Move `model` to `device`; returns the module that runs forward/backward."""
        return model.to(device)

    def rows(self, batch: np.ndarray) -> np.ndarray:
        """This process's rows of a global batch."""
        return batch

    def mean(self, value: float) -> float:
        """Mean of a per-process number over the processes."""
        return value

    def no_sync(self, forward, last: bool):
        """Context of one micro-batch's backward; gradients are combined on the last only."""
        return contextlib.nullcontext()

    def state(self, model, opt) -> dict:
        """Model and optimizer state for a checkpoint."""
        return {"model": model.state_dict(), "optimizer": opt.state_dict()}

    def load(self, model, opt, resume: dict):
        """Restore what `state` saved."""
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])


def _checkpointing(model, what: str):
    """Turn recomputed activations on or off: `activation_checkpointing_<what>` in current
    transformers, `gradient_checkpointing_<what>` (the old name) in older releases."""
    (getattr(model, f"activation_checkpointing_{what}", None) or getattr(model, f"gradient_checkpointing_{what}"))()


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


@dataclass(frozen=True)
class Plan:
    """Which blocks each optimizer step reads: fixed by the budget, the data and the seed."""
    total: int
    """Optimizer steps (steps_for)."""
    rows: int
    """Blocks per optimizer step (batch_size * grad_accum)."""
    block_len: int
    """Tokens per block."""
    order: np.ndarray
    """Block index of every row of every step (batch_order), (total * rows,) int."""

    @classmethod
    def of(cls, tcfg, blocks: np.ndarray, seed: int) -> Plan:
        total, rows = steps_for(tcfg, blocks.shape[1]), tcfg.batch_size * tcfg.grad_accum
        return cls(total, rows, blocks.shape[1], batch_order(len(blocks), total * rows, seed))

    def batch(self, blocks: np.ndarray, step: int) -> np.ndarray:
        """The global batch of optimizer step `step` (0-based), (rows, block_len) int."""
        return blocks[self.order[step * self.rows:(step + 1) * self.rows]]


def train(model, blocks: np.ndarray, val_blocks: np.ndarray, tcfg, seed: int, device: str, *,
          arm: str, log=print, checkpoint=None, on_step=None, parallel=None) -> list[dict]:
    """Train `model` in place on packed `blocks` (N, T) int; returns the history (one dict per step).

    `tcfg`: the arm's TrainConfig (ExperimentConfig.train_for). `checkpoint` (a
    monollm.checkpoints.Checkpoint, or None): training continues from what its `restore()` gives,
    and its `save(state, step)` gets the full training state every `tcfg.checkpoint_every`
    steps (never after the last). `on_step(row)` is called with each step's history row (e.g. a live
    card); after a resume, first with the checkpoint's rows, marked `"replayed": True`. Raises
    FloatingPointError on a non-finite loss, naming the step. `parallel` (default: OneProcess())
    spreads each batch over processes; the history is the same as one process's, up to
    floating-point summation order.
    """
    par = parallel or OneProcess()
    plan = Plan.of(tcfg, blocks, seed)
    forward, opt, sched = _prepare(model, tcfg, plan.total, device, par)
    resume = checkpoint.restore() if checkpoint else None
    history, start = _restore(resume, model, opt, sched, par, arm, plan.total, log, on_step)
    t_begin = time.time()
    for step in range(start, plan.total):
        row = _step(model, forward, opt, sched, plan.batch(blocks, step), tcfg, device, par, arm, step, plan)
        row["resumed_from"] = start if (resume is not None and step == start) else -1
        last = step + 1 == plan.total
        if (tcfg.eval_every and (step + 1) % tcfg.eval_every == 0) or last:
            row["val_loss"] = validation_loss(model, val_blocks, tcfg, device)
            model.train()
        history.append(row)
        if on_step:
            on_step(row)
        if tcfg.log_every and ((step + 1) % tcfg.log_every == 0 or last or step == start):
            log(_progress(row, plan, t_begin, step - start + 1, plan.total - step - 1))
        if checkpoint and tcfg.checkpoint_every and ((step + 1) % tcfg.checkpoint_every == 0) and not last:
            checkpoint.save({**par.state(model, opt), "scheduler": sched.state_dict(), "rng": rng_state(),
                             "history": history, "step": step + 1}, step + 1)
    if tcfg.grad_checkpointing:
        _checkpointing(model, "disable")
    model.eval()
    return history


def _prepare(model, tcfg, total: int, device: str, par):
    """(the module that runs forward/backward, AdamW, its lr schedule) for `model`."""
    if tcfg.grad_checkpointing:  # transformers renamed it; older releases have only the old name
        _checkpointing(model, "enable")
    # the wrapped (and compiled) module shares the parameters; state, clipping and eval use `model`
    forward = par.wrap(model, device)
    model.train()
    forward = torch.compile(forward) if tcfg.compile else forward
    opt = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(0.9, 0.95),
                            fused=_is_cuda(device))
    warmup = int(round(tcfg.warmup_frac * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, tcfg.schedule, tcfg.min_lr_frac))
    return forward, opt, sched


def _restore(resume: dict | None, model, opt, sched, par, arm: str, total: int, log, on_step) -> tuple[list, int]:
    """Load a checkpoint's state, if any: (the history so far, the step to continue at)."""
    if resume is None:
        return [], 0
    par.load(model, opt, resume)
    sched.load_state_dict(resume["scheduler"])
    set_rng_state(resume["rng"])
    history, start = list(resume["history"]), resume["step"]
    log(f"[{arm}] resuming at step {start}/{total} from a checkpoint")
    if on_step:  # the live card shows the whole run, not only this task's part of it
        for row in history:
            on_step({**row, "replayed": True})
    return history, start


def _step(model, forward, opt, sched, batch: np.ndarray, tcfg, device: str, par, arm: str, step: int,
          plan: Plan) -> dict:
    """One optimizer step on the global `batch`; its history row (val_loss still NaN)."""
    t0 = time.time()
    loss = par.mean(_accumulate(forward, par.rows(batch), tcfg, device, par))
    if not math.isfinite(loss):
        raise FloatingPointError(f"[{arm}] non-finite loss {loss} at step {step + 1}/{plan.total}; "
                                 f"the last good checkpoint is kept")
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
    gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)  # FSDP: a DTensor
    lr_now = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    tokens = plan.rows * plan.block_len
    return {"arm": arm, "step": step + 1, "tokens": (step + 1) * tokens, "loss": loss, "lr": lr_now,
            "grad_norm": gnorm, "tokens_per_s": tokens / max(time.time() - t0, 1e-9),
            "val_loss": float("nan"), "batch_hash": batch_hash(batch)}


def _accumulate(model, batch: np.ndarray, tcfg, device: str, par=None) -> float:
    """Forward/backward over the micro-batches of one optimizer step; mean loss."""
    par = par or OneProcess()
    total = 0.0
    for i, micro in enumerate(np.array_split(batch, tcfg.grad_accum)):
        ids = torch.as_tensor(micro, dtype=torch.long, device=device)
        with par.no_sync(model, last=i == tcfg.grad_accum - 1):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=compute_precision(device) == "bf16"):
                loss = model(input_ids=ids, labels=ids).loss
            (loss / tcfg.grad_accum).backward()
        total += float(loss.detach()) / tcfg.grad_accum
    return total


def validation_loss(model, val_blocks: np.ndarray, tcfg, device: str) -> float:
    """Token-weighted mean NLL on the first `tcfg.val_blocks` validation blocks."""
    nll, count = block_nll(model, val_blocks[:tcfg.val_blocks], tcfg.batch_size, device)
    return float(nll.sum() / count.sum())


def _progress(row: dict, plan: Plan, t_begin: float, done: int, left: int) -> str:
    total, budget = plan.total, plan.total * plan.rows * plan.block_len
    elapsed = time.time() - t_begin
    eta = elapsed / done * left
    val = f" val {row['val_loss']:.3f}" if math.isfinite(row["val_loss"]) else ""
    return (f"[{row['arm']}] step {row['step']}/{total} tokens {row['tokens']:,}/{budget:,} "
            f"loss {row['loss']:.3f}{val} lr {row['lr']:.2e} gnorm {row['grad_norm']:.2f} "
            f"{row['tokens_per_s']:,.0f} tok/s ETA {eta:.0f}s")
