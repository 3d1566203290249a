"""Checkpoint files: damage is detected and the previous checkpoint is used; a non-finite
loss stops training with its step and keeps the last good checkpoint."""
import errno
import json
import os
import shutil
import tempfile
import threading

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from monollm import checkpoints, config, errors, saving
from monollm.train import loop, sharded_save


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "history": [{"step": step}]}


def test_write_read_round_trip(tmp_path):
    checkpoints.write(str(tmp_path / "c"), _state(7))
    state = checkpoints.read(str(tmp_path / "c"))
    assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.full((3,), 7.0))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_names_the_file(tmp_path, damage):
    folder = checkpoints.write(str(tmp_path / "c"), _state(3))
    path = os.path.join(folder, checkpoints.STATE)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "flip":
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    else:
        os.remove(path)
    with pytest.raises(checkpoints.CorruptCheckpoint, match=path):
        checkpoints.read(folder)


class Planted:
    """Unpickling this creates a directory: stands in for any code a planted pickle could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_planted_pickle_is_refused_without_running_it(tmp_path):
    marker = str(tmp_path / "code-ran")
    folder = str(tmp_path / "c")
    os.makedirs(folder)
    torch.save({**_state(3), "payload": Planted(marker)}, os.path.join(folder, checkpoints.STATE))
    checkpoints.seal(folder, 3)  # whoever planted it rewrote the checksums too: they cannot help here
    with pytest.raises(checkpoints.CorruptCheckpoint, match=os.path.join(folder, checkpoints.STATE)) as err:
        checkpoints.read(folder)
    assert "\n" not in str(err.value) and "global" in str(err.value).lower(), str(err.value)  # one line
    assert not os.path.exists(marker)
    torch.load(os.path.join(folder, checkpoints.STATE), weights_only=False)  # a full unpickle runs it
    assert os.path.exists(marker)


def test_training_checkpoint_on_disk_is_read_back_without_unpickling(tmp_path):
    """A checkpoint that train() writes (model, AdamW, scheduler, RNG states, history) passes
    torch.load(weights_only=True), and training resumed from it ends where it would have."""
    tcfg = config.TrainConfig(tokens=16 * 8 * 5, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=0,
                              eval_every=2)
    blocks = np.random.default_rng(0).integers(0, 128, size=(64, 16), dtype=np.int32)
    class Folders(checkpoints.InMemory):  # a Checkpoint that writes each state to its own folder
        def save(self, state, step):
            self.saved[step] = checkpoints.write(str(tmp_path / str(step)), state)

    ck = Folders()
    folders = ck.saved
    whole = loop.train(_tiny_model(), blocks, blocks[:8], tcfg, 0, "cpu", arm="baseline", log=lambda m: None,
                        checkpoint=ck)
    assert sorted(folders) == [2, 4]
    torch.load(os.path.join(folders[4], checkpoints.STATE), weights_only=True)
    state = checkpoints.read(folders[4])
    assert set(state["rng"]) >= {"python", "numpy", "torch"} and state["step"] == 4
    resumed = loop.train(_tiny_model(), blocks, blocks[:8], tcfg, 0, "cpu", arm="baseline", log=lambda m: None,
                          checkpoint=checkpoints.InMemory(state))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]


class _FakeCheckpointAPI:
    """Stands in for `current.checkpoint`: keeps saved folders in a dict, like the datastore."""

    def __init__(self):
        self.saved, self.is_loaded, self.directory = [], False, None

    def save(self, path, name, metadata, storage_format):
        keep = tempfile.mkdtemp()
        shutil.copytree(path, keep, dirs_exist_ok=True)
        ref = {"key": keep, "name": name, "metadata": metadata}
        self.saved.append(ref)
        return dict(ref)  # like metaflow-checkpoint: a reference, not the stored entry itself

    def delete(self, ref):
        """What metaflow's delete_model does to a stored checkpoint: gone from store and listing."""
        self.saved = [c for c in self.saved if c["key"] != ref["key"]]
        shutil.rmtree(ref["key"])

    def list(self, name=None, task=None, attempt=None):
        if attempt not in (None, 0):
            raise ValueError("no such attempt")
        return [c for c in self.saved if c["name"] == name]

    def load(self, ref, path):
        shutil.copytree(ref["key"], path, dirs_exist_ok=True)


