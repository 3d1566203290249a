"""Training over several processes (torchrun, gloo on CPU): DDP and FSDP give the history and
weights of one process, resume from their sharded checkpoints, and fail loudly."""
import json
import os
import pickle
import re
import shutil
import time

import numpy as np
import pytest
import torch

from monollm import checkpoints, config, pipeline, rank
from monollm.model import foundation
from monollm.train import distributed, sharded_load
from monollm.saving import SaveTimes, folder_bytes

T = 16


def blocks(vocab=300):
    rng = np.random.default_rng(0)
    return {"train": rng.integers(0, vocab, (40, T)).astype(np.int32),
            "val": rng.integers(0, vocab, (8, T)).astype(np.int32)}


def cfg(processes=1, strategy="ddp", mode="nonneg", **train):
    tcfg = dict(tokens=6 * 8 * train.get("grad_accum", 1) * T, batch_size=8, grad_accum=1, lr=3e-3, warmup_frac=0.2, log_every=0,
                val_blocks=8, eval_every=3)
    tcfg.update(train)
    return config.load({"device": "cpu", "threads": 1, "train": tcfg, "monotonic": {"mode": mode},
                        "parallel": {"strategy": strategy, "processes": processes}})


def weights(path):
    model, _ = foundation.load(path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Keep:
    """A StepCheckpointer stand-in: keeps copies of saved folders; restores a given one."""

    def __init__(self, root, resume=None):
        self.root, self.resume, self.saved, self.times = root, resume, {}, SaveTimes()

    def save_folder(self, folder, step):  # counted as StepCheckpointer counts its stores
        size = folder_bytes(folder)
        self.saved[step] = shutil.copytree(folder, os.path.join(self.root, f"step-{step}"))
        self.times.stored(size, 0.5)

    def restore_folder(self):
        return checkpoints.check(self.resume) if self.resume else None


def train_arm(c, model_dir, arm, out, **kw):
    return pipeline.train_arm(c, model_dir, blocks(), arm, str(out), **kw)


def assert_same_history(got, want):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["batch_hash"] for r in got] == [r["batch_hash"] for r in want]
    for key in ("loss", "grad_norm", "lr"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=1e-4, err_msg=key)
    np.testing.assert_allclose([r["val_loss"] for r in got], [r["val_loss"] for r in want], rtol=1e-4)


# fsdp as config/pythia-6.9b.toml runs it: recomputed activations, the monotonic arm's V sharded;
# sign_frozen shards V beside a frozen sign pattern (a buffer every rank must hold whole)
@pytest.mark.parametrize("strategy, arm, accum, recompute, mode", [("ddp", "baseline", 2, False, "nonneg"),
                                                                  ("fsdp", "monotonic", 1, True, "nonneg"),
                                                                  ("fsdp", "monotonic", 1, False, "sign_frozen")])
def test_two_processes_match_one(model_dir, tmp_path, strategy, arm, accum, recompute, mode):
    settings = dict(grad_accum=accum, grad_checkpointing=recompute, mode=mode)
    one = train_arm(cfg(**settings), model_dir, arm, tmp_path / "one")
    rows = []
    two = train_arm(cfg(2, strategy, **settings), model_dir, arm, tmp_path / "two", on_step=rows.append)
    assert len(one.history) == 6 and len({r["loss"] for r in one.history}) == 6
    assert_same_history(two.history, one.history)
    assert rows == two.history  # the live card saw every row, in order
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = max(float((a[k] - weights(model_dir)[k]).abs().max()) for k in a)
    assert moved > 1e-3  # training changed the weights, so agreeing means something
    if arm == "monotonic":
        from monollm.model.monotonic import PROMISE

        assert two.constraint["after_materializing"][PROMISE[mode]] == 0
        assert two.constraint["after_materializing"]["matrices"] == 4


