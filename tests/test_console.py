"""What a run writes to the console besides its own progress lines: lm-eval's output captured
unless it names an error, an attack's tiny search checkpoints logged once, and a resume that
finds no checkpoint saying it starts from step 1."""
import os
import subprocess
import sys

import pytest

from monollm import checkpoints
from test_checkpoints import _FakeCurrent, _state


def noisy(fail: bool = False):
    """What lm-eval does in a step: a progress bar on stderr, a warning, a child process (git)
    writing to the inherited stderr."""
    print("  0%|          | 0/300 [00:00<?, ?it/s] 11%|#         | 32/300", file=sys.stderr, flush=True)
    print("`pretrained` model kwarg is not of type `str`.", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('fatal: not a git repository\\n')"])
    print("ERROR something lm-eval wants seen", file=sys.stderr, flush=True)
    if fail:
        raise RuntimeError("the task broke")


QUIET = """
import sys
sys.path.insert(0, {tests!r})
from monollm.evaluation import downstream
from test_console import noisy
with downstream.quiet():
    noisy(fail={fail})
print("after the block", file=sys.stderr)
"""


def in_a_process(fail: bool) -> subprocess.CompletedProcess:
    """downstream.quiet around `noisy` in a process of its own (pytest captures sys.stderr itself)."""
    code = QUIET.format(tests=os.path.dirname(os.path.abspath(__file__)), fail=fail)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_lm_eval_noise_is_captured_and_errors_still_show():
    done = in_a_process(fail=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["ERROR something lm-eval wants seen", "after the block"]
    broke = in_a_process(fail=True)  # a failure shows everything that was captured, then the error
    assert broke.returncode != 0 and "RuntimeError: the task broke" in broke.stderr
    assert "fatal: not a git repository" in broke.stderr and "pretrained" in broke.stderr


def test_an_attacks_tiny_search_checkpoints_are_logged_once():
    messages = []
    ck = checkpoints.StepCheckpointer(_FakeCurrent(), "attack-uat", log=messages.append)  # keep None
    for step in (1, 2, 3):
        ck.save({"step": step, "best": [1, 2, 3]}, step)
    saved = [m for m in messages if "checkpoint saved" in m]
    assert len(saved) == 1 and saved[0].startswith("[attack-uat] checkpoint saved at step 1:")
    assert "later saves under 1 MB are not logged" in saved[0]
    trained = []
    ck = checkpoints.StepCheckpointer(_FakeCurrent(), "baseline", log=trained.append, keep=2)
    for step in (1, 2):
        ck.save(_state(step), step)
    assert sum("checkpoint saved at step" in m for m in trained) == 2  # training's checkpoints: every one


def test_a_resume_without_a_checkpoint_says_training_starts_from_step_1(monkeypatch):
    current, messages = _FakeCurrent(), []
    current.origin_run_id = "1712"
    ck = checkpoints.StepCheckpointer(current, "baseline", log=messages.append)
    monkeypatch.setattr(ck, "_origin_refs", lambda origin: [])  # the origin run saved none (checkpoint_every 0)
    assert ck.restore() is None and ck.restore() is None
    assert messages == ["[baseline] run 1712 left no readable checkpoint of this step: training starts from step 1 "
                        "(train.checkpoint_every sets how often training saves one; 0 saves none)"]
    fresh = []
    assert checkpoints.StepCheckpointer(_FakeCurrent(), "baseline", log=fresh.append).restore() is None
    assert fresh == []  # a new run starts from step 1 without saying so
