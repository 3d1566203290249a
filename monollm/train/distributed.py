"""Recovery training over several processes in one step: DDP or FSDP, launched with torchrun.

The step's own process stays the coordinator. It writes a job folder (the config, the
blocks, where the model is), runs

    python -m torch.distributed.run --standalone --nproc_per_node=N -m monollm.rank JOB

and, while the ranks train, forwards rank 0's history rows to `on_step` (the live card)
and the ranks' sealed checkpoint folders to metaflow-checkpoint. When torchrun exits it
reads back the trained weights, gathered by rank 0. A rank that fails makes torchrun stop
the others and exit non-zero; the coordinator then raises with that rank's error.

Each optimizer step, every rank takes an equal share of the same global batch (the rows a
single process would see) and gradients are averaged, so the history equals a single
process's up to floating-point summation order. `train.batch_size` is the global
micro-batch: it must divide evenly over the processes.

- "ddp": every rank holds the whole model (DistributedDataParallel).
- "fsdp": parameters, gradients and AdamW state are sharded over the ranks (FSDP2,
  `fully_shard` per transformer layer), for models whose training state does not fit one GPU.

Checkpoints are sharded (torch.distributed.checkpoint), one folder per save: each rank stages
its shards in host memory and trains on while they are written and hashed (each rank its own
files) and rank 0 seals the folder, all in the background (monollm.train.sharded_save); they load
on any number of ranks. The coordinator stores each sealed folder (and deletes older ones, see
monollm.checkpoints) while the ranks train on.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from monollm import checkpoints
from monollm.model import foundation, monotonic
from monollm.train import loop, sharded_load, sharded_save
from monollm.errors import ConfigError
from monollm.progress import log
from monollm.saving import SaveTimes

# `cfg` below is a monollm.config.ExperimentConfig: built above this package, so never imported here
JOB, ROWS, HISTORY, FINAL, CKPTS = "job.json", "rows.jsonl", "history.json", "final.pt", "checkpoints"


def processes(cfg, device: str) -> int:
    """Training processes for this step: `parallel.processes`, or one per visible GPU."""
    visible = torch.cuda.device_count() if device == "cuda" else 0
    world = cfg.parallel.processes or max(1, visible)
    if device == "cuda" and world > visible:
        raise RuntimeError(f"parallel.processes is {world} but only {visible} GPU(s) are visible in this step; "
                           f"ask for them with resources.train_gpu")
    # checked here as well as in config.validate: "one per visible GPU" is known only now
    if world > 1 and cfg.train.batch_size % world:
        raise ConfigError(f"'train.batch_size' is {cfg.train.batch_size}: it must be a multiple of the "
                                 f"{world} training processes")
    return world


def train_model(cfg, model, model_dir: str, blocks: dict, arm: str, seed: int,
                world: int, *, raw_config: dict, log=print, checkpointer=None, on_step=None) -> list[dict]:
    """Train `model` (on CPU, constrained already if `arm` is monotonic) on `world` processes.

    `raw_config` is `cfg` as monollm.config.to_dict gives it: the ranks rebuild `cfg` from it
    (monollm/rank.py). The ranks load the weights from `model_dir` themselves (and constrain them likewise);
    the trained weights are loaded back into `model`. `checkpointer` is a
    monollm.checkpoints.StepCheckpointer (or None: no mid-training checkpoints). Returns
    the history, like monollm.train.loop.train.
    """
    job = tempfile.mkdtemp(prefix=f"monollm-dist-{arm}-", dir=os.environ.get("MONOLLM_TMP"))
    try:
        resume = checkpointer.restore_folder() if checkpointer else None
        np.save(os.path.join(job, "train.npy"), blocks["train"])
        np.save(os.path.join(job, "val.npy"), blocks["val"])
        with open(os.path.join(job, JOB), "w") as f:
            json.dump({"config": raw_config, "model_dir": os.path.abspath(model_dir), "arm": arm,
                       "seed": seed, "resume": resume,
                       "checkpoints": checkpointer is not None}, f)
        log(f"[{arm}] training on {world} processes ({cfg.parallel.strategy})")
        _run(job, world, arm, checkpointer, on_step)
        with open(os.path.join(job, HISTORY)) as f:
            history = json.load(f)  # with the rows before a resumed checkpoint
        model.load_state_dict(torch.load(os.path.join(job, FINAL), map_location="cpu", weights_only=True))
        return history
    finally:
        shutil.rmtree(job, ignore_errors=True)


def _run(job: str, world: int, arm: str, checkpointer, on_step):
    """Run torchrun on `job`; forward rows and checkpoints while it runs; raise if it fails."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where `monollm` imports from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "monollm.rank", job]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_stop_with_parent)
    offset = 0
    try:
        while True:
            finished = proc.poll() is not None
            offset = _forward_rows(job, offset, on_step)
            _forward_checkpoints(job, checkpointer)
            if finished:
                break
            time.sleep(0.5)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    if proc.returncode != 0:
        errors = sorted(f for f in os.listdir(job) if f.startswith("error-rank"))
        first = (open(os.path.join(job, errors[0])).read().strip() if errors else
                 "no rank reported an error, so one was killed (out of host memory?); see torchrun's log above")
        raise RuntimeError(f"[{arm}] training on {world} processes failed (torchrun exit code "
                           f"{proc.returncode}): {first}")


