"""Held-out windows that share an n-gram with the training blocks: measured in setup, and replaced
under data.decontaminate (monollm.data.contamination, pipeline._examples)."""
import random

import numpy as np
import pytest

from monollm import config, pipeline
from monollm.data import contamination, documents
from monollm.model import foundation

N, EOS = 13, 0


def test_a_window_copied_into_a_training_document_is_contaminated_and_a_clean_one_is_not():
    rng = np.random.default_rng(0)
    train = rng.integers(1, 5000, (40, 32))
    held = [list(map(int, rng.integers(1, 5000, 80))) for _ in range(3)]
    train[7, 5:25] = held[1][30:50]  # 20 tokens of a held-out document inside a training document
    shared = contamination.shared_ngrams({"test": held}, train, N, EOS)
    assert len(shared) == 20 - N + 1  # exactly the planted n-grams
    # inside the copy; another document; 13 tokens shared with the copy; only 12
    windows = np.array([held[1][28:52], held[0][0:24], held[1][37:61], held[1][38:62]])
    assert contamination.flagged(windows, shared, N).tolist() == [True, False, True, False]


def test_an_ngram_across_two_training_rows_and_two_chunks_counts(monkeypatch):
    """The training blocks are one stream cut into rows (and hashed in chunks): a copy split by a
    row end, and by a chunk end, is found as a copy that sits inside one row."""
    rng = np.random.default_rng(1)
    train = rng.integers(1, 5000, (10, 16))
    held = [list(map(int, rng.integers(1, 5000, 40)))]
    train.reshape(-1)[10:30] = held[0][5:25]  # rows 0 and 1
    whole = contamination.shared_ngrams({"test": held}, train, N, EOS)
    monkeypatch.setattr(contamination, "CHUNK", 7)  # chunk ends fall inside the copy
    assert len(whole) == 20 - N + 1 and np.array_equal(contamination.shared_ngrams({"test": held}, train, N, EOS),
                                                       whole)


def test_the_report_counts_rates_and_replacements_and_reads_in_one_line():
    windows = np.arange(60).reshape(5, 12)
    shared = np.unique(contamination.ngram_hashes(windows[[1, 3]], 4).reshape(-1))
    found = contamination.report({("test", "attack windows"): windows, ("val", "blocks"): windows[[0]]}, shared,
                                 4, 1234, replaced=(("test", "attack windows"),))
    assert found["rows"] == [
        {"split": "test", "unit": "attack windows", "windows": 5, "contaminated": 2, "rate": 0.4, "replaced": 2},
        {"split": "val", "unit": "blocks", "windows": 1, "contaminated": 0, "rate": 0.0, "replaced": 0}]
    text = contamination.describe(found)
    assert "4-gram" in text and "1,234 training tokens" in text and "test attack windows 2 of 5 (40.0%)" in text
    assert "replaced" in text and "\n" not in text
    assert "not measured" in contamination.describe(None)


# --- decontaminate: pipeline._examples on a tokenizer's real windows ---------------------

WORDS = [f"{a}{b}{c}" for a in "bdfgklmnprst" for b in "aeiou" for c in "lnrst"]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


@pytest.fixture(scope="module")
def corpus():
    """(tokenizer, held-out token ids, training documents' ids): random words, so no held-out
    window shares 13 tokens with the training text unless one is copied there."""
    rng = random.Random(0)
    held = {"test": [text(rng, 70) for _ in range(6)], "attack_opt": [text(rng, 70) for _ in range(6)],
            "val": [text(rng, 70) for _ in range(3)]}
    train = [text(rng, 70) for _ in range(40)]
    tok = foundation.build_tokenizer(train + [d for docs in held.values() for d in docs], 400)
    ids = {name: documents.tokenize(tok, docs) for name, docs in held.items()}
    return tok, ids, documents.tokenize(tok, train)


def examples(corpus, planted: list, decontaminate: bool, n: int = 8):
    """pipeline._examples with the test documents `planted` copied into the training documents."""
    tok, held, train_docs = corpus
    cfg = config.load({"data": {"decontaminate": decontaminate, "block_len": 32},
                       "attack": {"examples": n, "context_len": 16, "continuation_len": 8}})
    docs = train_docs[:20] + [held["test"][i] for i in planted] + train_docs[20:]
    train = documents.pack(docs, 32, tok.eos_token_id)
    blocks = {name: documents.pack(ids, 32, tok.eos_token_id) for name, ids in held.items()}
    return pipeline._examples(cfg, tok, held, blocks, train), train


def test_without_a_copy_no_window_is_contaminated(corpus):
    (ex, found), train = examples(corpus, [], decontaminate=False)
    assert found["n"] == 13 and found["train_tokens"] == train.size
    assert [(r["split"], r["unit"]) for r in found["rows"]] == [
        ("test", "attack windows"), ("test", "blocks"), ("attack_opt", "attack windows"), ("val", "blocks")]
    assert all(r["contaminated"] == 0 and r["windows"] > 0 for r in found["rows"])


def test_decontaminate_replaces_the_copied_windows_and_keeps_the_count(corpus):
    (plain, found), train = examples(corpus, [0, 1, 2], decontaminate=False)
    test = found["rows"][0]
    assert test["contaminated"] >= 2 and test["replaced"] == 0  # windows of the copied documents
    (clean, found_clean), _ = examples(corpus, [0, 1, 2], decontaminate=True)
    assert found_clean["rows"][0] == {**test, "replaced": test["contaminated"]}
    shared = contamination.shared_ngrams(corpus[1], train, 13, corpus[0].eos_token_id)
    assert len(clean["test"]) == len(plain["test"]) == 8
    assert not contamination.flagged(clean["test"], shared, 13).any()
    assert len({tuple(r) for r in np.concatenate([clean["test"], clean["attack_opt"]])}) == 16  # disjoint
    # the clean windows drawn as usual are kept; only the contaminated ones changed
    kept = {tuple(r) for r, bad in zip(plain["test"], contamination.flagged(plain["test"], shared, 13)) if not bad}
    assert kept <= {tuple(r) for r in clean["test"]}
    assert np.array_equal(clean["attack_opt"], plain["attack_opt"])  # nothing of attack_opt was copied


def test_too_few_clean_windows_stop_setup_with_one_line_saying_how_many_and_what_to_change(corpus):
    with pytest.raises(config.ConfigError) as err:
        examples(corpus, [0, 1, 2, 3, 4, 5], decontaminate=True)  # every test document copied
    message = str(err.value)
    assert "\n" not in message and "'test'" in message and "left out as contaminated" in message
    assert "data.decontaminate = false" in message and "data.test_docs" in message
    assert " 0 attack windows" in message
