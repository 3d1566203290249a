"""Properties the method relies on, each tested so that the test fails when the property stops
holding: the constraint check sees negative entries whatever produces the weight, the pipeline
stops on them, test and attack_opt examples come from different documents, and the first-order
ranking the gradient attacks use beats a random ranking."""
import os
import tomllib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from attack_models import CONT, CONTEXT, examples, model, plant, tokenizer, unused_symbol
from monollm import config, pipeline
from monollm.data import documents
from monollm.model import foundation, monotonic
from monollm.attacks.common import allowed_tokens, continuation_nll
from monollm.attacks.examples import make_examples
from monollm.attacks.gradients import flip_scores, onehot_grad, with_flips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the constraint check --------------------------------------------------------------

class Negated(nn.Module):
    """W = -softplus(V): a parametrization whose every entry is negative."""

    def forward(self, v):
        return -nn.functional.softplus(v)


class SignFrozen(nn.Module):
    """W = sign(W0) * softplus(V), the sign-frozen attribution control: negative where W0 was."""

    def __init__(self, sign):
        super().__init__()
        self.register_buffer("sign", sign)

    def forward(self, v):
        return self.sign * nn.functional.softplus(v)


@pytest.mark.parametrize("make", [lambda w: Negated(), lambda w: SignFrozen(torch.sign(w.detach().clone())),
                                  lambda w: nn.Identity()])
def test_verify_counts_negatives_under_any_parametrization(make):
    m = model(0)
    linears = monotonic.constrained_linears(m, "mlp_both")
    for _, linear in linears:
        parametrize.register_parametrization(linear, "weight", make(linear.weight))
    want = sum(int((linear.weight < 0).sum()) for _, linear in linears)  # the effective weights
    got = monotonic.verify(m, "mlp_both")
    assert want > 0 and got["negative"] == want and got["parametrized"] == len(linears) == got["matrices"]
    with torch.no_grad():
        assert got["min"] == pytest.approx(min(float(linear.weight.min()) for _, linear in linears))


@pytest.fixture
def negative_after_materializing(monkeypatch):
    """materialize() that leaves one negative entry behind, as a broken materialization would."""
    real = monotonic.materialize

    def broken(m):
        count = real(m)
        with torch.no_grad():
            monotonic.constrained_linears(m, "mlp_both")[0][1].weight[0, 0] = -0.5
        return count
    monkeypatch.setattr(monotonic, "materialize", broken)


def tiny_cfg():
    return config.load({"device": "cpu", "threads": 1, "monotonic": {"variant": "mlp_both"},
                        "train": dict(tokens=2 * 8 * 16, batch_size=8, lr=1e-3, log_every=0, val_blocks=4,
                                      eval_every=0)})


def test_make_monotonic_stops_on_negative_entries(model_dir, tmp_path, negative_after_materializing):
    out = tmp_path / "monotonic_init"
    with pytest.raises(RuntimeError, match="init_materialized.*'negative': 1"):
        pipeline.make_monotonic(tiny_cfg(), model_dir, str(out))
    assert not out.exists() or not os.listdir(out)  # nothing saved


def test_train_arm_stops_on_negative_entries(model_dir, tmp_path, negative_after_materializing):
    rng = np.random.default_rng(0)
    blocks = {"train": rng.integers(0, 300, (16, 16)).astype(np.int32),
              "val": rng.integers(0, 300, (4, 16)).astype(np.int32)}
    out = tmp_path / "monotonic"
    with pytest.raises(RuntimeError, match="after_materializing.*'negative': 1"):
        pipeline.train_arm(tiny_cfg(), model_dir, blocks, "monotonic", str(out))
    assert not out.exists() or not os.listdir(out)


def test_the_unbroken_path_passes(model_dir, tmp_path):
    checks = pipeline.make_monotonic(tiny_cfg(), model_dir, str(tmp_path / "init"))
    assert all(c["negative"] == 0 and c["matrices"] == 4 for c in checks.values())


# --- disjoint documents ------------------------------------------------------------------

def micro_cfg():
    with open(os.path.join(ROOT, "tests", "micro.toml"), "rb") as f:
        return config.load(tomllib.load(f))


def test_setup_refuses_a_test_document_in_attack_opt(monkeypatch, tmp_path):
    cfg = micro_cfg()
    held, stream = documents.split_documents(cfg.data, cfg.seed)
    held["attack_opt"][3] = held["test"][7]
    monkeypatch.setattr(documents, "split_documents", lambda *a: (held, stream))
    monkeypatch.setattr(foundation, "build_tokenizer", lambda *a: pytest.fail("setup did model work first"))
    with pytest.raises(ValueError, match="test and attack_opt"):
        pipeline.setup(cfg, str(tmp_path))


class Stop(Exception):
    pass


def test_test_and_attack_opt_examples_come_from_disjoint_documents(monkeypatch, tmp_path):
    cfg = micro_cfg()
    held, _ = documents.split_documents(cfg.data, cfg.seed)
    pipeline.require_disjoint(held)  # the real splits pass
    assert not set(held["test"]) & set(held["attack_opt"])
    given = []

    def record(docs, *args, **kwargs):  # the documents setup draws each split's examples from
        given.append([tuple(d) for d in docs])
        if len(given) == 2:
            raise Stop  # both splits seen: no need to pretrain
        return make_examples(docs, *args, **kwargs)
    monkeypatch.setattr(pipeline, "make_examples", record)
    with pytest.raises(Stop):
        pipeline.setup(cfg, str(tmp_path))
    test_docs, opt_docs = given
    assert (len(test_docs), len(opt_docs)) == (cfg.data.test_docs, cfg.data.attack_opt_docs)
    assert not set(test_docs) & set(opt_docs)


# --- first-order ranking -------------------------------------------------------------------

def exact_gains(m, test, cands, rows, clean, k):
    """Exact loss change of candidates (A * k, T) over their clean rows: (A, k)."""
    return (continuation_nll(m, cands, CONT, 64) - clean[rows]).view(-1, k)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gradient_ranking_beats_random_ranking_on_a_planted_model(seed):
    token = unused_symbol()
    m = plant(model(seed), token, sink=unused_symbol(skip=(token,)))
    tok, test = tokenizer(), torch.as_tensor(examples(8, seed % 2))
    allowed = allowed_tokens(tok, 320)
    clean, grad = onehot_grad(m, test, 0, CONTEXT, CONT, 64)
    scores = flip_scores(grad, test[:, :CONTEXT], allowed).flatten(1)  # (N, C * V)
    V, k = grad.shape[-1], 8
    top = scores.topk(k, dim=1).indices  # the gradient's k best swaps per example
    rng = np.random.default_rng(seed)  # k random allowed swaps per example
    rand = torch.stack([torch.as_tensor(rng.choice(np.flatnonzero(torch.isfinite(s).numpy()), k, replace=False))
                        for s in scores])
    rows = torch.arange(len(test)).repeat_interleave(k)
    gains = {name: exact_gains(m, test, with_flips(test, rows, idx.flatten() // V, idx.flatten() % V), rows,
                               clean, k) for name, idx in (("gradient", top), ("random", rand))}
    # the best of the gradient's top k is never worse than the best of k random swaps (a random draw
    # may hit the planted token too), and the gradient's swaps do far more damage on average
    best = {name: g.max(1).values for name, g in gains.items()}
    assert (best["gradient"] >= best["random"] - 1e-3).all() and best["gradient"].mean() > best["random"].mean() + 1
    assert gains["gradient"].mean() > gains["random"].mean() + 1.0