class _FakeCurrent:
    flow_name, step_name, origin_run_id = "MonoFlow", "train_monotonic", None

    def __init__(self):
        self.checkpoint = _FakeCheckpointAPI()


def test_restore_falls_back_to_the_previous_checkpoint():
    current = _FakeCurrent()
    ck = checkpoints.StepCheckpointer(current, "monotonic", log=lambda m: None)
    for step in (10, 20):
        ck.save(_state(step), step)
    # a retried attempt: the newest checkpoint is loaded into the directory, and it is damaged
    current.checkpoint.is_loaded = True
    current.checkpoint.directory = current.checkpoint.saved[-1]["key"]
    with open(os.path.join(current.checkpoint.directory, checkpoints.STATE), "r+b") as f:
        f.truncate(10)
    messages = []
    ck.log = messages.append
    state = checkpoints.StepCheckpointer.restore(ck)
    assert state["step"] == 10
    assert any("truncated or corrupted" in m for m in messages)


def test_restore_with_only_damaged_checkpoints_stops_naming_the_file():
    current = _FakeCurrent()
    ck = checkpoints.StepCheckpointer(current, "monotonic", log=lambda m: None)
    ck.save(_state(10), 10)
    current.checkpoint.is_loaded = True
    current.checkpoint.directory = current.checkpoint.saved[-1]["key"]
    os.remove(os.path.join(current.checkpoint.directory, checkpoints.STATE))
    with pytest.raises(checkpoints.CorruptCheckpoint, match="state.pt"):
        ck.restore()


def _damage(ref: dict):
    """Flip a byte in the middle of a stored checkpoint's state.pt (same size: a checksum mismatch)."""
    path = os.path.join(ref["key"], checkpoints.STATE)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("case", ["retry", "resume"])
def test_every_checkpoint_damaged_stops_with_one_line_naming_each_and_what_to_do(case):
    """A retried task (its newest checkpoint loaded for it) or a resumed one (the origin run's, found
    by listing) whose every checkpoint is damaged: one message names each step tried and where it is
    stored, and says that a resume would try them again and a new run starts afresh."""
    from metaflow.exception import MetaflowException

    from monollm import errors

    current = _FakeCurrent()
    ck = _checkpointer(current)
    for step in (10, 20):
        ck.save(_state(step), step)
    for ref in current.checkpoint.saved:
        ref["url"] = f"file:///datastore/{ref['key']}"
        _damage(ref)
    if case == "retry":
        current.checkpoint.is_loaded, current.checkpoint.directory = True, current.checkpoint.saved[-1]["key"]
        current.run_id = "17"
    else:
        current.origin_run_id = "17"
        ck._origin_refs = lambda origin: list(reversed(current.checkpoint.saved))  # the origin's task, newest first
    with pytest.raises(checkpoints.NoReadableCheckpoint) as err:
        ck.restore()
    msg = str(err.value)
    first = "step 20 (loaded for this attempt): " if case == "retry" else "step 20: checkpoint file file:///datastore/"
    for needle in (first, "step 10: checkpoint file file:///datastore/", "state.pt is corrupted (checksum mismatch",
                   "A resume would try them again", "start a new run", "run --reuse-setup 17"):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert isinstance(err.value, checkpoints.CorruptCheckpoint)  # what callers caught before
    with pytest.raises(MetaflowException) as shown, errors.fixable("profile 'p'"):
        raise err.value
    assert shown.value.message == msg and "\n" not in msg


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_space_as_torch_says(obj, f, *args, **kwargs):
    """torch.save on a full disk: its writer raises a RuntimeError while handling the OSError."""
    f.write(b"x" * 10)
    try:
        _no_space()
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_a_full_disk_while_writing_a_checkpoint_names_the_path_and_the_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.torch, "save", _no_space_as_torch_says)
    monkeypatch.setattr(saving.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 5 * 10**6,
                                                                                        5 * 10**6))
    state = {"step": 7, "model": {"w": torch.zeros(1_000_000)}}  # 4.0 MB of tensors: 5 MB seemed enough
    with pytest.raises(errors.DiskFull) as err:
        checkpoints.write(str(tmp_path / "c"), state)
    msg = str(err.value)
    for needle in (f"no space left on the disk of {tmp_path / 'c'}", "a checkpoint of step 7 needed 4.0 MB",
                   "5.0 MB was free there", "resources.disk", "TMPDIR"):
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_a_full_disk_while_storing_a_checkpoint_names_the_datastore_and_reaches_the_training_thread(monkeypatch):
    """The store into a local datastore on a full disk (background save): the next `wait` raises
    DiskFull, one line naming the datastore, not a RuntimeError around an [Errno 28]."""
    current = _FakeCurrent()
    current.checkpoint.save = _no_space
    monkeypatch.setattr(checkpoints, "datastore_place", lambda: "/data/.metaflow")
    ck = _checkpointer(current, background=True)
    ck.save(_state(3), 3)
    with pytest.raises(errors.DiskFull) as err:
        ck.wait()
    msg = str(err.value)
    assert msg.startswith("[monotonic] saving a checkpoint failed: no space left on the disk of /data/.metaflow: "
                          "storing the checkpoint of step 3 needed "), msg
    assert " was free there" in msg and "METAFLOW_DATASTORE_SYSROOT_LOCAL" in msg


