"""`run --with slurm` on a real Slurm cluster: munged, slurmctld and one CPU-only slurmd on this
machine, reached over SSH on a loopback port (tests/slurm_cluster.py), with the local S3 server
of the deploy tests as the datastore.

Needs root and the Slurm, munge and OpenSSH server packages (scripts/install-slurm.sh). Without
them the module skips with the reason, unless MONOLLM_REQUIRE_SLURM is set (CI sets it): then a
missing package or a service that does not start fails the tests with the reason and log tail.
"""
import glob
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

import slurm_cluster
from conftest import FLOW, HOTFLIP_ONLY, LEAN, ROOT, micro_variant
from test_deploy import check_s3_run, s3_endpoint, s3_env  # noqa: F401  (s3_endpoint: the S3 server fixture)

MODEL_STEPS = ("setup", "train_baseline", "make_monotonic", "train_monotonic", "evaluate", "attack")
LIGHT_STEPS = ("start", "join_models", "join_attacks", "end")
TIMEOUT_HOURS = 2
"""@timeout of the test run: within the test partition's MaxTime of one day (Metaflow's 5-day
default is not, and the cluster check says so)."""
ACCOUNT, QOS = "monollm_test", "normal"
"""The resumed run's MONOLLM_SLURM_ACCOUNT / MONOLLM_SLURM_QOS. The test cluster has no accounting
database: Slurm records the account of a job as given and ignores its QoS."""


