"""The Qwen2.5 and Llama 3 rehearsals (`python -m monollm.rehearsal DIR --family qwen|llama`) through the
real flow: each family's real vocabulary, grouped-query heads, RoPE and RMSNorm, stored in bf16 as the hub
stores them, under the `gated_updown` constraint. The profile is the family's rehearsal profile with the
CI budget below on top; everything else (data layout, the hub code paths, the variant) is the paper
profile's."""
import os

import numpy as np
import pytest
import torch

from conftest import run_flow
from monollm.experiments import rehearsal
from monollm.results import client

pytestmark = pytest.mark.flow

CI_BUDGET = {  # (section, key): value, over the rehearsal profile; what each holds fixed is noted
    (None, "attacks"): ["uat", "hotflip"],  # one universal-trigger and one per-input search, as LEAN micro runs
    ("attack", "tokens"): "round_trip",  # one threat model (the printable one is the Pythia rehearsal's)
    ("attack", "examples"): 8, ("attack", "budget"): 160,
    ("attack.uat", "opt_examples"): 8, ("attack.uat", "guidance_sample"): 8, ("attack.hotflip", "guidance_sample"): 32,
    ("train", "tokens"): 4096, ("eval", "max_blocks"): 16,
    # the downstream and order branches are left out for CI time: the Pythia rehearsal and the micro run run them
    ("eval.downstream", "tasks"): [], ("eval.order", "enabled"): False,
}
FAMILIES = {"qwen": ("Qwen2MLP", "Qwen2RMSNorm"), "llama": ("LlamaMLP", "LlamaRMSNorm")}


def ci_profile(profile: str) -> str:
    """The rehearsal profile at `profile` with CI_BUDGET applied; the new file's path."""
    text = open(profile).read()
    for (section, key), value in CI_BUDGET.items():
        text = rehearsal._set(text, section, key, value)
    path = profile.replace(".toml", "_ci.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    """family -> (its folder, its finished run). The two flows run side by side: each has steps that
    keep one core busy (start, setup, the joins, end), which the other fills."""
    from concurrent.futures import ThreadPoolExecutor

    folders = {family: str(tmp_path_factory.mktemp(f"rehearsal-{family}")) for family in FAMILIES}
    profiles = {family: ci_profile(rehearsal.build(out, family=family)) for family, out in folders.items()}
    with ThreadPoolExecutor(len(FAMILIES)) as pool:
        runs = {family: pool.submit(run_flow, profile) for family, profile in profiles.items()}
        return {family: (folders[family], done.result()) for family, done in runs.items()}


@pytest.fixture(params=sorted(FAMILIES))
def family_run(request, family_runs):
    return (request.param, *family_runs[request.param])


def test_the_gated_constraint_holds_through_the_flow_and_the_stored_model(family_run):
    """The stored monotonic model: up and down projections non-negative in every layer, the gate
    free (gated_updown), and the run's own check agrees."""
    family, out, run = family_run
    data = run.data
    assert run.successful and data.resolved_config["monotonic"]["variant"] == "gated_updown"
    assert data.findings["constraint_holds"] and data.findings["mlp_monotone"] is False
    model, _ = client.load_model(run, "monotonic", os.path.join(out, "loaded"))
    mlps = [m for m in model.modules() if type(m).__name__ == FAMILIES[family][0]]
    assert len(mlps) == data.findings["constrained_matrices"] / 2 == model.config.num_hidden_layers
    for mlp in mlps:
        assert (mlp.up_proj.weight >= 0).all() and (mlp.down_proj.weight >= 0).all()
        assert (mlp.gate_proj.weight < 0).any()  # the gate keeps its signs
    reference, _ = client.load_model(run, "reference", os.path.join(out, "reference"))
    assert any(type(m).__name__ == FAMILIES[family][1] for m in model.modules())
    assert model.get_input_embeddings().weight.shape == reference.get_input_embeddings().weight.shape
    assert model.get_input_embeddings().weight.shape[0] in (151936, 128256)  # the real vocabulary
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    trained = dict(model.named_parameters())
    moved = [n for n, p in reference.named_parameters() if "up_proj" in n and not torch.equal(p, trained[n])]
    assert moved  # the constrained matrices trained (not frozen by a pure-bf16 update)


def test_the_run_reports_perplexity_attacks_and_the_worst_case(family_run):
    family, out, run = family_run
    data = run.data
    assert np.isfinite(data.perplexity["perplexity"]).all()
    assert set(data.perplexity["model"]) == {"reference", "baseline", "monotonic_init", "monotonic"}
    attacks = data.attacks[data.attacks.kind == "attack"]
    assert {(a, m) for a, m in attacks[["attack", "model"]].itertuples(index=False)} == {
        (a, m) for a in ("uat", "hotflip") for m in ("baseline", "monotonic")}
    assert set(data.worst_case["family"]) >= {"universal triggers", "per-input edits"}
    assert len(data.examples["test"]) == 8
    # the trigger is text that the family's tokenizer gives back token for token (round_trip)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(out, family))
    uat = data.attacks[(data.attacks.attack == "uat") & (data.attacks.kind == "attack")]
    for text, ids in uat[["trigger_text", "trigger_ids"]].itertuples(index=False):
        assert tok(text, add_special_tokens=False)["input_ids"] == [int(i) for i in ids]