def _stop_with_parent():
    """Linux: torchrun gets SIGTERM (and stops its ranks) if the step's process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _forward_rows(job: str, offset: int, on_step) -> int:
    """Pass the rows rank 0 appended since byte `offset` to `on_step`; the new offset."""
    path = os.path.join(job, ROWS)
    if not os.path.exists(path):
        return offset
    with open(path, "rb") as f:
        f.seek(offset)
        new = f.read()
    complete = new[:new.rfind(b"\n") + 1]  # a row still being written waits for the next call
    if on_step:
        for line in complete.splitlines():
            on_step(json.loads(line))
    return offset + len(complete)


def _forward_checkpoints(job: str, checkpointer):
    folder = os.path.join(job, CKPTS)
    if checkpointer is None or not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.exists(os.path.join(path, checkpoints.META)):  # sealed: every rank has written
            checkpointer.save_folder(path, checkpoints.step_of(path))
            shutil.rmtree(path, ignore_errors=True)


class Parallel(loop.OneProcess):
    """monollm.train.loop's process interface for one rank of a DDP or FSDP group."""

    def __init__(self, strategy: str):
        import torch.distributed as dist

        self.dist, self.strategy = dist, strategy
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def wrap(self, model, device: str):
        model.to(device)
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in _layers(model):
                fully_shard(layer)
            fully_shard(model)  # in place: `model` itself now runs sharded
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)

    def rows(self, batch):
        share = len(batch) // self.world
        return batch[self.rank * share:(self.rank + 1) * share]

    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        self.dist.all_reduce(t)
        return float(t.item()) / self.world

    def no_sync(self, forward, last: bool):
        if last:
            return contextlib.nullcontext()
        if self.strategy == "fsdp":
            return _fsdp_no_sync(forward)
        return forward.no_sync()

    def state(self, model, opt) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(model, opt)
        return {"model": msd, "optimizer": osd}

    def load(self, model, opt, resume: dict):
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        msd, osd = get_state_dict(model, opt)
        sharded = {"model": msd, "optimizer": osd}
        sharded_load.load_shards(sharded, os.path.join(resume["folder"], "shards"))
        set_state_dict(model, opt, model_state_dict=sharded["model"], optim_state_dict=sharded["optimizer"])


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _collective_device() -> str:
    return f"cuda:{torch.cuda.current_device()}" if torch.distributed.get_backend() == "nccl" else "cpu"