def test_fresh_task_restores_nothing():
    assert checkpoints.StepCheckpointer(_FakeCurrent(), "baseline").restore() is None


def _checkpointer(current, **kw):
    return checkpoints.StepCheckpointer(current, "monotonic", log=lambda m: None,
                                        delete=current.checkpoint.delete, **kw)


def test_only_the_newest_checkpoints_stay_stored_and_resume_finds_the_newest():
    current = _FakeCurrent()
    ck = _checkpointer(current, keep=2)
    for step in (10, 20, 30, 40):
        ck.save(_state(step), step)
    assert [c["metadata"]["step"] for c in current.checkpoint.saved] == [30, 40]
    assert ck.restore() is None  # a fresh task: nothing, however many are stored
    current.checkpoint.is_loaded = True  # a retry: the newest is loaded into the directory ...
    current.checkpoint.directory = current.checkpoint.saved[-1]["key"]
    assert ck.restore()["step"] == 40
    shutil.rmtree(current.checkpoint.directory)  # ... and if it is gone, the one kept before it
    assert ck.restore()["step"] == 30


def test_keep_one_keeps_only_the_newest_and_a_failed_delete_keeps_training():
    current = _FakeCurrent()
    messages = []
    ck = checkpoints.StepCheckpointer(current, "baseline", log=messages.append, keep=1,
                                      delete=lambda ref: (_ for _ in ()).throw(OSError("denied")))
    ck.save(_state(1), 1)
    ck.save(_state(2), 2)  # the delete fails: logged, the checkpoint stays, the save succeeds
    assert [c["metadata"]["step"] for c in current.checkpoint.saved] == [1, 2]
    assert any("could not delete" in m and "denied" in m for m in messages)
    with pytest.raises(ValueError, match="keep"):
        checkpoints.StepCheckpointer(current, "baseline", keep=0)


def test_without_keep_every_checkpoint_stays_stored():
    """The attacks' checkpointers give no `keep`: their small checkpoints are all kept."""
    current = _FakeCurrent()
    ck = checkpoints.StepCheckpointer(current, "attack-uat", log=lambda m: None, delete=current.checkpoint.delete)
    for step in (1, 2, 3):
        ck.save(_state(step), step)
    assert [c["metadata"]["step"] for c in current.checkpoint.saved] == [1, 2, 3]


def test_background_save_stores_sealed_folders_and_resume_is_exact():
    """save_in_background: the same stored checkpoints as save, each sealed before it is stored."""
    current = _FakeCurrent()
    ck = _checkpointer(current, keep=3)
    offered = []
    real_save = current.checkpoint.save

    def save(path, **kw):  # what the datastore is offered must already be sealed and whole
        offered.append(checkpoints.step_of(checkpoints.check(path)))
        return real_save(path, **kw)

    current.checkpoint.save = save
    for step in (1, 2, 3, 4):
        ck.save_in_background(_state(step), step)
    ck.wait()
    assert offered == [1, 2, 3, 4]
    assert [checkpoints.read(c["key"])["step"] for c in current.checkpoint.saved] == [2, 3, 4]
    assert checkpoints.read(current.checkpoint.saved[-1]["key"])["model"]["w"].tolist() == [4.0] * 3


