"""Order preservation's published method (monollm/evaluation/order_probes.py), the published pairs
format (monollm/evaluation/order_chains.read_published), both methods on a planted model whose
answer is known in closed form, and the [eval.order] settings."""
import copy
import json
import os
import tomllib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from monollm import config, stats
from monollm.evaluation import order, order_chains, order_probes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- a planted model ----------------------------------------------------------------------------

def planted_chains(n_axes: int = 4, n_topics: int = 10) -> list[dict]:
    """Chains of made-up texts, 3 or 4 a chain (every text its own)."""
    return [{"axis": f"axis{a}", "topic": f"topic{t}",
             "texts": [f"axis {a} topic {t} level {k}" for k in range(3 + (a + t) % 2)]}
            for a in range(n_axes) for t in range(n_topics)]


def planted_kind(axis: str, topic: str) -> int:
    """How the planted model orders a chain: +1 keeps it, -1 reverses it, 0 flattens it (every
    text the same state). Of an axis' 10 topics, two are reversed (one of them among topics 7-9,
    the eval split of write_published) and one or two flattened, so the fit chains of every split
    used here mostly keep the order and every probe direction points the same way; and held-out
    pairs that keep their order are not as many as reversed ones, so a probe pointing the other
    way would give another number."""
    t, a = int(topic[5:]), int(axis[4:])
    return -1 if t in (a % 3 + 7, a) else 0 if t in ((a + 5) % 10, (a + 1) % 3 + 7) else 1


class OneTokenTokenizer:
    """Each text is one token of its own."""

    def __init__(self, texts):
        self.ids = {t: i for i, t in enumerate(texts)}

    def __call__(self, texts):
        return {"input_ids": [[self.ids[t]] for t in texts]}


class PlantedEncoder(torch.nn.Module):
    """A linear encoder of one-token texts. Layer 0 is the text's planted state
    e(t) = base(chain) + kind(chain) * level(t) * v (base random per chain, v one fixed vector,
    level the text's index in its chain); layer l+1 = layer l * scale_l + shift_l, elementwise.

    So h(stronger) - h(weaker) = kind * level_gap * v_l at every layer (v_l = v scaled by each
    layer's scales): a pair of a kept chain gains along v_l, a reversed one loses as much, and a
    flattened one has equal states. Along every direction a with a . v_l > 0 a kept pair keeps its
    order, a reversed one does not, a flattened one ties (which counts as kept)."""

    def __init__(self, chains, hidden: int = 8, layers: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.v = torch.randn(hidden, generator=g)
        rows = []
        for c in chains:
            base = torch.randn(hidden, generator=g)
            rows += [base + planted_kind(c["axis"], c["topic"]) * level * self.v for level in range(len(c["texts"]))]
        self.emb = torch.nn.Parameter(torch.stack(rows))
        self.scales = [torch.rand(hidden, generator=g) * 3 + 0.5 for _ in range(layers)]
        self.shifts = [torch.randn(hidden, generator=g) for _ in range(layers)]
        self.eval()

    def forward(self, input_ids, attention_mask, output_hidden_states=True):
        h = self.emb[input_ids]
        states = [h]
        for scale, shift in zip(self.scales, self.shifts):
            h = h * scale + shift
            states.append(h)
        return SimpleNamespace(hidden_states=tuple(states))

    def direction(self, layer: int) -> np.ndarray:
        """v_l: what a kept pair gains at `layer`, per level."""
        v = self.v.clone()
        for scale in self.scales[:layer]:
            v = v * scale
        return v.double().numpy()


def planted(chains):
    """(model, tokenizer) for `chains`: the texts in chain order are the model's tokens."""
    texts = [t for c in chains for t in c["texts"]]
    return PlantedEncoder(chains), OneTokenTokenizer(texts)


def closed_form(chains, pairs: order.Pairs) -> float:
    """The planted model's preserved, for either method: the share of held-out pairs whose chain
    the model does not reverse (each such pair keeps its order along every direction, each
    reversed pair along none)."""
    kind = {t: planted_kind(c["axis"], c["topic"]) for c in chains for t in c["texts"]}
    return float(np.mean([kind[pairs.texts[w]] != -1 for w in pairs.weak[~pairs.fit]]))


def write_published(path, chains, eval_topics=("topic7", "topic8", "topic9"), split=True) -> str:
    """`chains` as a pairs file of the published format: every pair i < j of a chain (level gap
    j - i), chains of `eval_topics` in the eval split (no split at all when `split` is False)."""
    out_chains, out_pairs = [], []
    for i, c in enumerate(chains):
        part = {"split": "eval" if c["topic"] in eval_topics else "fit"} if split else {}
        out_chains.append({"chain_id": f"c{i}", "axis": c["axis"], "topic": c["topic"], "sequence": c["texts"], **part})
        for lo in range(len(c["texts"])):
            for hi in range(lo + 1, len(c["texts"])):
                out_pairs.append({"pair_id": f"p{len(out_pairs)}", "chain_id": f"c{i}", "axis": c["axis"],
                                  "topic": c["topic"], "weaker": c["texts"][lo], "stronger": c["texts"][hi],
                                  "level_gap": hi - lo, **part})
    meta = {"axes": sorted({c["axis"] for c in chains}), "fit_fraction": 0.7, "split_seed": 42,
            "n_chains": len(out_chains), "n_pairs": len(out_pairs)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"metadata": meta, "chains": out_chains, "pairs": out_pairs}, f)
    return str(path)


