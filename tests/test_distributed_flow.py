"""The flow with two training processes per arm (FSDP over gloo): a killed training task takes
its processes with it, and `resume` continues from the sharded checkpoint to the results of a
run that was never interrupted."""
import os
import time

import pandas as pd
import pytest
from conftest import ATTACKS, FLOW, LEAN, flow_env, micro_variant, run_flow
from test_resume import _run_and_kill

pytestmark = pytest.mark.flow
CHECKPOINT_EVERY = 50


@pytest.fixture(scope="module")
def fsdp_profile(tmp_path_factory) -> str:
    return micro_variant(tmp_path_factory.mktemp("profiles"), "fsdp", {
        **LEAN, ATTACKS: 'attacks = ["random"]',  # the training is what this test is about
        "tokens = 40_000": "tokens = 120_000",
        "log_every = 20": f"log_every = 50\ncheckpoint_every = {CHECKPOINT_EVERY}",
    }, append='\n[parallel]\nstrategy = "fsdp"\nprocesses = 2\n')


def _rank_processes() -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if b"monollm.rank" in cmd:
            found.append(int(entry))
    return found


def test_killed_fsdp_training_resumes_from_its_sharded_checkpoint(fsdp_profile, datastore_root, tmp_path):
    from metaflow import Runner

    whole = run_flow(fsdp_profile)
    assert "training on 2 processes (fsdp)" in whole["train_monotonic"].task.stdout
    origin = _run_and_kill(fsdp_profile, datastore_root, "train_monotonic", MONOLLM_TMP=str(tmp_path))
    deadline = time.time() + 60
    while _rank_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert _rank_processes() == []
    # torchrun and its ranks stopped with their task: the killed job's folder (left behind by
    # SIGKILL) holds no finished history, which orphaned ranks would have gone on to write
    jobs = [d for d in os.listdir(tmp_path) if d.startswith("monollm-dist-monotonic-")]
    assert len(jobs) == 1 and os.path.exists(os.path.join(tmp_path, jobs[0], "rows.jsonl"))
    assert not os.path.exists(os.path.join(tmp_path, jobs[0], "history.json"))

    with Runner(FLOW, cwd=datastore_root, env=flow_env()).resume(origin_run_id=origin) as resumed:
        assert resumed.status == "successful", resumed.stderr
        run = resumed.run
    assert run["train_monotonic"].task.origin_pathspec is None
    mono = run.data.training[run.data.training.arm == "monotonic"]
    starts = mono[mono.resumed_from >= 0]["resumed_from"].tolist()
    assert len(starts) == 1 and starts[0] >= 2 * CHECKPOINT_EVERY and starts[0] % CHECKPOINT_EVERY == 0
    assert list(mono["step"]) == list(range(1, len(mono) + 1))
    drop = ["tokens_per_s", "resumed_from"]
    pd.testing.assert_frame_equal(run.data.training.drop(columns=drop), whole.data.training.drop(columns=drop))
    pd.testing.assert_frame_equal(run.data.perplexity, whole.data.perplexity)
    assert (run.data.constraint.negative == 0).all()