def test_background_save_stores_the_state_as_it_was_when_saved(monkeypatch):
    """Training changes the weights in place and appends to the history right after a save:
    the stored checkpoint holds the state at the save, not what the thread finds later."""
    current = _FakeCurrent()
    ck = _checkpointer(current)
    state = _state(5)
    gate, real_write = threading.Event(), checkpoints.write
    monkeypatch.setattr(checkpoints, "write", lambda folder, st: (gate.wait(), real_write(folder, st))[1])
    ck.save_in_background(state, 5)  # the thread writes only once training has changed the state
    state["model"]["w"].add_(100.0)  # what optimizer.step does to a live tensor
    state["history"].append({"step": 6})
    gate.set()
    ck.wait()
    stored = checkpoints.read(current.checkpoint.saved[-1]["key"])
    assert stored["model"]["w"].tolist() == [5.0] * 3 and stored["history"] == [{"step": 5}]


def test_snapshot_reuses_an_earlier_copy_without_aliasing_the_live_state():
    live = {"model": {"w": torch.arange(4.0), "b": torch.ones(2)}, "rng": [torch.tensor([1, 2])], "step": 3}
    first = checkpoints.snapshot(live)
    assert first["model"]["w"].data_ptr() != live["model"]["w"].data_ptr()
    live["model"]["w"].mul_(10)
    live["model"]["b"] = torch.ones(5)  # a new shape: its old buffer cannot hold it
    second = checkpoints.snapshot(live, reuse=first)
    assert second["model"]["w"].data_ptr() == first["model"]["w"].data_ptr()  # copied in place
    assert second["rng"][0].data_ptr() == first["rng"][0].data_ptr()
    assert second["model"]["b"].shape == (5,) and second["model"]["b"].data_ptr() != first["model"]["b"].data_ptr()
    assert second["model"]["w"].tolist() == [0.0, 10.0, 20.0, 30.0] and second["step"] == 3
    live["model"]["w"].add_(1)  # later training does not reach the copy
    assert second["model"]["w"].tolist() == [0.0, 10.0, 20.0, 30.0]
    # reusing the live state itself would alias it: a fresh copy is made instead
    assert checkpoints.snapshot(live, reuse=live)["model"]["w"].data_ptr() != live["model"]["w"].data_ptr()


def test_background_saves_of_one_live_state_each_store_their_own_step():
    """Training updates the same tensors in place between saves; each background save copies
    into the previous save's host copy, once that save is stored, and stores its own values."""
    current = _FakeCurrent()
    ck = _checkpointer(current, keep=3)
    state = _state(1)
    ptrs = []
    for step in (1, 2, 3):
        state["model"]["w"].fill_(float(step))
        state["step"] = step
        ck.save_in_background(state, step)
        ptrs.append(ck._copy["model"]["w"].data_ptr())
    ck.wait()
    assert len(set(ptrs)) == 1  # one host copy, reused
    assert [checkpoints.read(c["key"])["model"]["w"].tolist() for c in current.checkpoint.saved] == \
        [[1.0] * 3, [2.0] * 3, [3.0] * 3]


def test_background_save_failure_is_raised_on_the_next_wait():
    current = _FakeCurrent()
    ck = _checkpointer(current)

    def broken(**kw):
        raise OSError("bucket gone")

    current.checkpoint.save = lambda path, **kw: broken()
    ck.save_in_background(_state(1), 1)
    with pytest.raises(RuntimeError, match="bucket gone"):
        ck.wait()
    ck.wait()  # reported once


