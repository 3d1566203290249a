"""The paper-shape rehearsal (monollm.experiments.rehearsal): the hub profiles' code paths, at Pythia's real
shape, end to end through the real flow. A few minutes on two CPU cores."""
import json
import os

import numpy as np
import pytest
import zstandard

from conftest import run_flow
from test_rehearsal_families import without_added
from monollm.experiments import rehearsal
from monollm.results.headline import headline

pytestmark = pytest.mark.flow


def pile_texts(pile: str, name: str) -> list[str]:
    with open(os.path.join(pile, name), "rb") as f:
        raw = zstandard.ZstdDecompressor().decompress(f.read(), max_output_size=1 << 30)
    return [json.loads(line)["text"] for line in raw.decode().splitlines()]


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal")
    profile = rehearsal.build(str(out))
    return out, run_flow(profile)


def test_the_assets_have_pythias_shape(rehearsed):
    from transformers import AutoConfig, AutoTokenizer

    out, _ = rehearsed
    model_dir = os.path.join(out, "pythia")
    cfg, tok = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    rotary = cfg.rope_parameters["partial_rotary_factor"]  # Pythia's rotary_pct, as transformers 5 names it
    assert (cfg.vocab_size, rotary, cfg.use_parallel_residual, cfg.hidden_act) == (50304, 0.25, True, "gelu")
    assert str(cfg.dtype).endswith("float16")  # stored as the hub stores Pythia
    assert 49_000 <= len(tok) < cfg.vocab_size and tok.eos_token_id == 0  # padding rows beyond the tokenizer
    paper = open(rehearsal.PAPER_PROFILE).read().splitlines()
    ours = without_added(open(os.path.join(out, "rehearsal.toml")).read().splitlines())
    changed = [(a, b) for a, b in zip(paper, ours) if a != b]
    assert len(paper) == len(ours) and len(changed) == len(rehearsal.CHANGES) + 2  # + the two ids


def test_the_run_completes_on_held_out_text(rehearsed):
    out, run = rehearsed
    data, pile = run.data, os.path.join(out, "pile")
    attacks = {"uat", "hotflip", "random_flips", "gcg", "random", "random_search"}  # under both threat models, as the paper profiles
    assert run.successful and set(data.attacks["attack"]) == attacks | {f"{a}@printable" for a in attacks}
    assert set(data.worst_case["threat_model"]) == {"round_trip", "printable"}
    assert "With printable tokens:" in " ".join(headline(data.findings))
    assert np.isfinite(data.perplexity["perplexity"]).all()
    # every attack example is a window of a document of its own held-out file
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(out, "pythia"))
    for split, name in (("test", "test.jsonl.zst"), ("attack_opt", "val.jsonl.zst")):
        texts = "\n".join(pile_texts(pile, name))
        windows = tok.batch_decode(data.examples[split].tolist())
        assert len(windows) == data.resolved_config["attack"]["examples"]
        assert all(w in texts for w in windows), split
    # UAT's triggers survived before every test example: the branch ended with a trigger per model
    uat = data.attacks[(data.attacks.attack == "uat") & (data.attacks.kind == "attack")]
    assert set(uat["model"]) == {"baseline", "monotonic"}
