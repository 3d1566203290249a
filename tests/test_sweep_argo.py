"""A sweep on Argo Workflows: template names, the create and trigger commands, which pairs are
triggered, and (flow-marked, as tests/test_deploy.py) every cell of the micro sweep rendered
with `argo-workflows create --only-json` against a local S3 server, no cluster."""
import io
import json
import os
import tarfile
import tomllib

import pytest
from conftest import ROOT
from test_deploy import BUCKET, LIGHT_STEPS, MODEL_STEPS, s3_client, s3_endpoint, s3_env  # noqa: F401 (fixture)
from test_sweep import MICRO_SWEEP, two_cells

from monollm.cluster import argo
from monollm.experiments import sweep
from monollm.experiments.plan import RunRecord, expand, load_sweep, plan, resolved


def test_template_names_are_valid_distinct_and_stable():
    import re

    names = {c: argo.template_name("attribution", c) for c in (
        "monotonic.mode=nonneg", "monotonic.mode=sign_frozen", "monotonic.mode=abs_init_free",
        "monotonic.mode=sign-frozen", "monotonic.mode=Sign_Frozen",  # the same once lowercased and dashed
        "monotonic.mode=abs_init_free,train.lr=0.002,attack.hotflip.max_flips=4")}
    assert len(set(names.values())) == len(names)
    valid = re.compile(r"^[a-z]([a-z0-9.-]*[a-z0-9])?$")  # what metaflow's argo-workflows --name accepts
    assert all(valid.match(n) and len(n) <= argo.NAME_LIMIT for n in names.values()), names
    assert names["monotonic.mode=nonneg"].startswith("attribution-monotonic-mode-nonneg-")
    assert argo.template_name("attribution", "monotonic.mode=nonneg") == names["monotonic.mode=nonneg"]
    assert argo.template_name("3x", "base")[0].isalpha()


def test_create_and_trigger_commands_carry_the_cell_profile_name_tags_and_seed():
    s = load_sweep(MICRO_SWEEP)
    cells = two_cells()
    name = argo.template_name("micro", cells[1].name)
    assert argo.create_command("flow.py", s, cells[1].name, "/x/c.toml", ["--only-json"])[1:] == [
        "flow.py", "--config", "config", "/x/c.toml", "argo-workflows", "--name", name, "create",
        "--tag", "sweep:micro", "--tag", "cell:monotonic.mode=sign_frozen", "--only-json"]
    task = plan(cells, (3,), [], {(c.name, 3): resolved(c, 3) for c in cells})[1]
    assert argo.trigger_command("flow.py", s, task, {cells[1].name: "/x/c.toml"})[1:] == [
        "flow.py", "--config", "config", "/x/c.toml", "argo-workflows", "--name", name, "trigger", "--seed", "3"]


class FakeRun:
    def __init__(self, finished: bool):
        self.finished = finished


def test_trigger_skips_done_pairs_and_runs_still_going():
    cells = two_cells()
    expected = {(c.name, s): resolved(c, s) for c in cells for s in (0, 1)}
    records = [RunRecord("argo-a", True, expected[(cells[0].name, 0)]),
               RunRecord("argo-b", False, expected[(cells[0].name, 1)], FakeRun(finished=False)),
               RunRecord("argo-c", False, expected[(cells[1].name, 0)], FakeRun(finished=True))]
    todo, notes = argo.to_trigger(plan(cells, (0, 1), records, expected))
    assert [(t.cell.name, t.seed) for t in todo] == [(cells[1].name, 0), (cells[1].name, 1)]  # failed: afresh
    assert notes == [f"cell {cells[0].name} seed 1: run argo-b is still running: not triggered"]


def test_dry_run_prints_the_argo_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "records", lambda *a, **k: [])
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path), "--argo", "create", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" argo-workflows --name micro-monotonic-mode-") == 2 and "create --tag sweep:micro" in out
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path), "--argo", "trigger", "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" trigger --seed 0") == 2
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path), "--argo", "trigger", "--report-only"]) == 2
    assert not (tmp_path / "logs").exists()


def baked_config(s3_url: str, container: dict) -> dict:
    """The profile frozen into a template: the `.mf_meta/CONFIG` of the code package its pods fetch."""
    code_url = {e["name"]: e.get("value") for e in container["env"]}["METAFLOW_CODE_URL"]
    body = s3_client(s3_url).get_object(Bucket=BUCKET, Key=code_url[len(f"s3://{BUCKET}/"):])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return json.load(tar.extractfile(".mf_meta/CONFIG"))["user_configs"]["config"][0]


@pytest.mark.flow
def test_every_cell_of_the_micro_sweep_renders_its_own_template(s3_endpoint, tmp_path, monkeypatch, capsys):
    """The micro sweep with one GPU per model step ([set] resources.gpu = 1: where a run runs,
    the same cells), each cell rendered by `--argo create -- --only-json`: distinct template
    names, the cell's constraint mode in the profile its template carries, the sweep and cell
    tags on the template and on every step's command, and GPUs on the model steps only."""
    text = open(MICRO_SWEEP).read().replace('profile = "../micro.toml"',
                                            f'profile = "{os.path.join(ROOT, "tests", "micro.toml")}"')
    path = tmp_path / "micro.toml"
    path.write_text(text.replace("[grid]", '[set]\n"resources.gpu" = 1\n\n[grid]'))
    for key, value in s3_env(s3_endpoint, str(tmp_path)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep"
    assert sweep.main([str(path), "--out", str(out), "--argo", "create", "--", "--only-json"]) == 0, \
        capsys.readouterr().out
    s = load_sweep(str(path))
    with open(s.profile, "rb") as f:
        cells = expand(s, tomllib.load(f))
    names = set()
    for cell in cells:
        template = json.load(open(out / "argo" / f"{cell.name}.json"))
        name = template["metadata"]["name"]
        assert name == argo.template_name("micro", cell.name) and name not in names
        names.add(name)
        assert json.loads(template["metadata"]["annotations"]["metaflow/tags"]) == [
            "sweep:micro", f"cell:{cell.name}"]
        containers = {t["name"]: t["container"] for t in template["spec"]["templates"] if "container" in t}
        for step in (*MODEL_STEPS, *LIGHT_STEPS):  # every task of a triggered run records the tags
            assert f"--tag sweep:micro --tag cell:{cell.name}" in " ".join(containers[step.replace("_", "-")][
                "command"]), step
        assert baked_config(s3_endpoint, containers["start"])["monotonic"]["mode"] == dict(cell.values)[
            "monotonic.mode"]
        gpus = {step: containers[step.replace("_", "-")]["resources"].get("limits", {}).get("nvidia.com/gpu")
                for step in MODEL_STEPS}
        # a built model is pretrained in setup (on the GPU); make_monotonic works on the CPU
        assert gpus == {step: "0" if step == "make_monotonic" else "1" for step in MODEL_STEPS}, gpus
        for step in LIGHT_STEPS:
            r = containers[step.replace("_", "-")]["resources"]
            assert "nvidia.com/gpu" not in {**(r.get("limits") or {}), **(r.get("requests") or {})}, (step, r)
    assert len(names) == len(cells) == 2
    printed = capsys.readouterr().out
    assert printed.count("rendered to") == 2 and "monotonic.mode=sign_frozen" in printed