def _layers(model):
    """The transformer blocks: each becomes one FSDP unit (its parameters gathered together)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(
                hasattr(m, "mlp") for m in module):
            return list(module)
    raise ValueError(f"no list of transformer blocks found in {type(model).__name__} to shard with FSDP")


class RankCheckpoint:
    """The Checkpoint of one training process: `save` stages its shards and writes, hashes and
    (rank 0) seals the folder in the background (monollm.train.sharded_save), one save at a time;
    `wait` waits for the one in flight. The coordinator stores each sealed folder. `restore`
    reads this rank's part of the folder the coordinator verified (`resume`: its path, or None
    for a fresh start)."""

    def __init__(self, job: str, par: Parallel, resume: str | None, saving: bool, timeout_s: float):
        self.job, self.par, self.resume, self.saving, self.timeout_s = job, par, resume, saving, timeout_s
        self.pending, self.times = None, SaveTimes()
        # the background saves' collectives run on a gloo group of their own (made by every rank)
        self.group = par.dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)) \
            if saving else None

    def restore(self) -> dict | None:
        return sharded_load.resume_state(self.resume, self.par.rank) if self.resume else None

    def save(self, state: dict, step: int):
        if self.saving:  # the time this takes, and the final wait's, is the training loop's (`times`)
            self.times.loop(self._start, state, step)

    def _start(self, state: dict, step: int):
        self._finish()
        self.times.finish(bool(self._unstored(step)), lambda: self._wait_stored(step))
        self.pending = sharded_save.start(os.path.join(self.job, CKPTS, _folder_name(step)), self.par.rank,
                                          self.par.world, state, step, self.group, self.timeout_s)

    def _unstored(self, step: int) -> list[str]:
        """Folders of earlier saves the coordinator has not stored (and removed) yet."""
        folder = os.path.join(self.job, CKPTS)  # zero-padded names: earlier steps sort first
        return sorted(n for n in os.listdir(folder) if n < _folder_name(step)) if os.path.isdir(folder) else []

    def _wait_stored(self, step: int):
        """Until every earlier folder is stored: the node's disk then holds one checkpoint, not a
        queue of them, when storing is slower than training (every rank sees the same folder and
        waits alike; the folder of `step` is not made before, so none waits for it)."""
        deadline = time.monotonic() + self.timeout_s
        while self._unstored(step):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the checkpoints {self._unstored(step)} were not stored within "
                                   f"parallel.timeout_minutes ({self.timeout_s / 60:g} min)")
            time.sleep(0.2)

    def wait(self):
        """Until the save in flight, if any, is sealed; raises its error."""
        self.times.loop(self._finish)

    def _finish(self):
        pending, self.pending = self.pending, None
        if pending is not None:
            self.times.finish(not pending.done(), pending.result)


def _folder_name(step: int) -> str:
    return f"step-{step:09d}"


def read_job(job: str) -> dict:
    """The job folder's spec: {"config": the run's config as a dict, "model_dir", "arm", ...}."""
    with open(os.path.join(job, JOB)) as f:
        return json.load(f)


def run_rank(job: str, spec: dict, cfg):
    """One rank: load and (monotonic arm) constrain the model, train its share, rank 0 writes results.
    `cfg` is rebuilt from spec["config"] by the rank's entry point (monollm/rank.py)."""
    import torch.distributed as dist

    cuda = foundation.pick_device(cfg.device) == "cuda"
    local = int(os.environ["LOCAL_RANK"])  # set by torchrun
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)  # before NCCL starts, so each rank talks from its own GPU
    # a collective that waits longer than this fails the job; writing a large checkpoint takes long
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(minutes=cfg.parallel.timeout_minutes))
    rank = dist.get_rank()
    try:
        _train_rank(job, spec, cfg, device, rank)
        dist.barrier()
    except BaseException as err:
        with open(os.path.join(job, f"error-rank{rank:04d}.txt"), "w") as f:
            f.write(f"rank {rank}: {type(err).__name__}: {err}")
        raise
    finally:
        dist.destroy_process_group()


def _train_rank(job: str, spec: dict, cfg, device: str, rank: int):
    """This rank's part of the training; rank 0 writes the rows, the final weights and the history."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    # the coordinator verified the files (models.load) before starting the ranks
    model = foundation.load_model(spec["model_dir"], device, cfg.model.attn_implementation, verified=True)
    if spec["arm"] == "monotonic":
        m = cfg.monotonic
        monotonic.apply(model, m.variant, m.floor, m.mode, monotonic.resolve_layers(model, m.layers), m.init)
    par = Parallel(cfg.parallel.strategy)
    blocks = np.load(os.path.join(job, "train.npy"), mmap_mode="r")
    val = np.load(os.path.join(job, "val.npy"))
    rows = open(os.path.join(job, ROWS), "a") if rank == 0 else None

    def on_step(row):
        rows.write(json.dumps(row) + "\n")
        rows.flush()

    ckpt = RankCheckpoint(job, par, spec["resume"], saving=spec["checkpoints"],
                          timeout_s=60.0 * cfg.parallel.timeout_minutes)
    started = time.perf_counter()
    history = loop.train(model, blocks, val, cfg.train_for(spec["arm"]), spec["seed"], device, arm=spec["arm"],
                          log=log if rank == 0 else (lambda _: None), checkpoint=ckpt,
                          on_step=on_step if rank == 0 else None, parallel=par)
    ckpt.wait()  # the last checkpoint sealed before this rank reports success
    if rank == 0 and spec["checkpoints"]:
        log(f"[{spec['arm']}] rank 0: {ckpt.times.loop_line(time.perf_counter() - started)}")
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(full, os.path.join(job, FINAL + ".tmp"))
        os.replace(os.path.join(job, FINAL + ".tmp"), os.path.join(job, FINAL))
        with open(os.path.join(job, HISTORY), "w") as f:
            json.dump(history, f)
        rows.close()
