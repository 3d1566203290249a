"""Shared fixtures. Metaflow reads its settings when first imported, so the temporary
datastore and user are set here, before any test imports metaflow."""
import os
import sys
import tempfile

import pytest

# before anything imports huggingface_hub, which reads it once: no test may reach for the network
os.environ["HF_HUB_OFFLINE"] = "1"

# metaflow.Runner loads the flow module in-process and leaves metaflow's vendored
# typing_extensions behind, which torch's lazily imported distributed modules then
# reject; import them first.
import torch
import torch.distributed.tensor  # noqa: F401
import transformers.models.gpt_neox.modeling_gpt_neox  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOW = os.path.join(ROOT, "flows", "mono_flow.py")
MICRO = os.path.join(ROOT, "tests", "micro.toml")

_HOME = tempfile.mkdtemp(prefix="monollm-tests-")
os.environ.setdefault("USERNAME", "monollm-tests")
os.environ["METAFLOW_HOME"] = os.path.join(_HOME, "mfhome")
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = _HOME
os.environ["METAFLOW_DEFAULT_DATASTORE"] = "local"
os.environ["METAFLOW_DEFAULT_METADATA"] = "local"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.makedirs(os.environ["METAFLOW_HOME"], exist_ok=True)


def flow_env(**extra) -> dict:
    """Environment for a flow subprocess: the same temporary datastore and user as the tests."""
    env = {k: os.environ[k] for k in ("USERNAME", "METAFLOW_HOME", "METAFLOW_DATASTORE_SYSROOT_LOCAL",
                                      "METAFLOW_DEFAULT_DATASTORE", "METAFLOW_DEFAULT_METADATA",
                                      "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


def run_flow(profile: str = MICRO, cwd: str = _HOME, **params):
    """Run MonoFlow with metaflow.Runner on `profile`; returns the finished Run."""
    from metaflow import Runner

    with Runner(FLOW, show_output=True, cwd=cwd, env=flow_env(), config=[("config", profile)]).run(**params) as running:
        assert running.status == "successful", running.stderr
        return running.run


ATTACKS = 'attacks = ["uat", "hotflip", "random_flips", "gcg", "random_search"]'
"""The micro profile's attacks line (micro_variant changes replace it)."""
LEAN = {'tasks = ["corpus_cloze", "corpus_choice"]': "tasks = []",
        "[eval.order]\nenabled = true": "[eval.order]\nenabled = false", ATTACKS: 'attacks = ["uat", "hotflip"]'}
"""micro_variant changes that leave out the downstream and order branches and the gcg attack, for
the flow tests about other things (datastores, clusters, resume): test_flow's micro run covers them."""
HOTFLIP_ONLY = {ATTACKS: 'attacks = ["hotflip"]'}
"""micro_variant changes that keep one attack branch (its rows equal the micro run's hotflip rows)."""


def micro_variant(folder, name: str, changes: dict, append: str = "") -> str:
    """The micro profile with each `old: new` text change made (each must apply) and `append`
    added, written to `folder`/`name`.toml; its path."""
    text = open(MICRO).read()
    for old, new in changes.items():
        assert old in text, f"micro.toml has no {old!r}"
        text = text.replace(old, new)
    path = os.path.join(str(folder), f"{name}.toml")
    with open(path, "w") as f:
        f.write(text + append)
    return path


# --- test tiers ---------------------------------------------------------------------------
# Markers (registered in pyproject.toml): `flow` (the real MonoFlow) is given in the test modules;
# `distributed`, `cluster` and `slow` are given here only, from the tables and fixture names below,
# so that one place shows what `make test-fast` (-m "not flow and not distributed and not cluster
# and not slow") leaves out. A table entry is a test function's name (all its parameter sets) or a
# node name with its parameter id; a function named here that its module no longer defines stops
# the collection, so a renamed test cannot silently fall back into the fast tier.
DISTRIBUTED = {
    # training under torchrun: several processes, seconds each to start
    "test_distributed.py": {"test_two_processes_match_one",
                            "test_sharded_checkpoint_resumes_to_the_same_result_on_other_ranks",
                            "test_ranks_wait_for_a_slow_store_instead_of_queueing_checkpoints_on_disk",
                            "test_damaged_shard_is_named", "test_a_failing_rank_stops_the_step_with_its_error"},
    "test_distributed_flow.py": "*",  # the flow with [parallel] processes
}
SLOW = {
    # over 5 s each on a 2-core machine (pytest --durations), without processes or services.
    # parquet: `datasets` sleeps 5 s after each parquet stream (its workaround of apache/arrow#45214),
    # and the test reads three
    "test_data_streaming.py": {"test_local_shards_split_disjoint_complete_and_seeded[parquet]"},
    # a real stand-in flow run per signal, killed and waited for (7-8 s each)
    "test_sweep.py": {"test_a_signal_to_the_sweep_reaches_its_run_and_the_sweep_waits_for_it"},
}
CLUSTER_FIXTURES = {"cluster", "s3_endpoint"}
"""Fixtures that start a service: a local Slurm cluster (test_slurm.py; skipped where Slurm is not
installed) or an S3 server (test_deploy.py: the S3 datastore, Argo templates that name it). A test
asking for one, directly or through another fixture, is marked `cluster`."""


def _listed(item, table: dict) -> bool:
    names = table.get(item.path.name, ())
    if names == "*":
        return True
    module = getattr(item, "module", None)  # test functions have one
    missing = {n.split("[")[0] for n in names} - set(vars(module) if module else ())
    if module and missing:
        raise pytest.UsageError(f"tests/conftest.py names {sorted(missing)} in {item.path.name}, which has no "
                                f"such test; update the tier tables")
    return item.name in names or getattr(item, "originalname", item.name) in names


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _listed(item, DISTRIBUTED):
            item.add_marker(pytest.mark.distributed)
        if _listed(item, SLOW):
            item.add_marker(pytest.mark.slow)
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine intra-op
    threads contending with other processes make the tests many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def micro_run():
    """One real micro run of the whole flow, shared by the flow tests."""
    return run_flow()


NO_RESOURCES = {"[resources]\nretries = 0\ngpu = 0\ncpu = 1\nmemory = 2000\n": ""}
"""micro_variant change that removes the [resources] table (every key then takes its default)."""


@pytest.fixture(scope="session")
def seed1_run(tmp_path_factory):
    """A second micro run, differing from `micro_run` only in its seed and in having no
    [resources] table (where and with what a step runs, which comparisons leave out): it is
    also the run of a profile that leaves every [resources] key to its default."""
    profile = micro_variant(tmp_path_factory.mktemp("profiles"), "seed1", NO_RESOURCES)
    return run_flow(profile, seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny built GPT-NeoX and its tokenizer, saved by models.save (checksums included)."""
    from monollm.model import foundation
    from monollm.config import BuildConfig

    docs = [f"document {i}: the quick brown fox {i % 7} jumps over the lazy dog {i % 5}." for i in range(200)]
    tok = foundation.build_tokenizer(docs, 320)
    built = foundation.build_model(BuildConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                           max_position=64), tok, seed=0)
    path = str(tmp_path_factory.mktemp("model"))
    foundation.save(built, tok, path)
    return path


@pytest.fixture(scope="session")
def datastore_root() -> str:
    return _HOME


sys.path.insert(0, os.path.join(ROOT, "tests"))