@pytest.mark.parametrize("method", order.METHODS)
@pytest.mark.parametrize("source", ["published file", "jsonl chains"])
def test_planted_model_gives_the_closed_form_under_both_methods(tmp_path, method, source):
    chains = planted_chains()
    if source == "published file":
        chains = order_chains.load_chains(write_published(tmp_path / "pairs.json", chains))
    model, tok = planted(chains)
    table = order.order_preservation(model, tok, chains, method=method, pooling=("last", "mean"),
                                     bootstrap=500, seed=3, name="planted")
    pairs = order.make_pairs(chains, order.FIT_FRACTION[method], 42 if method == "published" else 3,
                             order.SPLIT_BY[method])
    expected = closed_form(chains, pairs)
    assert 0.3 < expected < 0.95  # neither all kept nor all reversed: the fraction is what is tested
    assert (table["split"] == ("file" if source == "published file" else order.SPLIT_BY[method])).all()
    assert len(table) == 6 and (table["n_pairs"] == (~pairs.fit).sum()).all()
    for row in table.itertuples():
        assert row.preserved == pytest.approx(expected, abs=1e-12), (row.layer, row.pooling)
        assert row.ci_low <= expected <= row.ci_high
        flat = closed_form_tied(chains, pairs)
        assert row.tied == pytest.approx(flat, abs=1e-12)  # every direction: flattened pairs only


def closed_form_tied(chains, pairs) -> float:
    """The share of held-out pairs the planted model flattens: their checks tie along every direction."""
    kind = {t: planted_kind(c["axis"], c["topic"]) for c in chains for t in c["texts"]}
    return float(np.mean([kind[pairs.texts[w]] == 0 for w in pairs.weak[~pairs.fit]]))


def test_planted_directions_all_point_along_the_planted_gain():
    """The closed form's premise: with the splits of the test above, every published direction
    and every per_axis one has a . v_l > 0 at every layer, so the kept pairs keep their order
    along all of them."""
    chains = planted_chains()
    model, tok = planted(chains)
    for method, seed in (("published", 42), ("per_axis", 3)):
        pairs = order.make_pairs(chains, order.FIT_FRACTION[method], seed, order.SPLIT_BY[method])
        h = order.pooled_states(model, tok, pairs.texts, ("last",))["last"].double().numpy()
        counts = order_probes.bootstrap_counts(int(pairs.fit.sum()), 64, 42)
        for layer in range(h.shape[0]):
            s, w = h[layer, pairs.strong[pairs.fit]], h[layer, pairs.weak[pairs.fit]]
            if method == "published":
                directions = order_probes.published_directions(s, w, counts)
                assert np.allclose(np.linalg.norm(directions, axis=1), 1.0)
            else:
                directions = order_probes.fit_directions(s - w, pairs.axis[pairs.fit], len(pairs.axes))
            assert (directions @ model.direction(layer) > 0).all(), (method, layer)


