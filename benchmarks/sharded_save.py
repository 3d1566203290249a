"""How long a sharded checkpoint holds up training: written in the background (monollm.train.sharded_save)
against written, hashed and sealed before training goes on (how the ranks saved before).

    python benchmarks/sharded_save.py                      # 2 ranks (gloo, CPU), 256 MB of state each
    python benchmarks/sharded_save.py --ranks 4 --mb 1024 --dir /mnt/scratch

Each rank holds `--mb` MB of fp32 training state (weights and two AdamW moments in 16M-element
tensors, as benchmarks/checkpoint_io.py makes it). Per round and mode, every rank saves one
checkpoint into a new folder (the two modes in alternating order, after one unreported warm-up
round) and the script times, on the slowest rank:

- blocked: from the call until the rank could train again. Synchronous: dcp.save, hashing its
  own files, a barrier and rank 0's seal. Background: staging the shards in host memory and
  starting the write (sharded_save.start).
- sealed: from the call until the folder is sealed (the background mode waits for it here,
  which a training rank does only at its next save).

The last lines give blocked(background) / blocked(synchronous) and scale both to a profile's
cadence: `--checkpoints` saves over `--train-s` seconds of training per arm (the defaults are
config/pythia-6.9b.toml's 7 saves and the cost table's scaled estimate of its training time:
5.64 GPU-hours per seed for two arms on 8 GPUs, 1,269 s per arm), with the state per rank
scaled from `--mb` to `--target-gb` (13.8 GB: ~110 GB of fp32 weights and moments over 8 ranks).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _sync_save(folder, rank, world, state, step, group):
    """The synchronous sharded save: everything before training goes on."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from monollm import checkpoints
    from monollm.train import sharded_save

    os.makedirs(folder, exist_ok=True)
    torch.save(state["rng"], os.path.join(folder, f"rng-{rank}.pt"))
    if rank == 0:
        torch.save({k: state[k] for k in ("scheduler", "history", "step")}, os.path.join(folder, "rest.pt"))
    dcp.save({"model": state["model"], "optimizer": state["optimizer"]}, checkpoint_id=os.path.join(folder, "shards"),
             process_group=group)
    mine = {rel for rel in checkpoints.files_of(folder) if sharded_save.wrote(rel, rank)}
    sharded_save._write_json(os.path.join(folder, sharded_save.DIGESTS.format(rank=rank)),
                             checkpoints.digests(folder, only=mine))
    dist.barrier(group=group)
    if rank == 0:
        sharded_save.seal(folder, step, world, timeout_s=600)


def rank_main(args):
    """One rank under torchrun: time both modes `--rounds` times; rank 0 prints JSON lines."""
    import torch.distributed as dist

    from checkpoint_io import training_state
    from monollm.train import sharded_save

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(backend="gloo")
    state = training_state(args.mb)
    state.update(rng={"seed": rank}, scheduler={}, history=[], step=1)
    for r in range(-1, args.rounds):  # round -1 warms up (the first dcp save sets itself up), unreported
        for mode in (("synchronous", "background") if r % 2 else ("background", "synchronous")):
            folder = os.path.join(args.dir, f"{mode}-{r}")
            dist.barrier()
            t0 = time.perf_counter()
            if mode == "synchronous":
                _sync_save(folder, rank, world, state, 1, group)
                blocked = sealed = time.perf_counter() - t0
            else:
                pending = sharded_save.start(folder, rank, world, state, 1, group, timeout_s=600)
                blocked = time.perf_counter() - t0
                pending.result()
                dist.barrier()  # rank 0 seals last: every rank's time runs to the seal
                sealed = time.perf_counter() - t0
            times = [None] * world
            dist.all_gather_object(times, (blocked, sealed))
            if rank == 0 and r >= 0:
                print(json.dumps({"round": r, "mode": mode, "blocked": max(t[0] for t in times),
                                  "sealed": max(t[1] for t in times)}), flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--mb", type=float, default=256, help="MB of training state per rank")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the folders go (default: a temporary folder)")
    p.add_argument("--checkpoints", type=int, default=7)
    p.add_argument("--train-s", type=float, default=1269.0, help="seconds of training per arm")
    p.add_argument("--target-gb", type=float, default=13.8, help="GB of state per rank to scale to")
    p.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_main:
        return rank_main(args)
    with tempfile.TemporaryDirectory(prefix="monollm-sharded-bench-", dir=args.dir) as where:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}",
               os.path.abspath(__file__), "--rank-main", "--mb", str(args.mb), "--rounds", str(args.rounds),
               "--dir", where]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not rows:
        sys.exit(f"the ranks failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    med = {m: {k: statistics.median(r[k] for r in rows if r["mode"] == m) for k in ("blocked", "sealed")}
           for m in ("synchronous", "background")}
    print(f"{args.ranks} ranks x {args.mb:.0f} MB of state, median of {args.rounds} rounds (seconds, slowest rank):")
    for m, t in med.items():
        print(f"  {m:12s} blocked {t['blocked']:7.3f}   sealed {t['sealed']:7.3f}")
    ratio = med["background"]["blocked"] / med["synchronous"]["blocked"]
    print(f"blocked background/synchronous: {ratio:.3f}")
    scale = args.target_gb * 1e3 / args.mb
    for m, t in med.items():
        per = t["blocked"] * scale
        print(f"scaled to {args.target_gb} GB per rank, {args.checkpoints} saves over {args.train_s:.0f} s per arm: "
              f"{m} {per:.1f} s per save, overhead {100 * per * args.checkpoints / args.train_s:.1f}%")


if __name__ == "__main__":
    main()
