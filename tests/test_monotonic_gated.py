"""The gated variants (gated_updown, gated_all) on the Qwen2.5 and Llama 3 rehearsal models: non-negative at
every stage the flow verifies, as tests/test_monotonic.py checks GPT-NeoX's; the activation swap reaches the
gate; and what non-negativity buys a gated MLP, down(act(gate x) * up x), planted."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForCausalLM

from monollm.experiments import rehearsal
from monollm.model import monotonic as mono

DOCS = [f"for i in range({i}):\n    total += i * {i}  # line {i} of a loop\n" * 3 for i in range(60)]
MATRICES = {"gated_updown": 4, "gated_all": 6}  # two layers


@pytest.fixture(scope="module", params=["qwen", "llama"])
def saved(request, tmp_path_factory):
    """A rehearsal model of the family, saved as the hub stores it (bf16)."""
    out = str(tmp_path_factory.mktemp(request.param))
    rehearsal.write_family_model(DOCS, out, request.param)
    return out


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # as the flow loads it


def batch(seed, n=2, t=12):
    return torch.randint(0, 400, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(MATRICES))
def test_gated_variants_hold_at_every_stage(saved, variant, tmp_path):
    model = load(saved)
    names = mono.apply(model, variant)
    assert len(names) == MATRICES[variant] and all(n.split(".")[-1].endswith("_proj") for n in names)
    assert ("gate_proj" in " ".join(names)) == (variant == "gated_all")
    r = mono.verify(model, variant)  # applied
    assert r["matrices"] == r["parametrized"] == MATRICES[variant]
    assert r["negative"] == 0 and r["min"] >= mono.DEFAULT_FLOOR * (1 - 1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(3):  # large steps: any sign a plain weight could take, it would take here
        opt.zero_grad()
        ids = batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    r = mono.verify(model.eval(), variant)  # after training
    assert r["negative"] == 0 and r["min"] >= 0 and r["parametrized"] == MATRICES[variant]
    expected = [F.softplus(m.parametrizations.weight.original).detach() for _, m in mono.constrained_linears(model, variant)]
    ids = batch(9)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert mono.materialize(model) == MATRICES[variant]  # after materializing
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    for (_, m), e in zip(mono.constrained_linears(model, variant), expected):
        assert torch.equal(m.weight.detach(), e)
    assert mono.verify(model, variant) == {"matrices": MATRICES[variant], "negative": 0,
                                           "min": mono.verify(model, variant)["min"], "parametrized": 0}
    model.save_pretrained(tmp_path)
    reloaded = load(str(tmp_path))  # a plain checkpoint: vanilla from_pretrained
    assert mono.verify(reloaded, variant)["negative"] == 0
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, logits)


def test_the_activation_swap_replaces_the_gates_activation_and_reloads(saved, tmp_path):
    model = load(saved)
    assert mono.swap_activation(model, "relu") == "silu"
    assert all(isinstance(layer.mlp.act_fn, nn.ReLU) for layer in model.model.layers)
    model.save_pretrained(tmp_path)
    reloaded = load(str(tmp_path))
    assert reloaded.config.hidden_act == "relu"
    assert all(isinstance(layer.mlp.act_fn, nn.ReLU) for layer in reloaded.model.layers)


# --- what it buys: monotonicity along non-negative directions ----------------------------------

def lowered(mlp, x, d) -> int:
    """Rows of `x` (float64) where moving along the non-negative direction d (x + t d, t > 0) lowered some
    output coordinate of `mlp`."""
    count = torch.zeros(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        base = mlp(x)
        for t in (0.1, 1.0, 10.0):
            count |= (mlp(x + t * d) < base - 1e-12 * (1 + base.abs())).any(dim=1)
    return int(count.sum())


def mlp_of(path, variant, act):
    model = load(path).double()
    mono.apply(model, variant)
    mono.materialize(model)
    if act != "silu":
        mono.swap_activation(model, act)
    return model.model.layers[0].mlp


def test_relu_gated_all_is_monotone_wherever_every_up_projection_is_non_negative(saved):
    g = torch.Generator().manual_seed(0)
    relu_all = mlp_of(saved, "gated_all", "relu")
    width = relu_all.up_proj.in_features
    orthant = 5 * torch.rand(256, width, generator=g, dtype=torch.float64)  # x >= 0: up x >= 0 for up >= 0
    d = torch.rand(256, width, generator=g, dtype=torch.float64) * (torch.rand(256, width, generator=g) < 0.3)
    assert lowered(relu_all, orthant, d) == 0
    # anywhere else an up projection can be negative, and raising a gate then lowers the product: not monotone
    anywhere = 5 * torch.randn(256, width, generator=g, dtype=torch.float64)
    assert lowered(relu_all, anywhere, d) > 0


def planted(act: nn.Module, gate=(1.0, 0.0)) -> nn.Module:
    """One unit, two inputs; up reads input 1, gate reads `gate` (by default input 0: every weight >= 0,
    as under gated_all)."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    class Cfg:
        hidden_size, intermediate_size, hidden_act, mlp_bias = 2, 1, "silu", False

    mlp = LlamaMLP(Cfg()).double()
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(torch.tensor([gate]))
        mlp.up_proj.weight.copy_(torch.tensor([[0.0, 1.0]]))
        mlp.down_proj.weight.copy_(torch.tensor([[1.0], [1.0]]))
    mlp.act_fn = act
    return mlp


def test_planted_relu_holds_where_silu_breaks_and_both_break_below_zero():
    x, d = torch.tensor([[-3.0, 1.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    # gate x = -3, up x = 1 + t: SiLU(-3) < 0 times a rising up lowers the output; ReLU(-3) = 0 holds it
    assert lowered(planted(nn.SiLU()), x, d) == 1 and lowered(planted(nn.ReLU()), x, d) == 0
    x, d = torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # up x = -1 < 0: a rising gate makes the product more negative under either activation
    assert lowered(planted(nn.ReLU()), x, d) == 1 and lowered(planted(nn.SiLU()), x, d) == 1


def test_planted_gated_updown_is_not_monotone_even_at_non_negative_inputs():
    # a free gate weight < 0 (gated_updown leaves it free): x = (0.5, 1) >= 0, gate x = 0.5 - t falls to 0
    x, d = torch.tensor([[0.5, 1.0]], dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert lowered(planted(nn.ReLU(), gate=(-1.0, 1.0)), x, d) == 1
    assert lowered(planted(nn.ReLU()), x, d) == 0  # the same point with the gate held >= 0 (gated_all)