# --- the published method against a plain computation -------------------------------------------

def _plain_published(states, chains, seed=42, k=64):
    """layer -> per-pair share of directions kept (Q,), computed plainly: chains split 70/30 by a
    seeded permutation, neighbours as pairs, each direction a logistic regression with intercept
    on its bootstrap sample's rows repeated as drawn (standardized, 300 gradient steps of 0.5, L2
    1e-2 on the weights), checked as a . h(stronger) >= a . h(weaker) - 1e-6."""
    n_fit = round(0.7 * len(chains))
    fit_chains = set(np.random.default_rng(seed).permutation(len(chains))[:n_fit])
    pairs = [(i in fit_chains, a, b) for i, c in enumerate(chains) for a, b in zip(c["texts"], c["texts"][1:])]
    fit = [(a, b) for f, a, b in pairs if f]
    held = [(a, b) for f, a, b in pairs if not f]
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(fit), max(20, int(0.7 * len(fit)))) for _ in range(k)]
    out = {}
    for layer in range(len(next(iter(states.values())))):
        directions = []
        for idx in draws:
            x = np.array([states[fit[j][1]][layer] for j in idx] + [states[fit[j][0]][layer] for j in idx])
            y = np.r_[np.ones(len(idx)), np.zeros(len(idx))]
            mu, sd = x.mean(0), x.std(0) + 1e-6
            z = (x - mu) / sd
            w, b = np.zeros(x.shape[1]), 0.0
            for _ in range(300):
                r = 1 / (1 + np.exp(-(z @ w + b))) - y
                w, b = w - 0.5 * (z.T @ r / len(y) + 2e-2 * w), b - 0.5 * r.mean()
            a = w / sd
            directions.append(a / np.linalg.norm(a) if np.linalg.norm(a) > 0 else a)
        d = np.array(directions)
        out[layer] = np.array([np.mean(d @ states[s][layer] >= d @ states[w_][layer] - 1e-6) for w_, s in held])
    return out


def test_published_method_on_tiny_model_equals_plain_computation(model_dir):
    from monollm.data import corpus
    from monollm.model import foundation

    model, tok = foundation.load(model_dir)
    chains = [c for c in order_chains.load_chains("builtin") if c["topic"] in corpus._TOWNS[:6]
              and max(len(tok(t)["input_ids"]) for t in c["texts"]) <= 64]
    texts = list(dict.fromkeys(t for c in chains for t in c["texts"]))
    states = {}
    with torch.no_grad():  # one unpadded forward pass per text, its last token
        for t in texts:
            out = model(torch.tensor([tok(t)["input_ids"]]), output_hidden_states=True)
            states[t] = [h[0, -1].double().numpy() for h in out.hidden_states]
    plain = _plain_published(states, chains)
    table = order.order_preservation(model, tok, chains, pooling="last", seed=5, bootstrap=500, batch_size=5)
    assert list(table["layer"]) == sorted(plain) and (table["method"] == "published").all()
    for row in table.itertuples():
        per_pair = plain[row.layer]
        assert row.n_pairs == len(per_pair) and row.n_directions == 64
        assert row.preserved == pytest.approx(per_pair.mean(), abs=1e-9)
        assert (row.ci_low, row.ci_high) == pytest.approx(stats.bootstrap_ci(per_pair, 500, 5), abs=1e-9)
    assert table.loc[table["layer"] == 0, "tied"].item() == 1.0  # last-token embeddings of texts ending alike
    assert table["own_preserved"].isna().all()


