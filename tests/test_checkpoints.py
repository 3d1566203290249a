"""Checkpoint files: damage is detected and the previous checkpoint is used; a non-finite
loss stops training with its step and keeps the last good checkpoint."""
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from monollm import checkpoints, config, train


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
    with pytest.raises(checkpoints.CorruptCheckpoint, match=os.path.join(folder, checkpoints.STATE)):
        checkpoints.read(folder)
    assert not os.path.exists(marker)
    torch.load(os.path.join(folder, checkpoints.STATE), weights_only=False)  # a full unpickle runs it
    assert os.path.exists(marker)


def test_training_checkpoint_on_disk_is_read_back_without_unpickling(tmp_path):
    """A checkpoint that train() writes (model, AdamW, scheduler, RNG states, history) passes
    torch.load(weights_only=True), and training resumed from it ends where it would have."""
    tcfg = config.TrainConfig(tokens=16 * 8 * 5, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=0,
                              eval_every=2)
    blocks = np.random.default_rng(0).integers(0, 128, size=(64, 16), dtype=np.int32)
    folders = {}
    whole = train.train(_tiny_model(), blocks, blocks[:8], tcfg, 0, "cpu", arm="baseline", log=lambda m: None,
                        save_checkpoint=lambda state, step: folders.setdefault(
                            step, checkpoints.write(str(tmp_path / str(step)), state)))
    assert sorted(folders) == [2, 4]
    torch.load(os.path.join(folders[4], checkpoints.STATE), weights_only=True)
    state = checkpoints.read(folders[4])
    assert set(state["rng"]) >= {"python", "numpy", "torch"} and state["step"] == 4
    resumed = train.train(_tiny_model(), blocks, blocks[:8], tcfg, 0, "cpu", arm="baseline", log=lambda m: None,
                          resume=state)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]


class _FakeCheckpointAPI:
    """Stands in for `current.checkpoint`: keeps saved folders in a dict, like the datastore."""

    def __init__(self):
        self.saved, self.is_loaded, self.directory = [], False, None

    def save(self, path, name, metadata, storage_format):
        keep = tempfile.mkdtemp()
        shutil.copytree(path, keep, dirs_exist_ok=True)
        self.saved.append({"key": keep, "name": name, "metadata": metadata})

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


def test_fresh_task_restores_nothing():
    assert checkpoints.StepCheckpointer(_FakeCurrent(), "baseline").restore() is None


def _tiny_model():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=128, max_position_embeddings=64)
    return GPTNeoXForCausalLM(cfg)


def test_non_finite_loss_stops_with_its_step_and_keeps_last_checkpoint(monkeypatch):
    tcfg = config.TrainConfig(tokens=16 * 8 * 10, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=0)
    blocks = np.random.default_rng(0).integers(0, 128, size=(64, 16), dtype=np.int32)
    real, calls = train._accumulate, {"n": 0}

    def poisoned(model, batch, tcfg, device, par=None):
        calls["n"] += 1
        return float("nan") if calls["n"] == 5 else real(model, batch, tcfg, device, par)

    monkeypatch.setattr(train, "_accumulate", poisoned)
    saved = []
    with pytest.raises(FloatingPointError, match="step 5/10"):
        train.train(_tiny_model(), blocks, blocks[:8], tcfg, 0, "cpu", arm="monotonic",
                    save_checkpoint=lambda state, step: saved.append(step), log=lambda m: None)
    assert saved == [2, 4]  # the last good checkpoint (step 4) is there; nothing after the NaN
