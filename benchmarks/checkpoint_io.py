"""Time to write and to seal (SHA-256) one training checkpoint, on this machine's local disk.

    python benchmarks/checkpoint_io.py                # 512 MB of fp32 training state, 3 rounds
    python benchmarks/checkpoint_io.py --mb 2048 --rounds 2 --dir /mnt/scratch

The state is shaped like a training checkpoint (monollm.train.loop's `state`): fp32 weights and
AdamW's two moments of the same shapes, a third each of `--mb`. Each round times
monollm.checkpoints' own steps, as StepCheckpointer runs them:

- copy (fresh): `snapshot`, the copy into host memory that a background save makes on the
  training loop, into newly allocated memory, as the first save of a task does (here a
  CPU-to-CPU copy; on a GPU it is a device-to-host copy, not measured here);
- copy (reused): `snapshot(state, reuse=...)` into the previous copy's tensors, as every later
  save of a task does (StepCheckpointer keeps its last copy);
- write: `write_unsealed` (torch.save to a temporary file, renamed) plus an fsync, so that the
  bytes are on the disk and not only in the page cache;
- seal (warm): `seal` right after the write, as a save does (the file still in the page cache);
- seal (cold): `seal` again after the file's pages are dropped (posix_fadvise DONTNEED), which
  reads it back from the disk.

Storing the sealed folder in the datastore (S3 on a cluster) is not measured here. The last
lines scale the median round to a paper-scale checkpoint: `--target-gb` of state per
checkpoint, `--checkpoints` of them over `--steps` optimizer steps of `--step-s` seconds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def training_state(total_mb: float) -> dict:
    """fp32 weights and two AdamW moments, `total_mb` MB in all, in 64 MB-or-smaller tensors."""
    import torch

    per_part = int(total_mb * 1e6 / 3 / 4)  # fp32 elements of weights (and of each moment)
    sizes = [min(16 * 2 ** 20, per_part - i) for i in range(0, per_part, 16 * 2 ** 20)]
    gen = torch.Generator().manual_seed(0)
    weights = {f"layer{i}.weight": torch.randn(n, generator=gen) for i, n in enumerate(sizes)}
    moments = {i: {"step": torch.tensor(200.0), "exp_avg": torch.randn(n, generator=gen),
                   "exp_avg_sq": torch.rand(n, generator=gen)} for i, n in enumerate(sizes)}
    return {"model": weights, "optimizer": {"state": moments, "param_groups": []}, "step": 200}


def one_round(state: dict, where: str) -> dict:
    """Seconds to copy, write, seal warm and seal cold one checkpoint; its size in MB."""
    from monollm import checkpoints

    folder = tempfile.mkdtemp(prefix="monollm-ckpt-bench-", dir=where)
    try:
        tc = time.perf_counter()
        copied = checkpoints.snapshot(state)
        copy_s = time.perf_counter() - tc
        tc = time.perf_counter()
        checkpoints.snapshot(state, reuse=copied)
        reuse_s = time.perf_counter() - tc
        del copied
        t0 = time.perf_counter()
        checkpoints.write_unsealed(folder, state)
        path = os.path.join(folder, checkpoints.STATE)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        t1 = time.perf_counter()
        checkpoints.seal(folder, state["step"])
        t2 = time.perf_counter()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # this file's pages only: read it from disk
        os.close(fd)
        t3 = time.perf_counter()
        checkpoints.seal(folder, state["step"])
        t4 = time.perf_counter()
        return {"mb": os.path.getsize(path) / 1e6, "copy": copy_s, "reuse": reuse_s, "write": t1 - t0, "seal_warm": t2 - t1, "seal_cold": t4 - t3}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=512, help="MB of training state per checkpoint")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: the temporary directory)")
    ap.add_argument("--target-gb", type=float, default=17.0, help="state per checkpoint to scale to")
    ap.add_argument("--checkpoints", type=int, default=7, help="checkpoints per training task")
    ap.add_argument("--steps", type=int, default=1525, help="optimizer steps per training task")
    ap.add_argument("--step-s", type=float, default=1.40, help="seconds per optimizer step")
    args = ap.parse_args()

    state = training_state(args.mb)
    rounds = [one_round(state, args.dir) for _ in range(args.rounds)]
    mb = rounds[0]["mb"]
    print(f"checkpoint of {mb:,.0f} MB in {args.dir or tempfile.gettempdir()}, {args.rounds} rounds")
    rate = {}  # MB/s of the median round: other processes on the machine slow some rounds
    for key, what in (("copy", "copy into fresh host memory"), ("reuse", "copy into the last copy"), ("write", "write (torch.save + fsync)"), ("seal_warm", "seal, file in page cache"),
                      ("seal_cold", "seal, file read from disk")):
        times = [r[key] for r in rounds]
        rate[key] = mb / statistics.median(times)
        print(f"  {what:28s} median {statistics.median(times):6.2f} s ({rate[key]:6,.0f} MB/s)  "
              f"fastest {min(times):6.2f} s ({mb / min(times):6,.0f} MB/s)")
    target_mb = args.target_gb * 1e3
    write_s, seal_s = target_mb / rate["write"], target_mb / rate["seal_warm"]
    copy_s, reuse_s = target_mb / rate["copy"], target_mb / rate["reuse"]
    train_s = args.steps * args.step_s
    n = args.checkpoints
    for label, total in (("write + seal on the training loop", (write_s + seal_s) * n),
                         ("write on the loop, seal in the background", write_s * n),
                         ("host copy (fresh memory) on the loop, the rest in the background", copy_s * n),
                         ("host copy on the loop, into the last copy after the first", copy_s + reuse_s * (n - 1))):
        per_ckpt = total / n
        print(f"at {args.target_gb:g} GB x {args.checkpoints} checkpoints, {label}: {per_ckpt:.0f} s each, "
              f"{total:.0f} s of {train_s:.0f} s training = {100 * total / train_s:.1f}% overhead")


if __name__ == "__main__":
    main()