def test_bootstrap_samples_draw_seventy_percent_or_twenty():
    counts = order_probes.bootstrap_counts(100, 64, 42)
    assert counts.shape == (64, 100) and (counts.sum(1) == 70).all()
    assert (order_probes.bootstrap_counts(10, 3, 0).sum(1) == 20).all()  # at least 20 draws
    assert (counts == order_probes.bootstrap_counts(100, 64, 42)).all()
    assert (counts != order_probes.bootstrap_counts(100, 64, 43)).any()


def test_a_layer_without_variance_ties_every_check():
    """Equal states (last-token embeddings of texts that end alike): zero directions, every
    check a tie, which counts as kept."""
    same = np.ones((30, 5))
    directions = order_probes.published_directions(same, same, order_probes.bootstrap_counts(30, 8, 0))
    assert not np.isnan(directions).any()
    summary = order_probes.published_preservation(same[:7], same[:7], directions, bootstrap=200)
    assert summary["preserved"] == summary["tied"] == 1.0


# --- the published pairs format ------------------------------------------------------------------

def test_published_file_is_read_as_it_is(tmp_path):
    chains = planted_chains(n_axes=2, n_topics=10)
    read = order_chains.load_chains(write_published(tmp_path / "pairs.json", chains))
    assert [c["texts"] for c in read] == [c["texts"] for c in chains]
    assert all(len(c["pairs"]) == len(c["texts"]) * (len(c["texts"]) - 1) // 2 for c in read)  # every i < j
    pairs = order.make_pairs(read, 0.7, 42, "chain")
    assert pairs.split == "file" and len(pairs.weak) == sum(len(c["pairs"]) for c in read)
    topic = {t: c["topic"] for c in read for t in c["texts"]}
    held = {topic[pairs.texts[w]] for w in pairs.weak[~pairs.fit]}
    assert held == {"topic7", "topic8", "topic9"}  # the file's eval chains, not a seeded split
    # without a split, the method's seeded split
    unsplit = order_chains.load_chains(write_published(tmp_path / "nosplit.json", chains, split=False))
    assert order.make_pairs(unsplit, 0.7, 42, "chain").split == "chain"


def _broken(tmp_path, change) -> str:
    path = write_published(tmp_path / "pairs.json", planted_chains(n_axes=2, n_topics=4))
    data = json.load(open(path))
    change(data)
    json.dump(data, open(path, "w"))
    return path


BROKEN = {
    "no pairs": (lambda d: d.pop("pairs"), "has no 'pairs'"),
    "no metadata axes": (lambda d: d["metadata"].pop("axes"), "metadata has no 'axes'"),
    "chain without sequence": (lambda d: d["chains"][1].pop("sequence"), "chains[1] has no 'sequence'"),
    "pair without stronger": (lambda d: d["pairs"][2].pop("stronger"), "pairs[2] has no 'stronger'"),
    "unknown chain": (lambda d: d["pairs"][0].update(chain_id="nowhere"), "names no chain"),
    "reversed pair": (lambda d: d["pairs"][0].update(weaker=d["pairs"][0]["stronger"],
                                                     stronger=d["pairs"][0]["weaker"]), "weaker first"),
    "some splits": (lambda d: [x.pop("split") for x in d["chains"][:1] + d["pairs"][:1]], "all or none"),
    "bad split": (lambda d: [x.update(split="train") for x in d["chains"] + d["pairs"]],
                  "chains[0] field 'split'"),
    "a list": (lambda d: d.clear(), "has no 'metadata'"),
}


@pytest.mark.parametrize("change,needle", BROKEN.values(), ids=BROKEN.keys())
def test_published_file_of_another_shape_is_refused(tmp_path, change, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        order_chains.load_chains(_broken(tmp_path, change))


def test_jsonl_chains_may_carry_their_split(tmp_path):
    chains = planted_chains(n_axes=2, n_topics=4)
    for c in chains:
        c["split"] = "eval" if c["topic"] == "topic0" else "fit"
    path = tmp_path / "chains.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chains))
    pairs = order.make_pairs(order_chains.load_chains(str(path)), 0.5, 0, "topic")
    assert pairs.split == "file" and pairs.fit_topics == ("topic1", "topic2", "topic3")


# --- settings, findings, console and card --------------------------------------------------------

def _micro(**order_keys) -> dict:
    with open(os.path.join(ROOT, "tests", "micro.toml"), "rb") as f:
        raw = copy.deepcopy(tomllib.load(f))
    raw.setdefault("eval", {}).setdefault("order", {}).update(order_keys)
    return raw


def test_settings_default_to_the_published_method():
    o = config.load(_micro()).eval.order
    assert (o.method, o.directions, o.split_seed, o.fit_fraction) == ("published", 64, 42, 0.7)
    assert config.load(_micro(method="per_axis")).eval.order.fit_fraction == 0.5
    assert config.load(_micro(method="per_axis", fit_fraction=0.6)).eval.order.fit_fraction == 0.6
    for name in ("pythia-160m", "pythia-1.4b", "pythia-6.9b"):
        o = config.load_file(os.path.join(ROOT, "config", f"{name}.toml")).eval.order
        assert (o.chains, o.method) == ("english", "published"), name


BAD_SETTINGS = {
    "method": ({"method": "pooled"}, ["'eval.order.method'", "published, per_axis"]),
    "directions": ({"directions": 0}, ["'eval.order.directions'", "positive"]),
    "split seed": ({"split_seed": -1}, ["'eval.order.split_seed'"]),
    "fit fraction": ({"fit_fraction": 0.0}, ["'eval.order.fit_fraction'", "(0, 1)"]),
    "missing file": ({"chains": "/no/such/pairs.json"}, ["'eval.order.chains'", ".json pairs file"]),
}


@pytest.mark.parametrize("keys,needles", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_settings_name_their_key(keys, needles):
    with pytest.raises(config.ConfigError) as err:
        config.load(_micro(**keys))
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_a_pairs_file_of_another_shape_fails_in_start(tmp_path):
    path = _broken(tmp_path, lambda d: d["chains"][0].pop("topic"))
    with pytest.raises(config.ConfigError) as err:
        config.load(_micro(chains=path))
    assert "'eval.order.chains'" in str(err.value) and "chains[0] has no 'topic'" in str(err.value)
    assert config.load(_micro(chains=write_published(tmp_path / "good.json", planted_chains()))).eval.order.chains


def _findings(method="published"):
    rows = [{"model": m, "method": method, "layer": layer, "pooling": "last", "preserved": 0.5 + 0.1 * layer,
             "ci_low": 0.4, "ci_high": 0.9, "n_pairs": 7, "n_directions": 64 if method == "published" else 13}
            for m in order.MODELS for layer in range(3)]
    return pd.DataFrame(rows), order.findings(pd.DataFrame(rows))


@pytest.mark.parametrize("method", order.METHODS)
def test_console_and_card_name_the_method_next_to_each_number(method):
    from monollm.results import card_sections, client

    table, found = _findings(method)
    assert found["method"] == method and found["n_directions"] == (64 if method == "published" else 13)
    lines = client.order_lines({"order_preservation": found})
    assert f"{method} method" in lines[1]
    for m in order.MODELS:
        row = next(x for x in lines if x.startswith(f"| {m} "))
        assert "0.700" in row and f"| {method} " in row
    words = card_sections.order_section(SimpleNamespace(order_preservation=table,
                                                        findings={"order_preservation": found}))[0]._text
    assert words.count(f"({method})") == len(order.MODELS) and card_sections.order_method(found) in words


def test_findings_of_a_table_without_a_method_are_per_axis():
    table, _ = _findings()
    assert order.findings(table.drop(columns=["method", "n_directions"]))["method"] == "per_axis"