def _unavailable(reason: str):
    if os.environ.get("MONOLLM_REQUIRE_SLURM"):
        pytest.fail(f"MONOLLM_REQUIRE_SLURM is set, but {reason}", pytrace=False)
    pytest.skip(f"{reason} (scripts/install-slurm.sh as root installs Slurm; MONOLLM_REQUIRE_SLURM=1 makes this a failure)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running single-node cluster whose jobs see the test's S3 credentials and metadata folder."""
    missing = slurm_cluster.missing_binaries()
    if missing:
        _unavailable(f"not installed: {', '.join(missing)}")
    if os.geteuid() != 0:
        _unavailable("the Slurm test cluster needs root (slurmd starts jobs as their user)")
    try:
        import metaflow_extensions.slurm_ext  # noqa: F401
    except ImportError:
        _unavailable("metaflow-slurm is not installed (requirements-cluster.txt)")
    root = str(tmp_path_factory.mktemp("slurm"))
    home = os.path.join(root, "home")
    # what a cluster account's ~/.bashrc provides; sbatch passes it on to every job. The local
    # metadata folder is shared with the client, as a home directory is between login and
    # compute nodes: @checkpoint reads the run's tags through the Client API inside the task.
    login_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "METAFLOW_SKIP_INSTALL_DEPENDENCIES": "1",
                 "METAFLOW_DATASTORE_SYSROOT_LOCAL": home, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        running = slurm_cluster.start(root, login_env)
    except slurm_cluster.ServiceError as err:
        pytest.fail(f"the Slurm test cluster did not start: {err}", pytrace=False)
    yield running
    running.stop()


def client_env(cluster, s3_url: str, **extra) -> dict:
    """The flow's environment: the S3 datastore, metadata in the cluster's shared home, the
    login node's settings (METAFLOW_SLURM_*) and HOME with its ~/.ssh/config."""
    return {**s3_env(s3_url, cluster.home), **cluster.env(), **extra}


def run_flow(args, env, cwd, timeout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, FLOW, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def with_slurm(**attrs) -> list[str]:
    spec = ",".join(f"{k}={v}" for k, v in {"path_to_python3": sys.executable, **attrs}.items())
    return ["--with", f"slurm:{spec}", "--with", f"timeout:hours={TIMEOUT_HOURS}"]


def jobcomp(cluster) -> list[dict]:
    """Slurm's own record of every finished job (jobcomp/filetxt): one dict per job."""
    if not os.path.exists(cluster.jobcomp):
        return []
    with open(cluster.jobcomp) as f:
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in f if line.strip()]


READBACK = """
import pickle, sys
from metaflow import Run, namespace

namespace(None)
run = Run(sys.argv[1])
with open(sys.argv[2], "wb") as f:
    pickle.dump({
        "successful": run.successful,
        "tables": {name: getattr(run.data, name) for name in ("perplexity", "training", "attacks")},
        "jobs": {s.id: [t.metadata_dict.get("slurm-job-id") for t in s] for s in run},
        "partitions": {s.id: [t.metadata_dict.get("slurm-job-partition") for t in s] for s in run},
    }, f)
"""


@pytest.mark.flow
def test_micro_run_with_slurm_runs_model_steps_as_jobs_and_matches_local(cluster, s3_endpoint, micro_run):
    env, home = client_env(cluster, s3_endpoint), cluster.home
    run_id_file = os.path.join(home, "run_id")
    # every model step, one attack branch, no evaluation branches: the cluster is what this is about
    profile = micro_variant(home, "slurm", {**LEAN, **HOTFLIP_ONLY})
    proc = run_flow(["--config", "config", profile, "run", *with_slurm(), "--run-id-file", run_id_file],
                    env, home, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:] + "\n" + _logs(cluster)
    with open(run_id_file) as f:
        run_id = f.read().strip()
    got = readback(env, home, run_id)
    assert got["successful"]

    # every model step ran as a Slurm job, and only they did: the task's own record of its job
    # (set from SLURM_JOB_ID inside the job) matches Slurm's record of completed jobs
    records = {r["JobId"]: r for r in jobcomp(cluster) if f"MonoFlow{run_id}" in r["Name"]}
    for step in MODEL_STEPS:
        assert got["jobs"][step] and all(got["jobs"][step]), (step, got["jobs"][step])
        for job in got["jobs"][step]:
            record = records[job]
            assert record["JobState"] == "COMPLETED" and step in record["Name"], record
            assert record["Partition"] == slurm_cluster.PARTITION and got["partitions"][step] == [record["Partition"]] * len(got["jobs"][step])
            # the micro profile's [resources]: 1 CPU, 2000 MB; the run's @timeout in minutes; no GPU
            assert record["Tres"].startswith("cpu=1,mem=2000M,") and "gres" not in record["Tres"], record
            assert int(record["TimeLimit"]) == TIMEOUT_HOURS * 60, record
    for step in LIGHT_STEPS:
        assert got["jobs"][step] == [None], (step, got["jobs"][step])  # ran where `run` ran
    assert len(records) == sum(len(got["jobs"][s]) for s in MODEL_STEPS)
    scripts = glob.glob(os.path.join(cluster.workdir, f"*MonoFlow{run_id}*.sh"))
    assert len(scripts) == len(records)
    for path in scripts:
        text = open(path).read()
        assert "#SBATCH --cpus-per-task=1\n" in text and "#SBATCH --mem=2000M\n" in text, path
        assert f"#SBATCH --time={TIMEOUT_HOURS * 60}\n" in text and "--gres" not in text, path

    # the same profile and seed on a laptop's local datastore gives the same tables (CPU: exact)
    for name, table in got["tables"].items():
        local = getattr(micro_run.data, name)
        if name == "attacks":  # the micro run's hotflip branch, the only attack of this run
            local = local[local.attack == "hotflip"].reset_index(drop=True)
        drop = ["tokens_per_s"] if name == "training" else []  # a speed, not a result
        pd.testing.assert_frame_equal(table.drop(columns=drop), local.drop(columns=drop), obj=name)
    # what tests/test_deploy.py checks of an S3 run (which it leaves to this run when Slurm is required);
    # model files the jobs wrote on the cluster's disk are the cluster's business
    check_s3_run(s3_endpoint, env, home, f"MonoFlow/{run_id}", micro_run, local_files=False)
    check_resume_from_attack(cluster, env, home, run_id, got)


def readback(env: dict, home: str, run_id: str) -> dict:
    """READBACK's dict of run `run_id`, read through the Client API in a separate process."""
    script, result = os.path.join(home, "readback.py"), os.path.join(home, f"readback-{run_id}.pkl")
    with open(script, "w") as f:
        f.write(READBACK)
    out = subprocess.run([sys.executable, script, f"MonoFlow/{run_id}", result], env=env, cwd=home,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    return pd.read_pickle(result)


def check_resume_from_attack(cluster, env: dict, home: str, origin: str, original: dict):
    """`resume attack --with slurm` of run `origin` (whose READBACK is `original`): the latest
    step with a model runs again as a new Slurm job, carrying the account and QoS set where
    `resume` runs; every step before it is cloned, without a job; the tables equal the origin's.
    Kept to one cheap job (one attack branch): CI time."""
    resume_id_file = os.path.join(home, "resume_id")
    proc = run_flow(["resume", "attack", "--origin-run-id", origin, *with_slurm(), "--run-id-file", resume_id_file],
                    {**env, "MONOLLM_SLURM_ACCOUNT": ACCOUNT, "MONOLLM_SLURM_QOS": QOS}, home, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:] + "\n" + _logs(cluster)
    with open(resume_id_file) as f:
        run_id = f.read().strip()
    got = readback(env, home, run_id)
    assert got["successful"] and run_id != origin
    records = {r["JobId"]: r for r in jobcomp(cluster) if f"MonoFlow{run_id}" in r["Name"]}
    attack_jobs = got["jobs"]["attack"]
    assert attack_jobs and all(attack_jobs) and set(attack_jobs) == set(records), (attack_jobs, records)
    for job in attack_jobs:  # a new job, not the origin's
        assert job not in original["jobs"]["attack"] and "attack" in records[job]["Name"], records[job]
        assert records[job]["JobState"] == "COMPLETED" and records[job]["Account"] == ACCOUNT, records[job]
    for step in ("setup", "train_baseline", "make_monotonic", "train_monotonic", "evaluate"):
        # cloned: no job of the resumed run (a clone may keep the origin task's record of its job)
        assert set(got["jobs"][step]) <= {None, *original["jobs"][step]}, (step, got["jobs"][step])
    scripts = glob.glob(os.path.join(cluster.workdir, f"*MonoFlow{run_id}*.sh"))
    assert len(scripts) == len(attack_jobs), scripts
    for path in scripts:  # the QoS is only written: without accounting, Slurm does not keep it
        lines = set(open(path).read().splitlines())
        assert {f"#SBATCH --account={ACCOUNT}", f"#SBATCH --qos={QOS}", "#SBATCH --cpus-per-task=1"} <= lines, path
    for name, table in original["tables"].items():  # cloned (training) or recomputed (attacks): equal
        pd.testing.assert_frame_equal(got["tables"][name], table, obj=name)


def _logs(cluster) -> str:
    return "\n".join(f"--- {name}\n{slurm_cluster.tail(path, 15)}"
                     for name, path in (("slurmctld", os.path.join(cluster.root, "logs", "slurmctld.log")),
                                        ("slurmd", os.path.join(cluster.root, "logs", "slurmd.log"))))


@pytest.mark.flow
def test_gpu_profile_on_a_cluster_without_gpus_stops_before_any_step(cluster, s3_endpoint):
    """pythia-1.4b asks for one GPU per model step; this cluster has no gpu gres: the run stops
    at once with one message naming the setting, and submits nothing."""
    before = len(jobcomp(cluster))
    env = client_env(cluster, s3_endpoint)
    proc = run_flow(["--config", "config", os.path.join(ROOT, "config", "pythia-1.4b.toml"), "run", *with_slurm()],
                    env, cluster.home, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Slurm setup" in out and "resources.gpu" in out and f"partition '{slurm_cluster.PARTITION}'" in out, out[-3000:]
    assert "no GPUs" in out and "Traceback" not in out and "Task is starting" not in out, out[-3000:]
    assert cluster.run("squeue", "--noheader").stdout.strip() == "" and len(jobcomp(cluster)) == before


# The checks themselves, in-process against the same cluster (one SSH connection each).

MICRO_REQUEST = {"setup": {"gpu": 0, "minutes": 60, "time": "0-01:00:00", "partition": None}}


@pytest.fixture
def check(cluster, monkeypatch):
    """check(**attributes) runs monollm.cluster.slurm.check_cluster as the run would, with the cluster's
    settings overridden by `attributes`; returns the error message, or None."""
    from monollm.cluster import slurm

    monkeypatch.setenv("HOME", cluster.home)  # asyncssh reads ~/.ssh/config, as in the flow's process
    base = {"address": slurm_cluster.HOST_ALIAS, "username": "root", "ssh_key_file": cluster.key,
            "remote_workdir": cluster.workdir, "partition": None}

    def run(requests=MICRO_REQUEST, datastore="s3", **attributes):
        try:
            slurm.check_cluster({**base, **attributes}, requests, datastore)
        except slurm.SlurmSetupError as err:
            return str(err)
        return None

    return run


def test_cluster_check_accepts_the_test_cluster(check):
    assert check() is None
    assert check(partition=slurm_cluster.PARTITION) is None


def test_unreachable_login_node_is_named(check, cluster):
    closed = slurm_cluster.free_port()  # nothing listens there
    with open(os.path.join(cluster.home, ".ssh", "config"), "a") as f:
        f.write(f"Host slurm-closed\n  HostName 127.0.0.1\n  Port {closed}\n")
    msg = check(address="slurm-closed")
    assert msg and "cannot reach the Slurm login node" in msg and "METAFLOW_SLURM_ADDRESS='slurm-closed'" in msg


def test_wrong_key_is_named(check, tmp_path):
    other = str(tmp_path / "other_key")
    subprocess.run([slurm_cluster.which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    msg = check(ssh_key_file=other)
    assert msg and "refused the key" in msg and f"METAFLOW_SLURM_SSH_KEY_FILE={other!r}" in msg
    msg = check(ssh_key_file=str(tmp_path / "absent"))
    assert msg and "METAFLOW_SLURM_SSH_KEY_FILE" in msg and "no such file" in msg


def other_key(folder) -> str:
    path = os.path.join(str(folder), "other_key")
    subprocess.run([slurm_cluster.which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    return path


def test_a_wrong_host_key_is_refused_with_one_line(check, cluster, tmp_path, monkeypatch):
    """The login node must show the host key known_hosts holds for it: another key, or none at
    all, stops the check with one line; MONOLLM_SLURM_KNOWN_HOSTS=none is the explicit way out."""
    with open(other_key(tmp_path) + ".pub") as f:
        wrong = cluster.host_key_line.split()[0] + " " + " ".join(f.read().split()[:2]) + "\n"
    for text in (wrong, ""):
        known = tmp_path / "known_hosts"
        known.write_text(text)
        monkeypatch.setenv("MONOLLM_SLURM_KNOWN_HOSTS", str(known))
        msg = check()
        assert msg and "\n" not in msg and "is not verified: its host key is not the one" in msg, msg
        assert f"MONOLLM_SLURM_KNOWN_HOSTS={str(known)!r}" in msg and "MONOLLM_SLURM_KNOWN_HOSTS=none" in msg
    monkeypatch.setenv("MONOLLM_SLURM_KNOWN_HOSTS", "none")
    assert check() is None
    monkeypatch.setenv("MONOLLM_SLURM_KNOWN_HOSTS", str(tmp_path / "absent"))
    assert "no such file" in check()


def test_the_extension_connects_only_to_the_known_login_node(cluster, tmp_path, monkeypatch):
    """metaflow-slurm's own client (which submits every job) checks the host key too, once
    use_step_resources has run: it connects with the user's known_hosts and not with a wrong one."""
    import asyncio

    from monollm.cluster import slurm

    SlurmClient = _extension()[2]
    slurm.use_step_resources()
    monkeypatch.setenv("HOME", cluster.home)
    client = SlurmClient(username="root", address=slurm_cluster.HOST_ALIAS, ssh_key_file=cluster.key)

    async def connect():
        conn = await client.connect()
        client.conn = None
        conn.close()
        await conn.wait_closed()

    asyncio.run(connect())
    (tmp_path / "known_hosts").write_text("")
    monkeypatch.setenv("MONOLLM_SLURM_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    with pytest.raises(RuntimeError, match="Could not connect") as err:
        asyncio.run(connect())
    assert "HostKeyNotVerifiable" in type(err.value.__cause__).__name__


def test_the_work_folder_never_reaches_a_shell_unquoted(check, cluster, tmp_path):
    """slurm:remote_workdir is quoted in the check's own remote command, and one with characters
    a shell reads (the extension's commands use it unquoted) is refused before any connection."""
    from monollm.cluster import slurm

    planted = tmp_path / "planted"
    msg = check(remote_workdir=f"{cluster.workdir} && touch {planted} && echo ")
    assert msg and "METAFLOW_SLURM_REMOTE_WORKDIR" in msg and "unquoted" in msg and not planted.exists()
    probe = slurm._probe_command({"remote_workdir": "~/work dir"}).splitlines()
    assert """mkdir -p "$HOME"/'work dir'/stdout "$HOME"/'work dir'/stderr""" in probe
    assert slurm.remote_path("/a b;c") == "'/a b;c'" and slurm.remote_path("~") == '"$HOME"'


def test_the_extension_methods_slurm_wraps_keep_their_signatures(monkeypatch):
    """use_step_resources wraps private methods of metaflow-slurm and calls them with the
    parameters slurm.PATCHED lists: a release that changes one fails here, not in a cluster job.
    The host key check relies on SlurmClient's `asyncssh` attribute for connect and scp."""
    import inspect

    from monollm.cluster import slurm

    SlurmClient = _extension()[2]
    slurm.use_step_resources()  # wrapped or not, the extension's own methods are compared
    assert slurm.extension_parameters() == slurm.PATCHED
    source = inspect.getsource(SlurmClient)
    assert "self.asyncssh = " in source and "self.asyncssh.connect(" in source and "self.asyncssh.scp(" in source

    def changed(self, flow, graph, step, decos, environment, flow_datastore):  # a release without `logger`
        pass

    monkeypatch.setitem(slurm._ORIGINAL, "SlurmDecorator.step_init", changed)
    assert slurm.extension_parameters() != slurm.PATCHED


def test_nonexistent_partition_is_named(check):
    requests = {"setup": {**MICRO_REQUEST["setup"], "partition": "gpu-a100"}}
    msg = check(requests=requests)
    assert msg and "partition 'gpu-a100' (slurm:partition) does not exist" in msg and slurm_cluster.PARTITION in msg


def test_time_beyond_the_partition_limit_is_named(check):
    requests = {"train_baseline": {**MICRO_REQUEST["setup"], "minutes": 5 * 24 * 60, "time": "5-00:00:00"}}
    msg = check(requests=requests)
    assert msg and "--time=5-00:00:00" in msg and "1-00:00:00" in msg and "timeout" in msg


def test_local_datastore_is_named(check):
    msg = check(datastore="local")
    assert msg and "METAFLOW_DEFAULT_DATASTORE" in msg


# What the GPU profiles' jobs ask for: the batch script metaflow-slurm renders for each model
# step, from the options the flow's decorators hand to its `slurm step` (rendered, not submitted).

FLOW_STEPS = {"setup": {"step": "setup"}, "make_monotonic": {"step": "cpu"}, "train_baseline": {"train": True},
              "train_monotonic": {"train": True}, "evaluate": {}, "attack": {}}
"""Each model step's step_resources arguments, as in flows/mono_flow.py."""


def _extension():
    try:
        from metaflow_extensions.slurm_ext.plugins.slurm.slurm_client import SlurmClient
        from metaflow_extensions.slurm_ext.plugins.slurm.slurm_decorator import SlurmDecorator
        from metaflow_extensions.slurm_ext.plugins.slurm.slurm_job import SlurmJob
    except ImportError:
        _unavailable("metaflow-slurm is not installed (requirements-cluster.txt)")
    return SlurmDecorator, SlurmJob, SlurmClient


def rendered_script(step: str, resources: dict, partition: str = "gpu", gpu_type: str = "") -> str:
    """The sbatch script of `step` with @resources(**resources) under `--with slurm`, in a flow
    whose profile has resources.gpu_type = `gpu_type` (the flow's `__main__` passes it on)."""
    from types import SimpleNamespace

    from metaflow.plugins.resources_decorator import ResourcesDecorator

    from monollm.cluster import slurm

    SlurmDecorator, SlurmJob, _ = _extension()
    slurm.use_step_resources(gpu_type=gpu_type)
    deco = SlurmDecorator(attributes={"partition": partition})
    decos = [ResourcesDecorator(attributes={k: resources[k] for k in ("gpu", "cpu", "memory")}), deco]
    deco.step_init(None, None, step, decos, None, None, None)
    cli = SimpleNamespace(commands=[], command_args=[], command_options={}, entrypoint=["python"])
    deco.runtime_step_cli(cli, 0, 0, None)
    assert cli.commands == ["slurm", "step"]
    opts = cli.command_options  # as `slurm step` passes them on to the job (slurm_cli.step)
    job = SlurmJob(client=SimpleNamespace(cleanup=False), name=f"t-{step}", command=["true"], loop=None,
                   partition=opts["partition"], cpus_per_task=opts["cpus_per_task"], memory=opts["memory"],
                   gres=opts.get("gres"), run_time_limit=opts["run-time-limit"]).create()
    return job.slurm_job_script.generate_script(command="true")


@pytest.mark.parametrize("profile,kind", [("pythia-1.4b", ""), ("pythia-6.9b", ""), ("pythia-1.4b", "a100")])
def test_gpu_profile_job_scripts_carry_gres(profile, kind):
    import tomllib

    from monollm.profiles import step_resources

    with open(os.path.join(ROOT, "config", f"{profile}.toml"), "rb") as f:
        raw = tomllib.load(f)
    raw["resources"]["gpu_type"] = kind
    gres = {}
    for step, kwargs in FLOW_STEPS.items():
        res = step_resources(raw, **kwargs)
        text = rendered_script(step, res, gpu_type=res["gpu_type"])
        lines = set(text.splitlines())
        gres[step] = [line for line in lines if "--gres" in line]
        assert {"#SBATCH --partition=gpu", f"#SBATCH --cpus-per-task={res['cpu']}",
                f"#SBATCH --mem={res['memory']}M", f"#SBATCH --time={5 * 24 * 60}"} <= lines, (step, text)
        typed = f"gpu:{kind}:{res['gpu']}" if kind else f"gpu:{res['gpu']}"
        assert gres[step] == ([f"#SBATCH --gres={typed}"] if res["gpu"] else []), (step, gres[step])
        assert not any(line.startswith(("#SBATCH --account", "#SBATCH --qos")) for line in lines), (step, text)
    assert all(gres[s] for s in ("train_baseline", "train_monotonic", "evaluate", "attack")), gres
    assert not gres["setup"] and not gres["make_monotonic"]  # a hub model is only loaded; the constraint on CPU


def test_account_and_qos_reach_every_batch_script(monkeypatch):
    """MONOLLM_SLURM_ACCOUNT / _QOS where `run` runs (and so in each `slurm step` process) become
    #SBATCH lines of the extension's script; a value that could break the script is refused."""
    from monollm.cluster import slurm

    monkeypatch.setenv("MONOLLM_SLURM_ACCOUNT", "proj-42")
    monkeypatch.setenv("MONOLLM_SLURM_QOS", "high")
    lines = rendered_script("evaluate", {"gpu": 1, "cpu": 8, "memory": 64000}).splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert {"#SBATCH --account=proj-42", "#SBATCH --qos=high", "#SBATCH --gres=gpu:1"} <= set(directives), lines
    assert lines.index(directives[-1]) < lines.index(next(line for line in lines if line.startswith("source")))
    monkeypatch.delenv("MONOLLM_SLURM_QOS")
    assert slurm.extra_sbatch_options() == {"account": "proj-42"}
    monkeypatch.setenv("MONOLLM_SLURM_QOS", "high\n#SBATCH --nodes=64")
    with pytest.raises(slurm.SlurmSetupError, match="MONOLLM_SLURM_QOS"):
        rendered_script("evaluate", {"gpu": 1, "cpu": 8, "memory": 64000})


def test_bad_account_stops_the_check_before_the_login_node(check, monkeypatch):
    monkeypatch.setenv("MONOLLM_SLURM_ACCOUNT", "my account")
    msg = check(address="slurm-nowhere")  # not reached: the name is refused first
    assert msg and "MONOLLM_SLURM_ACCOUNT='my account'" in msg and "account name" in msg


def test_light_steps_run_locally_unless_asked(monkeypatch):
    from types import SimpleNamespace

    from monollm.cluster import slurm

    SlurmDecorator, _, _ = _extension()
    slurm.use_step_resources()
    for value, remote in ((None, False), ("local", False), ("slurm", True)):
        if value is None:
            monkeypatch.delenv(slurm.LIGHT_STEPS_ENV, raising=False)
        else:
            monkeypatch.setenv(slurm.LIGHT_STEPS_ENV, value)
        deco = SlurmDecorator()
        deco.step_init(None, None, "join_models", [deco], None, None, None)
        cli = SimpleNamespace(commands=["step"], command_args=[], command_options={}, entrypoint=["python"])
        deco.runtime_step_cli(cli, 0, 0, None)
        assert (cli.commands == ["slurm", "step"]) == remote, (value, cli.commands)
        if remote:  # Metaflow's @resources defaults: 1 CPU, 4096 MB
            assert cli.command_options["cpus_per_task"] == "1" and cli.command_options["memory"] == "4096M"
    monkeypatch.setenv(slurm.LIGHT_STEPS_ENV, "cluster")
    with pytest.raises(slurm.SlurmSetupError, match=slurm.LIGHT_STEPS_ENV):
        SlurmDecorator().step_init(None, None, "end", [], None, None, None)


def test_slurm_times_and_gres_strings():
    from monollm.cluster import slurm

    assert slurm.slurm_time(90061) == "1-01:01:01"
    assert [slurm.parse_slurm_time(t) for t in ("infinite", "1-00:00:00", "12:00:00", "30:00", "45", "2-12:30")] == [
        None, 86400, 43200, 1800, 2700, 2 * 86400 + 12 * 3600 + 30 * 60]
    assert [slurm.gres_gpus(g) for g in ("(null)", "gpu:4", "gpu:a100:4(S:0-1)", "gpu:a100:2,gpu:v100:2", "shard:8")] == [
        0, 4, 4, 4, 0]
    assert slurm.job_request({"gpu": "1", "cpu": "8", "memory": "64000"}, 3601) == {
        "cpus_per_task": "8", "memory": "64000M", "gres": "gpu:1", "minutes": 61, "time": "0-01:01:00", "gpu": 1,
        "gpu_type": ""}
    assert slurm.job_request({"gpu": 8}, 60, "h100")["gres"] == "gpu:h100:8"
    assert slurm.job_request({"gpu": 0}, 60, "h100")["gres"] is None  # a CPU step asks for no GPU of any type
    assert [slurm.gres_gpu_types(g) for g in ("(null)", "gpu:4", "gpu:a100:4(S:0-1),shard:8", "gpu:a100:2,gpu:v100:2")] == [
        {}, {"": 4}, {"a100": 4}, {"a100": 2, "v100": 2}]
    parsed = slurm.parse_sinfo("cpu*|1-00:00:00|(null)\ngpu|2-00:00:00|gpu:a100:4(S:0-1)\ngpu|2-00:00:00|(null)\n")
    assert parsed == {"cpu": {"default": True, "time": 86400, "gpus": 0, "gpu_types": {}},
                      "gpu": {"default": False, "time": 172800, "gpus": 4, "gpu_types": {"a100": 4}}}


SINFO = """cpu*|1-00:00:00|(null)
gpu|2-00:00:00|gpu:a100:4(S:0-1)
gpu|2-00:00:00|gpu:v100:2,gpu:a100:1
gpu|2-00:00:00|(null)
legacy|2-00:00:00|gpu:2
"""
"""A stand-in for `sinfo --format='%P|%l|%G'` of a cluster with typed and untyped GPU nodes."""


@pytest.mark.parametrize("partition,gpu,kind,needles", [
    ("gpu", 4, "a100", None),
    ("gpu", 2, "v100", None),
    ("gpu", 1, "", None),
    ("legacy", 2, "", None),
    ("gpu", 1, "h100", ["type 'h100'", "resources.gpu_type", "partition 'gpu'", "a100: 4", "v100: 2", "at most 0"]),
    ("gpu", 3, "v100", ["3 GPU(s) of type 'v100'", "at most 2"]),
    ("legacy", 1, "a100", ["type 'a100'", "no type: 2", "resources.gpu_type"]),
    ("gpu", 8, "a100", ["ask for 8 GPU(s)", "at most 4 GPUs per node"]),  # too many of any type: said first
])
def test_gpu_type_against_the_partition(partition, gpu, kind, needles):
    from monollm.cluster import slurm

    request = slurm.job_request({"gpu": gpu}, 3600, kind)
    try:
        slurm.check_partition(partition, {"train_baseline": request}, slurm.parse_sinfo(SINFO))
        msg = None
    except slurm.SlurmSetupError as err:
        msg = str(err)
    if needles is None:
        assert msg is None
    else:
        assert msg and all(n in msg for n in needles), msg
