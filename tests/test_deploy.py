"""What a cluster needs, proven here: the Argo Workflows template asks for the right
resources, a run on an S3 datastore is read back through the Client API, and the code
package carries the monollm package.

An S3-compatible server (moto) runs on 127.0.0.1 at a random port for the whole module;
every flow process gets its own Metaflow home and metadata root, so the local runs of the
other tests are never mixed with these.
"""
import glob
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import FLOW, MICRO, ROOT, flow_env

pytestmark = pytest.mark.flow

BUCKET, PREFIX = "monollm-tests", "metaflow"
MODEL_STEPS = ("setup", "train_baseline", "make_monotonic", "train_monotonic", "evaluate", "attack")
LIGHT_STEPS = ("start", "join_models", "join_attacks", "end")
HUB_PROFILES = ("pythia-1.4b", "pythia-160m", "pythia-6.9b")
TRAIN_STEPS = ("train_baseline", "train_monotonic")


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with one empty bucket; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    s3_client(url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def s3_client(url):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def s3_env(url: str, home: str) -> dict:
    """Environment of a flow process on the S3 datastore (metadata stays local, under `home`)."""
    os.makedirs(os.path.join(home, "mfhome"), exist_ok=True)
    env = {**os.environ, **flow_env()}
    env.update(
        METAFLOW_HOME=os.path.join(home, "mfhome"), METAFLOW_DATASTORE_SYSROOT_LOCAL=home,
        METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/{PREFIX}",
        METAFLOW_DATATOOLS_S3ROOT=f"s3://{BUCKET}/{PREFIX}/data", METAFLOW_S3_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        METAFLOW_KUBERNETES_NAMESPACE="monollm", METAFLOW_KUBERNETES_CONTAINER_IMAGE="registry.example/monollm:test",
    )
    return env


def flow(args, env, cwd, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, FLOW, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


NO_GPU_STEPS = ("setup", "make_monotonic")
"""Model steps of a hub profile that ask for no GPU."""


def megabytes(quantity: str) -> float:
    assert quantity.endswith("M"), quantity
    return float(quantity[:-1])


@pytest.mark.parametrize("profile", HUB_PROFILES)
def test_argo_template_requests_gpu_for_model_steps_only(profile, s3_endpoint, tmp_path):
    import tomllib

    path = os.path.join(ROOT, "config", f"{profile}.toml")
    with open(path, "rb") as f:
        res = tomllib.load(f)["resources"]
    out = flow(["--config", "config", path, "argo-workflows", "create", "--only-json"],
               s3_env(s3_endpoint, str(tmp_path)), str(tmp_path)).stdout
    template = json.loads(out[out.index("{"):])
    assert template["kind"] == "WorkflowTemplate"
    containers = {t["name"]: t["container"] for t in template["spec"]["templates"] if "container" in t}
    for step in MODEL_STEPS:
        r = containers[step.replace("_", "-")]["resources"]
        want = {k: res.get(f"train_{k}", res[k]) if step in TRAIN_STEPS else res[k] for k in ("gpu", "cpu", "memory")}
        if step in NO_GPU_STEPS:  # a hub model is only loaded and saved; the constraint is applied on the CPU
            want["gpu"] = 0
        assert r.get("limits", {}).get("nvidia.com/gpu", "0") == str(want["gpu"]), (step, r)
        assert megabytes(r["requests"]["memory"]) == want["memory"], (step, r)
        assert float(r["requests"]["cpu"]) == want["cpu"], (step, r)
        assert megabytes(r["requests"]["ephemeral-storage"]) == res["disk"], (step, r)
    gpus = {step: containers[step.replace("_", "-")]["resources"].get("limits", {}).get("nvidia.com/gpu", "0")
            for step in MODEL_STEPS}
    assert gpus == {step: "0" if step in NO_GPU_STEPS else "8" if profile == "pythia-6.9b" and step in TRAIN_STEPS
                    else "1" for step in MODEL_STEPS}
    for step, c in containers.items():  # /dev/shm sized where several GPUs talk over NCCL
        shm = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/dev/shm"]
        assert bool(shm) == (step.replace("-", "_") in TRAIN_STEPS and "train_shared_memory" in res), (step, shm)
    if "train_shared_memory" in res:
        volumes = {t["name"]: {v["name"]: v for v in t.get("volumes") or []} for t in template["spec"]["templates"]}
        assert volumes["train-monotonic"]["dhsm"]["emptyDir"] == {
            "medium": "Memory", "sizeLimit": f"{res['train_shared_memory']}Mi"}
    for step in LIGHT_STEPS:
        r = containers[step.replace("_", "-")]["resources"]
        assert "nvidia.com/gpu" not in {**(r.get("limits") or {}), **(r.get("requests") or {})}, (step, r)
    # the code package was uploaded to the S3 datastore, where the pods fetch it
    code_url = {e["name"]: e.get("value") for e in containers["setup"]["env"]}["METAFLOW_CODE_URL"]
    assert code_url.startswith(f"s3://{BUCKET}/{PREFIX}/MonoFlow/"), code_url
    s3_client(s3_endpoint).head_object(Bucket=BUCKET, Key=code_url[len(f"s3://{BUCKET}/"):])


@pytest.mark.parametrize("table", ["", "[resources]\nretries = 2\n"], ids=["no [resources]", "retries only"])
def test_argo_template_applies_resources_defaults(table, s3_endpoint, tmp_path):
    """Keys left out of [resources] (or the whole table) deploy with their documented defaults."""
    from conftest import micro_variant

    from monollm.config import ResourcesConfig

    d = ResourcesConfig()
    profile = micro_variant(tmp_path, "partial", {"[resources]\nretries = 0\ngpu = 0\ncpu = 1\nmemory = 2000\n": table})
    out = flow(["--config", "config", profile, "argo-workflows", "create", "--only-json"],
               s3_env(s3_endpoint, str(tmp_path)), str(tmp_path)).stdout
    templates = {t["name"]: t for t in json.loads(out[out.index("{"):])["spec"]["templates"] if "container" in t}
    for step in MODEL_STEPS:
        r = templates[step.replace("_", "-")]["container"]["resources"]
        assert r["limits"]["nvidia.com/gpu"] == str(d.gpu) and float(r["requests"]["cpu"]) == d.cpu, (step, r)
        assert megabytes(r["requests"]["memory"]) == d.memory, (step, r)
        assert megabytes(r["requests"]["ephemeral-storage"]) == d.disk, (step, r)
    retries = 2 if table else d.retries
    for step in ("train-baseline", "train-monotonic", "attack"):
        assert int((templates[step].get("retryStrategy") or {}).get("limit", 0)) == retries, templates[step]


READBACK = """
import json, sys
from metaflow import Run, namespace
from monollm.model import monotonic
from monollm.results import client

namespace(None)
run = Run(sys.argv[1])
ppl = run.data.perplexity
model, tokenizer = client.load_model(run, "monotonic", path=sys.argv[2])
meta = run["end"].task.metadata_dict
print(json.dumps({
    "successful": run.successful, "models": list(ppl["model"]), "perplexity": [float(p) for p in ppl["perplexity"]],
    "ds_type": meta.get("ds-type"), "ds_root": meta.get("ds-root"),
    "checks": monotonic.verify(model, run.data.resolved_config["monotonic"]["variant"]),
    "attacks": sorted(set(run.data.attacks["attack"])), "configured": sorted(run.data.resolved_config["attacks"]),
    "dnll": [float(d) for d in run.data.attacks["dnll"]],
}))
"""


def test_micro_run_on_s3_datastore_read_back_through_client(s3_endpoint, tmp_path, micro_run):
    from conftest import HOTFLIP_ONLY, LEAN, micro_variant

    if os.environ.get("MONOLLM_REQUIRE_SLURM"):
        pytest.skip("tests/test_slurm.py runs the micro profile on this S3 datastore and makes these checks "
                    "(check_s3_run) on it; with Slurm required, that run stands in for this one")
    home = str(tmp_path)
    env = s3_env(s3_endpoint, home)
    run_id_file = os.path.join(home, "run_id")
    # one attack branch and no evaluation branches: the datastore is what this test is about
    profile = micro_variant(tmp_path, "s3", {**LEAN, **HOTFLIP_ONLY})
    flow(["--config", "config", profile, "run", "--run-id-file", run_id_file], env, home, timeout=900)
    with open(run_id_file) as f:
        check_s3_run(s3_endpoint, env, home, f"MonoFlow/{f.read().strip()}", micro_run, local_files=True)


def check_s3_run(s3_endpoint, env: dict, home: str, pathspec: str, micro_run, local_files: bool):
    """A finished run of the micro profile with one attack (hotflip) on the S3 datastore, read
    back through the Client API in a fresh process: successful, its models load from the bucket,
    its tables equal the local micro run's, and its artifacts and weights live in the bucket
    (`local_files`: and no model file was written under `home` but the one fetched)."""
    from monollm.results import report

    script = os.path.join(home, "readback.py")
    with open(script, "w") as f:
        f.write(READBACK)
    out = subprocess.run([sys.executable, script, pathspec, os.path.join(home, "monotonic")], env=env, cwd=home,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["successful"]
    assert got["models"] == list(report.MODELS)
    assert all(p > 1 for p in got["perplexity"])
    assert got["ds_type"] == "s3" and got["ds_root"] == f"s3://{BUCKET}/{PREFIX}"
    assert got["checks"]["matrices"] > 0 and got["checks"]["negative"] == 0 and got["checks"]["parametrized"] == 0
    assert got["configured"] == got["attacks"] == ["hotflip"]  # the attack branch reported back
    # determinism: the same profile and seed, run again uninterrupted (on another datastore),
    # gives identical tables on CPU
    assert got["perplexity"] == [float(p) for p in micro_run.data.perplexity["perplexity"]]
    local = micro_run.data.attacks
    assert got["dnll"] == [float(d) for d in local[local.attack == "hotflip"]["dnll"]]
    # artifacts and model files live in the bucket, not on local disk
    keys = [o["Key"] for page in s3_client(s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    assert any(k.startswith(f"{PREFIX}/MonoFlow/data/") for k in keys)
    assert any(k.endswith(".safetensors") for k in keys), "model weights were not stored in S3"
    if local_files:
        found = glob.glob(os.path.join(home, "**", "*.safetensors"), recursive=True)
        assert all(p.startswith(os.path.join(home, "monotonic", "")) for p in found), found  # only what we fetched


def test_code_package_carries_every_module(tmp_path):
    """Remote steps import monollm from the code package (flows/monollm -> ../monollm)."""
    env = {**os.environ, **flow_env(METAFLOW_HOME=str(tmp_path))}
    proc = flow(["package", "list"], env, str(tmp_path))
    out = proc.stdout + proc.stderr  # metaflow prints the listing on stderr
    packaged = {os.path.relpath(line.strip(), os.path.join(ROOT, "flows")) for line in out.splitlines()
                if line.strip().startswith(os.path.join(ROOT, "flows"))}
    modules = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "monollm", "**", "*.py"), recursive=True)}
    assert modules and modules <= packaged, sorted(modules - packaged)
    assert "mono_flow.py" in packaged