def test_sharded_checkpoint_resumes_to_the_same_result_on_other_ranks(model_dir, tmp_path, capfd):
    c = cfg(2, "fsdp", checkpoint_every=2)
    keep = Keep(str(tmp_path / "kept"))
    full = train_arm(c, model_dir, "monotonic", tmp_path / "full", checkpointer=keep)
    assert sorted(keep.saved) == [2, 4]
    # the coordinator reports what it stored, rank 0 its own loop's time in saves (both of them)
    out = capfd.readouterr().out
    stored = sum(folder_bytes(f) for f in keep.saved.values())
    assert f"[monotonic] checkpoints: 2 stored, {stored / 1e6:.1f} MB in 1.0 s" in out
    assert "the training loop spent" not in out.split("[monotonic] checkpoints:")[1].splitlines()[0]
    assert keep.times.train_s > 0
    assert "[monotonic] rank 0: the training loop spent" in out
    files = os.listdir(keep.saved[4])
    assert {"meta.json", "rest.pt", "rng-0.pt", "rng-1.pt", "shards"} <= set(files)
    rows = []  # resumed on 4 processes: the shards of 2 are redistributed (the flow test resumes on 2)
    resumed = train_arm(cfg(4, "fsdp", checkpoint_every=2), model_dir, "monotonic", tmp_path / "resumed",
                        on_step=rows.append,
                        checkpointer=Keep(str(tmp_path / "kept2"), resume=keep.saved[2]))
    assert resumed.history[2]["resumed_from"] == 2
    # the live card gets the checkpoint's rows first, marked, then this task's
    assert [(r["step"], bool(r.get("replayed"))) for r in rows] == [(s, s <= 2) for s in range(1, 7)]
    assert_same_history(resumed.history, full.history)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # one process reads the folder as sharded and says so, instead of training from scratch
    with pytest.raises(checkpoints.CorruptCheckpoint, match="sharded"):
        checkpoints.read(keep.saved[4])


class SlowStore(Keep):
    """Stores each folder slowly, noting which folders await storing when it starts."""

    def __init__(self, root):
        super().__init__(root)
        self.waiting = []

    def save_folder(self, folder, step):
        self.waiting.append(sorted(os.listdir(os.path.dirname(folder))))
        time.sleep(1.0)  # a training step of this model takes milliseconds
        super().save_folder(folder, step)


def test_ranks_wait_for_a_slow_store_instead_of_queueing_checkpoints_on_disk(model_dir, tmp_path, capfd):
    """Storing slower than training: the ranks' next save waits until the coordinator has stored
    the previous folder, so the node's disk never holds a queue of checkpoints (at 6.9b each is
    ~110 GB); rank 0 reports the waits as time its loop spent in saves."""
    store = SlowStore(str(tmp_path / "kept"))
    train_arm(cfg(2, "ddp", checkpoint_every=1), model_dir, "baseline", tmp_path / "out", checkpointer=store)
    assert sorted(store.saved) == [1, 2, 3, 4, 5]
    assert store.waiting == [[f"step-{s:09d}"] for s in range(1, 6)]
    assert re.search(r"\[baseline\] rank 0: the training loop spent .* waiting \d+ time\(s\)", capfd.readouterr().out)


def test_damaged_shard_is_named(model_dir, tmp_path):
    keep = Keep(str(tmp_path / "kept"))
    train_arm(cfg(2, "ddp", checkpoint_every=3), model_dir, "baseline", tmp_path / "out", checkpointer=keep)
    # both ranks hashed a share; together their digests cover every file of the folder
    with open(os.path.join(keep.saved[3], checkpoints.META)) as f:
        listed = json.load(f)["files"]
    assert sorted(listed) == checkpoints.files_of(keep.saved[3], skip=(checkpoints.META,))
    assert listed == checkpoints.digests(checkpoints.check(keep.saved[3]), skip=(checkpoints.META,))
    shard_dir = os.path.join(keep.saved[3], "shards")
    shard = os.path.join(shard_dir, sorted(f for f in os.listdir(shard_dir) if f.endswith(".distcp"))[0])
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(checkpoints.CorruptCheckpoint, match=shard):
        checkpoints.check(keep.saved[3])


def test_process_group_waits_as_long_as_parallel_timeout_minutes(tmp_path, monkeypatch):
    """A rank's collectives give up after parallel.timeout_minutes, not torch's default."""
    import datetime

    import torch.distributed as dist

    class Stop(Exception):
        pass

    got = {}

    def init(backend, timeout):
        got.update(backend=backend, timeout=timeout)
        raise Stop

    c = config.load({"device": "cpu", "parallel": {"timeout_minutes": 45}})
    with open(tmp_path / distributed.JOB, "w") as f:
        json.dump({"config": config.to_dict(c)}, f)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "init_process_group", init)
    with pytest.raises(Stop):
        rank.main(str(tmp_path))
    assert got == {"backend": "gloo", "timeout": datetime.timedelta(minutes=45)}