def test_a_save_that_waits_for_a_slow_store_is_counted_and_logged():
    """The task measures its own checkpoint costs (monollm.saving): every stored folder's bytes,
    and a save that must wait for the previous store counts as blocked on the training loop."""
    current, messages = _FakeCurrent(), []
    ck = checkpoints.StepCheckpointer(current, "baseline", log=messages.append, keep=3, background=True)
    gate, real_save, seen = threading.Event(), current.checkpoint.save, []
    current.checkpoint.save = lambda path, **kw: (gate.wait(), real_save(path, **kw))[1]  # a slow store
    real_finish = ck.times.finish

    def finish(busy, join):  # the store of step 1 is held until the next save has seen it busy
        seen.append(busy)
        gate.set()
        return real_finish(busy, join)

    ck.times.finish = finish
    ck.save(_state(1), 1)
    ck.save(_state(2), 2)  # step 1's store is still running: this save waits for it
    ck.wait()
    t = ck.times
    assert seen[0] is True and len(seen) == 2  # the final wait may find step 2 stored, or not yet
    assert (t.stores, t.waits) == (2, sum(seen)) and 0 < t.waited_s <= t.loop_s
    assert t.stored_bytes == sum(saving.folder_bytes(c["key"]) for c in current.checkpoint.saved)
    assert any(m.startswith("[baseline] waited ") and "checkpoint of step 1 to be stored" in m for m in messages)
    assert sum("checkpoint saved at step" in m and " MB/s)" in m for m in messages) == 2
    line = t.report("baseline", train_s=4 * t.loop_s)
    assert line.startswith(f"[baseline] checkpoints: 2 stored, {t.stored_bytes / 1e6:.1f} MB in ")
    assert "of training in checkpoint saves (25.0%)" in line and f"waiting {t.waits} time(s)" in line
    assert t.as_dict()["train_s"] == 4 * t.loop_s


def _rank_files(folder, world, rng):
    """A sharded checkpoint folder as `world` ranks leave it (sharded_save.wrote's names)."""
    (folder / "shards").mkdir(parents=True)
    for r in range(world):
        (folder / "shards" / f"__{r}_0.distcp").write_bytes(rng.bytes(1000 * (r + 1)))
        (folder / f"rng-{r}.pt").write_bytes(rng.bytes(10))
    (folder / "shards" / ".metadata").write_bytes(b"meta")
    (folder / "rest.pt").write_bytes(b"rest")


def _leave_digests(folder, ranks):
    for r in ranks:
        mine = {rel for rel in checkpoints.files_of(str(folder)) if sharded_save.wrote(rel, r)}
        (folder / sharded_save.DIGESTS.format(rank=r)).write_text(
            json.dumps(checkpoints.digests(str(folder), only=mine)))


def test_each_rank_hashes_its_own_files_and_rank_0_seals_them_all(tmp_path):
    """Per-rank hashing (monollm.train.sharded_save): the ranks' files partition the folder, and the
    digests they leave seal it as one process would; the digest files are gone once sealed."""
    folder, world = tmp_path / "c", 3
    _rank_files(folder, world, np.random.default_rng(0))
    owners = {rel: [r for r in range(world) if sharded_save.wrote(rel, r)] for rel in checkpoints.files_of(str(folder))}
    assert all(len(o) == 1 for o in owners.values()), owners
    assert owners["shards/.metadata"] == owners["rest.pt"] == [0] and owners["shards/__2_0.distcp"] == [2]
    _leave_digests(folder, range(world))
    sharded_save.seal(str(folder), 3, world, timeout_s=1)
    assert checkpoints.files_of(str(folder)) == sorted([*owners, checkpoints.META])
    with open(folder / checkpoints.META) as f:
        assert json.load(f)["files"] == checkpoints.digests(str(folder), skip=(checkpoints.META,))
    checkpoints.check(str(folder))
    (folder / "shards" / "__2_0.distcp").write_bytes(np.random.default_rng(1).bytes(3000))  # same size, other bytes
    with pytest.raises(checkpoints.CorruptCheckpoint, match="__2_0.distcp"):
        checkpoints.check(str(folder))


def test_a_rank_whose_digests_never_come_or_a_file_no_rank_hashed_stops_the_seal(tmp_path):
    folder = tmp_path / "c"
    _rank_files(folder, 2, np.random.default_rng(0))
    _leave_digests(folder, [0])
    with pytest.raises(TimeoutError, match=r"no digests from rank\(s\) \[1\]"):
        sharded_save.seal(str(folder), 1, 2, timeout_s=0.3, poll_s=0.05)
    _leave_digests(folder, [1])
    (folder / "shards" / "stray.bin").write_bytes(b"x")  # a file of a layout the ranks do not know
    with pytest.raises(checkpoints.CorruptCheckpoint, match=r"unhashed: \['shards/stray.bin'\]"):
        sharded_save.seal(str(folder), 1, 2, timeout_s=1)
    assert not (folder / checkpoints.META).exists()


