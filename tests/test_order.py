"""Order preservation (monollm/evaluation/order.py) and its chains (monollm/evaluation/order_chains.py)."""
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monollm import stats


# --- the chains ---------------------------------------------------------------------------------
from monollm.data import corpus
from monollm.evaluation import order, order_chains

def test_shipped_chains_are_the_generated_ones(tmp_path):
    order_chains.write(str(tmp_path))
    for name in order_chains.CHAIN_SETS:
        shipped = open(f"{order_chains.DATA_DIR}/{name}.jsonl", encoding="utf-8").read()
        assert shipped == open(tmp_path / f"{name}.jsonl", encoding="utf-8").read(), \
            f"{name}.jsonl is stale: run python -m monollm.evaluation.order_chains"


def test_english_chains_cover_axes_and_topics():
    chains = order_chains.load_chains("english")
    assert len({c["axis"] for c in chains}) >= 13 and len({c["topic"] for c in chains}) >= 18
    for c in chains:
        assert 3 <= len(c["texts"]) <= 4 and all(t[0].isupper() and t.endswith(".") for t in c["texts"])
        assert "{" not in " ".join(c["texts"])  # every slot filled
    # every axis is asked of every topic, so the topic split leaves every axis both halves
    assert len(chains) == len({c["axis"] for c in chains}) * len({c["topic"] for c in chains})


def test_builtin_chains_use_the_corpus_words():
    """The tiny model's tokenizer is trained on the built-in corpus: every word of the built-in
    chains occurs in the documents the tiny profile generates."""
    words = set(re.findall(r"\w+", " ".join(corpus.generate(3000))))
    chains = order_chains.load_chains("builtin")
    used = set(re.findall(r"\w+", " ".join(t for c in chains for t in c["texts"])))
    assert used <= words, sorted(used - words)
    assert len({c["axis"] for c in chains}) >= 10 and len({c["topic"] for c in chains}) >= 12


def test_load_chains_refuses_bad_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"axis": "a", "topic": "t", "texts": ["only one"]}\n')
    with pytest.raises(ValueError, match="chain 1"):
        order_chains.load_chains(str(bad))
    with pytest.raises(FileNotFoundError, match="english, builtin"):
        order_chains.load_chains("no-such-set")


# --- pairs and their split ----------------------------------------------------------------------

def test_pairs_are_neighbours_split_by_topic():
    chains = order_chains.load_chains("builtin")
    pairs = order.make_pairs(chains, fit_fraction=0.5, seed=3)
    expected = {(c["axis"], a, b) for c in chains for a, b in zip(c["texts"], c["texts"][1:])}
    got = {(pairs.axes[x], pairs.texts[w], pairs.texts[s]) for w, s, x in zip(pairs.weak, pairs.strong, pairs.axis)}
    assert got == expected and len(pairs.weak) == len(expected)
    topic_of = {t: c["topic"] for c in chains for t in c["texts"]}
    fit_topics = {topic_of[pairs.texts[w]] for w in pairs.weak[pairs.fit]}
    held_topics = {topic_of[pairs.texts[w]] for w in pairs.weak[~pairs.fit]}
    assert fit_topics == set(pairs.fit_topics) and not fit_topics & held_topics
    assert len(fit_topics) == len({c["topic"] for c in chains}) // 2
    assert order.make_pairs(chains, 0.5, 3).fit_topics == pairs.fit_topics  # deterministic
    assert order.make_pairs(chains, 0.5, 4).fit_topics != pairs.fit_topics


def test_pairs_refuse_bad_splits():
    chains = order_chains.load_chains("builtin")
    with pytest.raises(ValueError, match="fit_fraction"):
        order.make_pairs(chains, fit_fraction=1.0)
    with pytest.raises(ValueError, match="two topics"):
        order.make_pairs([c for c in chains if c["topic"] == chains[0]["topic"]])
    one_axis_one_topic = [c for c in chains if c["axis"] != "count" or c["topic"] == chains[0]["topic"]]
    with pytest.raises(ValueError, match="axis 'count'"):
        order.make_pairs(one_axis_one_topic)


# --- hand-built networks ------------------------------------------------------------------------

class WordTokenizer:
    """Words and punctuation marks, one id each."""

    def __init__(self, texts):
        self.vocab = {}
        for t in texts:
            for w in self.split(t):
                self.vocab.setdefault(w, len(self.vocab))

    @staticmethod
    def split(text):
        return re.findall(r"\w+|[^\w\s]", text)

    def __call__(self, texts):
        return {"input_ids": [[self.vocab[w] for w in self.split(t)] for t in texts]}