def test_a_failing_rank_stops_the_step_with_its_error(model_dir, tmp_path):
    os.makedirs(tmp_path / "empty")
    bad = checkpoints.seal(str(tmp_path / "empty"), 2)  # whole, but without the files a resume needs
    with pytest.raises(RuntimeError, match=r"training on 2 processes failed .*rank \d: CorruptCheckpoint: "
                                           r"checkpoint file missing: .*rest.pt"):
        train_arm(cfg(2, "ddp"), model_dir, "baseline", tmp_path / "out",
                  checkpointer=Keep(str(tmp_path / "k"), resume=bad))


def test_planted_pickles_in_a_sharded_checkpoint_are_refused_without_running(tmp_path):
    """Every file of a sharded checkpoint that torch would unpickle (rest.pt, rng-N.pt, the DCP
    metadata, DCP's non-tensor entries) is read without building anything but plain values."""
    import torch.distributed.checkpoint as dcp

    from test_checkpoints import Planted

    marker = str(tmp_path / "code-ran")
    folder = tmp_path / "ckpt"
    os.makedirs(folder)
    torch.save({"step": 2, "history": [], "scheduler": Planted(marker)}, folder / "rest.pt")
    with pytest.raises(checkpoints.CorruptCheckpoint, match="rest.pt"):
        sharded_load.resume_state(str(folder), 0)
    torch.save({"step": 2, "history": [], "scheduler": {}}, folder / "rest.pt")
    torch.save({"torch": Planted(marker)}, folder / "rng-0.pt")
    with pytest.raises(checkpoints.CorruptCheckpoint, match="rng-0.pt"):
        sharded_load.resume_state(str(folder), 1)  # rank 1 falls back to rank 0's RNG file
    shards = str(folder / "shards")
    dcp.save({"w": torch.ones(2), "extra": Planted(marker)}, checkpoint_id=shards, no_dist=True)
    with pytest.raises(checkpoints.CorruptCheckpoint, match="entry extra"):
        sharded_load.load_shards({"w": torch.zeros(2), "extra": None}, shards)
    with open(os.path.join(shards, ".metadata"), "wb") as f:
        pickle.dump(Planted(marker), f)
    with pytest.raises(checkpoints.CorruptCheckpoint, match="posix.mkdir"):
        sharded_load.load_shards({"w": torch.zeros(2)}, shards)
    assert not os.path.exists(marker)


def test_sharded_checkpoint_entries_load_back(tmp_path):
    import torch.distributed.checkpoint as dcp

    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    saved = {"model": m.state_dict(), "optimizer": opt.state_dict()}
    dcp.save(saved, checkpoint_id=str(tmp_path / "shards"), no_dist=True)
    loaded = {"model": {k: torch.zeros_like(v) for k, v in m.state_dict().items()},
              "optimizer": torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=5.0).state_dict()}
    sharded_load.load_shards(loaded, str(tmp_path / "shards"))
    for k, v in saved["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 1e-3


def test_process_count_is_checked():
    assert distributed.processes(cfg(0), "cpu") == 1
    assert distributed.processes(cfg(2), "cpu") == 2
    with pytest.raises(config.ConfigError, match="train.batch_size"):
        cfg(3)
    with pytest.raises(config.ConfigError, match="parallel.strategy"):
        cfg(2, "zero3")
    raw = {"resources": {"gpu": 1, "train_gpu": 4}, "parallel": {"processes": 2}}
    with pytest.raises(config.ConfigError, match="parallel.processes.*4 GPUs"):
        config.load(raw)
    with pytest.raises(config.ConfigError, match="resources.train_gpu"):
        config.load({"resources": {"gpu": 2}})
    assert config.load({"resources": {"gpu": 1, "train_gpu": 4}, "parallel": {"strategy": "fsdp"}}).resources.train_gpu == 4