def _tiny_model():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=128, max_position_embeddings=64)
    return GPTNeoXForCausalLM(cfg)


def test_non_finite_loss_stops_with_its_step_and_keeps_last_checkpoint(monkeypatch):
    tcfg = config.TrainConfig(tokens=16 * 8 * 10, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=0)
    blocks = np.random.default_rng(0).integers(0, 128, size=(64, 16), dtype=np.int32)
    real, calls = loop._accumulate, {"n": 0}

    def poisoned(model, batch, tcfg, device, par=None):
        calls["n"] += 1
        return float("nan") if calls["n"] == 5 else real(model, batch, tcfg, device, par)

    monkeypatch.setattr(loop, "_accumulate", poisoned)
    saved = checkpoints.InMemory()
    with pytest.raises(FloatingPointError, match="step 5/10"):
        loop.train(_tiny_model(), blocks, blocks[:8], tcfg, 0, "cpu", arm="monotonic", checkpoint=saved,
                    log=lambda m: None)
    assert list(saved.saved) == [2, 4]  # the last good checkpoint (step 4) is there; nothing after the NaN


def test_background_checkpoints_of_a_run_stopped_by_nan_resume_exactly(monkeypatch):
    """Training goes on while checkpoints are sealed and stored; the run stopped by a NaN still
    stores its last good one (the newest `keep` only), and continuing from it ends where an
    uninterrupted run does."""
    from monollm import pipeline

    tcfg = config.TrainConfig(tokens=16 * 8 * 8, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=0)
    cfg = config.ExperimentConfig(train=tcfg)
    rows = np.random.default_rng(0).integers(0, 128, size=(64, 16), dtype=np.int32)
    blocks = {"train": rows, "val": rows[:8]}
    whole = pipeline._train_one_process(cfg, _tiny_model(), blocks, "monotonic", "cpu", None, None)
    real, calls = loop._accumulate, {"n": 0}

    def poisoned(model, batch, tcfg, device, par=None):
        calls["n"] += 1
        return float("nan") if calls["n"] == 7 else real(model, batch, tcfg, device, par)

    monkeypatch.setattr(loop, "_accumulate", poisoned)
    current = _FakeCurrent()
    with pytest.raises(FloatingPointError, match="step 7/8"):
        pipeline._train_one_process(cfg, _tiny_model(), blocks, "monotonic", "cpu", _checkpointer(current, keep=2, background=True),
                                    None)
    assert [c["metadata"]["step"] for c in current.checkpoint.saved] == [4, 6]
    monkeypatch.setattr(loop, "_accumulate", real)
    current.checkpoint.is_loaded = True  # the retry: the newest checkpoint is in the directory
    current.checkpoint.directory = current.checkpoint.saved[-1]["key"]
    fresh = _tiny_model()
    with torch.no_grad():  # other weights: everything must come from the checkpoint
        for p in fresh.parameters():
            p.add_(0.5)
    resumed = pipeline._train_one_process(cfg, fresh, blocks, "monotonic", "cpu", _checkpointer(current, keep=2, background=True),
                                          None)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert resumed[6]["resumed_from"] == 6


PRUNE_FLOW = '''
from metaflow import FlowSpec, checkpoint, current, retry, step


class PruneFlow(FlowSpec):
    @retry(times=1)
    @checkpoint(load_policy="fresh", show_card=False)
    @step
    def start(self):
        import torch

        from monollm import checkpoints

        ck = checkpoints.StepCheckpointer(current, "arm", keep=2)
        if current.retry_count == 0:
            for step in (1, 2, 3, 4):
                ck.save_in_background({"step": step, "w": torch.full((4,), float(step))}, step)
            ck.wait()
            raise RuntimeError("the first attempt fails after four checkpoints")
        self.stored_by_first = sorted(c["metadata"]["step"] for c in ck._listed(None))
        self.restored = ck.restore()["step"]
        ck.save({"step": 5, "w": torch.full((4,), 5.0)}, 5)
        self.stored = sorted(c["metadata"]["step"] for c in ck._listed(None))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PruneFlow()
'''


