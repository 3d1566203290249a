import math
import os
import random
import re
from collections import Counter

import pytest

from monollm.data import corpus
from monollm.data.corpus import DEFAULT_SEED, generate

_WORD = re.compile(r"[A-Za-z]+")


@pytest.fixture(scope="module")
def docs2000():
    return generate(2000)


def _words(doc):
    return _WORD.findall(doc.lower())


def test_default_seed_constant():
    assert DEFAULT_SEED == 1234
    assert generate(5) == generate(5, seed=DEFAULT_SEED)


def test_deterministic_and_independent_of_global_rng():
    random.seed(1)
    a = generate(50, seed=7)
    random.seed(999)
    random.random()
    b = generate(50, seed=7)
    assert a == b
    assert generate(50, seed=8) != a


def test_prefix_stable():
    # A smaller corpus is a prefix of a larger one for the same seed.
    assert generate(100)[:10] == generate(10)


def test_count_and_types():
    docs = generate(37, seed=3)
    assert isinstance(docs, list) and len(docs) == 37
    assert all(isinstance(d, str) and d for d in docs)


@pytest.mark.parametrize("bad", [0, -1])
def test_value_error(bad):
    with pytest.raises(ValueError):
        generate(bad)


def test_doc_shape(docs2000):
    for d in docs2000:
        n = len(d.split())
        assert 60 <= n <= 200, n
        assert d.endswith(".")
        assert d.isascii()
        assert "\n" not in d and "  " not in d and d == d.strip()


def test_vocabulary_size(docs2000):
    vocab = {w for d in docs2000 for w in _words(d)}
    assert 200 <= len(vocab) <= 5000, len(vocab)


def _genre_of(doc):
    """The genres whose opening phrasings (corpus._OPENINGS) match the start of `doc`."""
    found = set()
    for genre, openings in corpus._OPENINGS.items():
        for o in openings:
            pattern = re.escape(o)
            for slot in ("p", "q", "t", "day", "job", "how"):
                pattern = pattern.replace(re.escape("{" + slot + "}"), r"[\w ']+?")
            if re.match(pattern, doc):
                found.add(genre)
    return found


def test_genre_variety(docs2000):
    genres, phrasings = Counter(), Counter()
    for d in docs2000:
        found = _genre_of(d)
        assert len(found) == 1, (found, d[:80])
        genres[found.pop()] += 1
        phrasings[d.split()[0]] += 1
    assert len(genres) == 5 and min(genres.values()) > 200
    assert len(phrasings) >= 15  # openings are phrased several ways, not one per genre


def _consistent(docs, pattern):
    seen = {}
    hits = 0
    for d in docs:
        for m in re.finditer(pattern, d):
            key, value = m.group(1), m.groups()[1:]
            assert seen.setdefault(key, value) == value, (key, value, seen[key])
            hits += 1
    return seen, hits


def test_world_facts_are_consistent_across_docs_and_seeds(docs2000):
    docs = docs2000 + generate(500, seed=99)
    for pat in (
        r"The town of (\w+) lies on the river (\w+)\.",
        r"(\w+) is known for its (\w+)\.",
        r"The nearest town to (\w+) is (\w+)\.",
        r"The gates of (\w+) are painted (\w+)\.",
        r"(\w+) is a (\w+) from (\w+)\.",
    ):
        seen, hits = _consistent(docs, pat)
        assert hits > 100 and len(seen) >= 20, pat


def test_dialogue_answers_match_facts(docs2000):
    rivers, _ = _consistent(docs2000, r"The town of (\w+) lies on the river (\w+)\.")
    n = 0
    for d in docs2000:
        for town, river in re.findall(r'"Where does (\w+) lie\?" asked \w+\. "On the river (\w+),"', d):
            assert rivers[town] == (river,)
            n += 1
    assert n > 50


def test_counting_sequences_are_ordered(docs2000):
    numbers = corpus._NUMBERS
    n = 0
    for d in docs2000:
        for seq in re.findall(r"We counted the \w+: ([a-z, ]+)\.", d):
            items = seq.split(", ")
            assert items == numbers[: len(items)]
            n += 1
    assert n > 100


def test_entities_repeat_within_documents(docs2000):
    # Most documents name their main town several times, so copying helps.
    towns = set(corpus._TOWNS)
    repeated = 0
    for d in docs2000:
        c = Counter(w for w in _WORD.findall(d) if w in towns)
        if c and c.most_common(1)[0][1] >= 3:
            repeated += 1
    assert repeated / len(docs2000) > 0.9


def test_bigram_learnability():
    docs = generate(1800, seed=5)
    train, test = docs[:1500], docs[1500:]
    unigram, bigram = Counter(), Counter()
    for d in train:
        toks = ["<s>"] + _words(d)
        unigram.update(toks[:-1])
        bigram.update(zip(toks, toks[1:]))
    vocab = {w for d in train for w in _words(d)} | {"<unk>"}
    V = len(vocab)
    k = 0.1  # add-k smoothing so unseen pairs keep non-zero mass
    nll, n = 0.0, 0
    for d in test:
        toks = ["<s>"] + [w if w in vocab else "<unk>" for w in _words(d)]
        for a, b in zip(toks, toks[1:]):
            p = (bigram[(a, b)] + k) / (unigram[a] + k * V)
            nll -= math.log(p)
            n += 1
    ppl = math.exp(nll / n)
    assert ppl < V / 10, (ppl, V)


def test_held_out_documents_are_not_copies_of_training_text():
    """On the default profile's own splits (config/tiny.toml: the flow's document split, its
    tokenizer trained on the training documents as the flow trains it), few windows of an attack
    continuation's length (16 tokens) in the test documents occur verbatim anywhere in the
    training split's token stream, so that a test continuation is predicted, not recalled."""
    from monollm import config
    from monollm.data import documents
    from monollm.model import foundation

    cfg = config.load_file(os.path.join(os.path.dirname(__file__), "..", "config", "tiny.toml"))
    held, stream = documents.split_documents(cfg.data, cfg.seed)
    train_docs = list(stream)
    tok = foundation.build_tokenizer(train_docs, cfg.model.build.vocab_size)
    n = cfg.attack.continuation_len
    flat = [t for d in documents.tokenize(tok, train_docs) for t in (*d, tok.eos_token_id)]
    seen = {tuple(flat[i:i + n]) for i in range(len(flat) - n + 1)}
    windows = [tuple(d[i:i + n]) for d in documents.tokenize(tok, held["test"]) for i in range(len(d) - n + 1)]
    copied = sum(w in seen for w in windows) / len(windows)
    assert n == 16 and len(windows) > 10_000
    assert copied < 0.10, copied