class PrefixSumNet(torch.nn.Module):
    """h_0[t] = sum of the non-negative embeddings of tokens 0..t (a causal prefix sum);
    h_{l+1} = act(W_l h_l + b_l) at every position, W_l = sign_l * |random| / hidden (small
    enough that softplus does not flatten the differences to zero).

    With every sign +1 and a monotone act, every state is a monotone function of the multiset of
    tokens up to its position: a text whose tokens include another's has last-token states >=
    the other's in every coordinate, at every layer. A sign -1 reverses that from its layer on."""

    def __init__(self, vocab: int, hidden: int, signs, act=torch.nn.functional.softplus):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.rand(vocab, hidden, generator=g) + 0.1)
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(s * torch.rand(hidden, hidden, generator=g) / hidden) for s in signs])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(hidden, generator=g)) for _ in signs])
        self.act = act
        self.eval()

    def forward(self, input_ids, attention_mask, output_hidden_states=True):
        h = (self.emb[input_ids] * attention_mask[..., None]).cumsum(1)
        states = [h]
        for w, b in zip(self.weights, self.biases):
            h = self.act(h @ w.T + b)
            states.append(h)
        return SimpleNamespace(hidden_states=tuple(states))


def _growing_chains(tok):
    """Chains of both shipped sets whose every text holds all the tokens of the one before:
    ordered inputs for PrefixSumNet."""
    def grows(a, b):
        return not (Counter(tok.split(a)) - Counter(tok.split(b)))

    chains = order_chains.load_chains("english") + order_chains.load_chains("builtin")
    return [c for c in chains if all(grows(a, b) for a, b in zip(c["texts"], c["texts"][1:]))]


@pytest.fixture(scope="module")
def growing():
    """(tokenizer, growing chains, their pairs)."""
    all_texts = [t for name in order_chains.CHAIN_SETS for c in order_chains.load_chains(name) for t in c["texts"]]
    tok = WordTokenizer(all_texts)
    chains = _growing_chains(tok)
    assert len({c["axis"] for c in chains}) >= 5, "too few growing chains to test with"
    return tok, chains, order.make_pairs(chains, 0.5, seed=0)


def _nonneg_preservation(net, tok, pairs):
    """layer -> layer_preservation summary of the held-out pairs along random non-negative
    directions (one per axis), last-token pooling."""
    h = order.pooled_states(net, tok, pairs.texts, ("last",))["last"].double().numpy()
    directions = np.random.default_rng(0).random((len(pairs.axes), h.shape[2]))
    held = ~pairs.fit
    return {layer: order.layer_preservation(h[layer, pairs.strong[held]] - h[layer, pairs.weak[held]],
                                            directions, pairs.axis[held], bootstrap=200)
            for layer in range(h.shape[0])}


def test_monotone_network_preserves_order_along_nonnegative_directions(growing):
    tok, _, pairs = growing
    net = PrefixSumNet(len(tok.vocab), 8, signs=(1, 1, 1))
    for layer, s in _nonneg_preservation(net, tok, pairs).items():
        assert s["preserved"] == 1.0 and s["own_preserved"] == 1.0, layer
        assert s["tied"] == 0.0, layer  # preserved strictly, not by ties
        assert s["ci_low"] == s["ci_high"] == 1.0


def test_sign_flipping_network_fails(growing):
    """Layer 2 has non-positive weights: order holds up to layer 1 and is reversed after."""
    tok, _, pairs = growing
    net = PrefixSumNet(len(tok.vocab), 8, signs=(1, -1, 1))
    result = _nonneg_preservation(net, tok, pairs)
    assert [result[layer]["preserved"] for layer in range(4)] == [1.0, 1.0, 0.0, 0.0]
    assert result[3]["ci_high"] == 0.0
    assert all(s["tied"] == 0.0 for s in result.values())  # reversed, not flattened


@pytest.mark.parametrize("method", order.METHODS)
def test_fitted_probes_do_not_see_a_global_sign_flip(growing, method):
    """Probes are fit per model, so negating a layer's states negates its probes and leaves the
    measurement as it was: the fitted-probe numbers say whether order is linearly readable in
    the same way on unseen pairs, not whether the map is monotone (docs/method.md)."""
    tok, chains, _ = growing
    identity = torch.nn.Identity()
    tables = [order.order_preservation(PrefixSumNet(len(tok.vocab), 8, signs=(1, s), act=identity), tok, chains,
                                       method=method, pooling="last", bootstrap=200, C=0.5) for s in (1, -1)]
    kept = ["preserved", "own_preserved", "ci_low", "ci_high", "tied"]
    assert np.allclose(tables[0][kept].to_numpy(), tables[1][kept].to_numpy(), equal_nan=True)
    assert len(tables[0]) == 3 and (tables[0]["layer"] == [0, 1, 2]).all()