@pytest.mark.flow
def test_older_checkpoints_are_deleted_from_the_real_datastore(tmp_path):
    """Through metaflow-checkpoint itself: a task keeps its newest 2 of 4 checkpoints (the older
    ones' files are gone from the datastore), its retry continues from the newest, and a retry
    leaves what the failed attempt stored."""
    import subprocess
    import sys

    from conftest import flow_env
    from metaflow import Flow, namespace

    (tmp_path / "prune_flow.py").write_text(PRUNE_FLOW)
    done = subprocess.run([sys.executable, "prune_flow.py", "run"], cwd=tmp_path, env=flow_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deleted the checkpoint of step 1" in done.stderr + done.stdout
    namespace(None)
    run = Flow("PruneFlow").latest_run
    data = run["start"].task.data
    assert (data.stored_by_first, data.restored, data.stored) == ([3, 4], 4, [3, 4, 5])
    root = os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"]
    files = [os.path.join(d, checkpoints.STATE) for d, _, names in os.walk(root)  # glob skips .metaflow
             if checkpoints.STATE in names and "mf.checkpoints" in d and "PruneFlow" in d]
    assert sorted(float(checkpoints.load_tensors(f)["w"][0]) for f in files) == [3.0, 4.0, 5.0]


def test_a_sharded_save_returns_once_staged_and_seals_in_the_background(tmp_path, monkeypatch):
    """sharded_save.start on one gloo rank: it returns while the writing is held back (the folder
    not yet sealed), the state it wrote is the state at the call even though the tensors change
    right after it, and `result()` waits for the seal."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        group = dist.new_group(backend="gloo")
        release, real_write = threading.Event(), dcp.FileSystemWriter.write_data

        def held(*a, **kw):  # the shards are written only once the test lets them
            assert release.wait(60)
            return real_write(*a, **kw)

        monkeypatch.setattr(dcp.FileSystemWriter, "write_data", held)
        weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        state = {"model": {"w": weight}, "optimizer": {"m": weight * 2}, "rng": {"seed": 1},
                 "scheduler": {}, "history": [{"step": 1}], "step": 1}
        folder = tmp_path / "step-1"
        pending = sharded_save.start(str(folder), 0, 1, state, 1, group, timeout_s=60)
        weight.add_(100.0)  # training goes on, in place
        assert not (folder / checkpoints.META).exists()
        release.set()
        pending.result()
        checkpoints.check(str(folder))
        back = {"model": {"w": torch.zeros(2, 3)}, "optimizer": {"m": torch.zeros(2, 3)}}
        dcp.load(back, checkpoint_id=str(folder / "shards"), process_group=group)
        torch.testing.assert_close(back["model"]["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
        torch.testing.assert_close(back["optimizer"]["m"], 2 * torch.arange(6, dtype=torch.float32).reshape(2, 3))
    finally:
        dist.destroy_process_group()


def test_an_error_in_a_background_save_is_raised_to_whoever_waits():
    def fails():
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        sharded_save.Pending(fails).result()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only): a disk that a 4 MB checkpoint cannot fit."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root and mount): {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_a_byte_is_written(small_disk):
    """On a 2 MiB disk, a 4 MB checkpoint stops at the free-space check with one line (what it
    needs, what is free), and leaves no partial file behind."""
    state = {"step": 7, "model": {"w": torch.zeros(1_000_000)}}  # 4.0 MB of tensors
    with pytest.raises(errors.DiskFull) as err:
        checkpoints.write(str(small_disk / "c"), state)
    msg = str(err.value)
    assert "\n" not in msg and "a checkpoint of step 7 needs 4.0 MB" in msg and "is free there" in msg, msg
    assert not any(files for _, _, files in os.walk(small_disk)), list(os.walk(small_disk))
    checkpoints.write(str(small_disk / "c"), {"step": 1, "model": {"w": torch.zeros(1000)}})  # one that fits
    assert checkpoints.step_of(str(small_disk / "c")) == 1
