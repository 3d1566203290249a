"""Hub revisions that are branches: `start` warns, and monollm.experiments.pin writes the commits a run
read back into a copy of its profile (a stand-in run: no flow needed)."""
import difflib
import glob
import hashlib
import os
from types import SimpleNamespace

import pytest
from conftest import ROOT

from monollm import config, pipeline
from monollm.experiments import pin

PYTHIA = os.path.join(ROOT, "config", "pythia-160m.toml")
TINY = os.path.join(ROOT, "config", "tiny.toml")
MODEL_COMMIT = hashlib.sha1(b"a made-up model commit").hexdigest()
DATA_COMMIT = hashlib.sha1(b"a made-up dataset commit").hexdigest()


def stand_in_run(profile: str, sources: dict | None, seed: int | None = None, run_id: str = "17"):
    """What pin reads of a run: its id, resolved_config and sources."""
    resolved = config.to_dict(config.load_file(profile, seed=seed))
    return SimpleNamespace(id=run_id, data=SimpleNamespace(resolved_config=resolved, sources=sources))


def hub_sources(model_commit=MODEL_COMMIT, data_commit=DATA_COMMIT) -> dict:
    """pipeline.sources of a pythia-160m run that read these commits."""
    return {"model": {"source": "hub", "name": "EleutherAI/pythia-160m", "revision": "step143000",
                      "commit": model_commit},
            "data": {"source": "hub", "path": "monology/pile-uncopyrighted", "revision": "main",
                     "commit": data_commit}}


def test_start_warns_in_one_line_per_hub_revision_that_is_a_branch(monkeypatch):
    lines = []
    monkeypatch.setattr(pipeline, "log", lines.append)
    raw = {"model": {"source": "hub", "name": "EleutherAI/pythia-160m", "revision": "step143000"},
           "data": {"source": "hub", "path": "monology/pile-uncopyrighted", "revision": "main"}}
    pipeline.start(raw, None)
    assert len(lines) == 2 and all("\n" not in line and line.startswith("warning: ") for line in lines)
    assert "model.revision 'step143000' is a branch or tag" in lines[0] and "data.revision 'main'" in lines[1]
    assert all("python -m monollm.experiments.pin" in line for line in lines)
    lines.clear()
    raw["model"]["revision"], raw["data"]["revision"] = MODEL_COMMIT, DATA_COMMIT
    pipeline.start(raw, None)  # commits: nothing to warn about
    pipeline.start({}, None)  # the default tiny profile: built model, built-in corpus
    assert lines == []


HUB_PROFILES = [p for p in sorted(glob.glob(os.path.join(ROOT, "config", "*.toml")))
                if config.load_file(p).model.source == "hub"]


@pytest.mark.parametrize("profile", HUB_PROFILES, ids=os.path.basename)
def test_pin_writes_a_copy_that_differs_only_in_the_revision_lines(profile, tmp_path):
    out = tmp_path / "pinned.toml"
    lines, complete = pin.pin(stand_in_run(profile, hub_sources(), seed=3), profile, str(out))
    assert complete and any(f"-> commit {MODEL_COMMIT}" in line for line in lines)
    assert lines[-1].endswith(f"--config config {out} run --seed 3")  # the run's own seed, overridden
    original, copy = open(profile).read().splitlines(), out.read_text().splitlines()
    changed = [d for d in difflib.unified_diff(original, copy, lineterm="", n=0)
               if d[:1] in "+-" and not d.startswith(("+++", "---"))]
    assert len(changed) == 4 and all(d[1:].startswith("revision = ") for d in changed)  # two lines replaced
    got, want = config.to_dict(config.load_file(str(out))), config.to_dict(config.load_file(profile))
    assert (got["model"]["revision"], got["data"]["revision"]) == (MODEL_COMMIT, DATA_COMMIT)
    want["model"]["revision"], want["data"]["revision"] = MODEL_COMMIT, DATA_COMMIT
    assert got == want


def test_pin_adds_a_revision_the_profile_left_to_its_default(tmp_path):
    text = open(PYTHIA).read()
    profile = tmp_path / "no-data-revision.toml"
    profile.write_text("\n".join(line for line in text.splitlines() if not line.startswith('revision = "main"')))
    out = tmp_path / "pinned.toml"
    pin.pin(stand_in_run(str(profile), hub_sources()), str(profile), str(out))
    assert config.load_file(str(out)).data.revision == DATA_COMMIT
    assert len(out.read_text().splitlines()) == len(profile.read_text().splitlines()) + 1  # one line added


def test_pin_says_what_it_cannot_pin_instead_of_failing(tmp_path):
    out = tmp_path / "pinned.toml"
    tiny = {"model": {"source": "build", "name": "", "revision": "", "commit": None},
            "data": {"source": "builtin", "path": "", "revision": "", "commit": None}}
    lines, complete = pin.pin(stand_in_run(TINY, tiny), TINY, str(out))
    assert complete and not out.exists()  # the default profile has no commits: nothing to write
    assert "model.revision: nothing to pin (built from [model.build]" in lines[0]
    assert "data.revision: nothing to pin (the built-in corpus" in lines[1] and "nothing written" in lines[-1]
    lines, complete = pin.pin(stand_in_run(PYTHIA, hub_sources(data_commit=None)), PYTHIA, str(out))
    assert not complete and "data.revision: 'main' cannot be pinned" in lines[1]
    assert config.load_file(str(out)).model.revision == MODEL_COMMIT  # what could be pinned, is
    assert config.load_file(str(out)).data.revision == "main"
    lines, _ = pin.pin(SimpleNamespace(id="9", data=SimpleNamespace()), PYTHIA, str(out))
    assert lines == ["run 9 recorded no sources (it predates them): there are no commits to pin"]


def test_pin_refuses_another_profile_than_the_runs(tmp_path, monkeypatch, capsys):
    run = stand_in_run(PYTHIA, hub_sources())
    other = os.path.join(ROOT, "config", "pythia-1.4b.toml")
    with pytest.raises(ValueError, match="is not the profile run 17 was started with"):
        pin.pin(run, other, str(tmp_path / "x.toml"))
    from monollm.results import client

    monkeypatch.setattr(client, "get_run", lambda ref, namespace=None: run)
    assert pin.main(["17", other, str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pin: ") and "\n" not in err and "keys differ; first: " in err
    assert not (tmp_path / "x.toml").exists()