@pytest.mark.parametrize("method", order.METHODS)
def test_table_shape_and_intervals(growing, method):
    tok, chains, _ = growing
    pairs = order.make_pairs(chains, order.FIT_FRACTION[method], 42 if method == "published" else 0,
                             order.SPLIT_BY[method])
    table = order.order_preservation(PrefixSumNet(len(tok.vocab), 8, signs=(1, 1)), tok, chains, method=method,
                                     pooling=("last", "mean"), bootstrap=200, name="toy")
    assert list(table[["layer", "pooling"]].itertuples(index=False, name=None)) == \
        [(layer, p) for p in ("last", "mean") for layer in range(3)]
    assert (table["model"] == "toy").all() and (table["n_pairs"] == (~pairs.fit).sum()).all()
    assert (table["method"] == method).all() and (table["split"] == order.SPLIT_BY[method]).all()
    directions = 64 if method == "published" else len(pairs.axes)
    assert (table["n_fit_pairs"] == pairs.fit.sum()).all() and (table["n_directions"] == directions).all()
    assert (table["ci_low"] <= table["preserved"]).all() and (table["preserved"] <= table["ci_high"]).all()
    with pytest.raises(ValueError, match="pooling"):
        order.order_preservation(PrefixSumNet(len(tok.vocab), 8, signs=(1,)), tok, chains, pooling="max")
    with pytest.raises(ValueError, match="method"):
        order.order_preservation(PrefixSumNet(len(tok.vocab), 8, signs=(1,)), tok, chains, method="pooled")


# --- the tiny saved model: the metric against a direct computation ------------------------------

def _direct(model_dir, chains, seed, fit_fraction):
    """layer -> (per-pair fraction of directions preserved (Q,), own-axis preserved (Q,)),
    last-token pooling, computed with plain code: one unpadded forward pass per text, a
    probe per axis, the stronger text's score compared with the weaker one's."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    state = {}
    for t in {t for c in chains for t in c["texts"]}:
        with torch.no_grad():
            out = model(torch.tensor([tok(t)["input_ids"]]), output_hidden_states=True)
        state[t] = [h[0, -1].double().numpy() for h in out.hidden_states]
    topics = sorted({c["topic"] for c in chains})
    perm = np.random.default_rng(seed).permutation(len(topics))
    fit_topics = {topics[i] for i in perm[:round(fit_fraction * len(topics))]}
    axes = sorted({c["axis"] for c in chains})
    pairs = [(c["axis"], a, b, c["topic"] in fit_topics) for c in chains for a, b in zip(c["texts"], c["texts"][1:])]
    result = {}
    for layer in range(len(state[chains[0]["texts"][0]])):
        probes = {}
        for axis in axes:
            d = np.array([state[b][layer] - state[a][layer] for x, a, b, fit in pairs if fit and x == axis])
            scale = np.sqrt((d ** 2).mean(0))
            scale[scale == 0] = 1.0
            x = np.vstack([d / scale, -d / scale])
            y = [1] * len(d) + [0] * len(d)
            probes[axis] = LogisticRegression(fit_intercept=False, max_iter=1000).fit(x, y).coef_[0] / scale
        every, own = [], []
        for axis, weak, strong, fit in pairs:
            if not fit:
                ok = {x: probes[x] @ state[strong][layer] >= probes[x] @ state[weak][layer] for x in axes}
                every.append(np.mean(list(ok.values())))
                own.append(float(ok[axis]))
        result[layer] = (np.array(every), np.array(own))
    return result


def test_metric_on_tiny_model_equals_direct_computation(model_dir):
    from monollm.model import foundation

    model, tok = foundation.load(model_dir)
    # the fixture's tokenizer was trained on other text and its model has 64 positions
    chains = [c for c in order_chains.load_chains("builtin") if c["topic"] in corpus._TOWNS[:8]
              and max(len(tok(t)["input_ids"]) for t in c["texts"]) <= 64]
    assert len({c["axis"] for c in chains}) >= 8
    table = order.order_preservation(model, tok, chains, method="per_axis", pooling="last", seed=5, bootstrap=500,
                                     fit_fraction=0.5, batch_size=7)
    direct = _direct(model_dir, chains, seed=5, fit_fraction=0.5)
    assert list(table["layer"]) == sorted(direct)
    for row in table.itertuples():
        every, own = direct[row.layer]
        assert row.n_pairs == len(every)
        assert row.preserved == pytest.approx(every.mean(), abs=1e-12)
        assert row.own_preserved == pytest.approx(own.mean(), abs=1e-12)
        assert (row.ci_low, row.ci_high) == pytest.approx(stats.bootstrap_ci(every, 500, 5), abs=1e-12)
    # the last-token embeddings of texts that end alike tie: layer 0 is preserved by ties alone
    assert table.loc[table["layer"] == 0, "tied"].item() == 1.0
    assert table.loc[table["layer"] > 0, "tied"].max() == 0.0


def test_findings_read_the_deepest_layer_of_the_primary_pooling():
    import pandas as pd

    rows = [{"model": m, "layer": layer, "pooling": p, "preserved": 0.5 + 0.1 * layer + (0.05 if m == "monotonic" else 0),
             "ci_low": 0.1, "ci_high": 0.99, "n_pairs": 7}
            for p in ("last", "mean") for m in ("baseline", "monotonic") for layer in range(3)]
    found = order.findings(pd.DataFrame(rows))
    assert (found["pooling"], found["layer"], found["n_pairs"]) == ("last", 2, 7)
    assert found["models"]["baseline"]["preserved"] == pytest.approx(0.7)
    assert found["monotonic_minus_baseline"] == pytest.approx(0.05)
