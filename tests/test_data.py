"""Tests for monollm.data.documents: deterministic disjoint splits, packing without padding,
the token budget, and local files read through `datasets`."""
import dataclasses
import itertools
import json
import os

import numpy as np
import pandas as pd
import pytest

from monollm import pipeline
from monollm.data import corpus, documents
from monollm.model import foundation
from monollm.config import ConfigError, DataConfig

EOS = 0


def small_cfg(**kw) -> DataConfig:
    base = dict(builtin_docs=120, val_docs=10, attack_opt_docs=15, test_docs=20, shuffle_buffer=1000)
    base.update(kw)
    return DataConfig(**base)


def all_splits(cfg, seed):
    held, rest = documents.split_documents(cfg, seed)
    return {**held, "train": list(rest)}


@pytest.fixture(scope="module")
def tokenizer():
    return foundation.build_tokenizer(corpus.generate(150), 300)


# --- splits -------------------------------------------------------------------------

def test_builtin_splits_disjoint_complete_and_sized():
    cfg = small_cfg()
    splits = all_splits(cfg, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"test": 20, "attack_opt": 15, "val": 10, "train": 75}
    sets = {k: set(v) for k, v in splits.items()}
    for a, b in itertools.combinations(sets, 2):
        assert not sets[a] & sets[b], f"{a} and {b} share documents"
    assert set().union(*sets.values()) == set(corpus.generate(120))


def test_splits_deterministic_from_seed():
    cfg = small_cfg()
    assert all_splits(cfg, seed=3) == all_splits(cfg, seed=3)
    other = all_splits(cfg, seed=4)
    assert other["test"] != all_splits(cfg, seed=3)["test"]
    assert set(other["test"]) != set(all_splits(cfg, seed=3)["test"])  # a different split, not just order


def test_max_train_docs_caps_train_only():
    splits = all_splits(small_cfg(max_train_docs=7), seed=0)
    assert len(splits["train"]) == 7 and len(splits["test"]) == 20


def test_split_too_small_raises_naming_the_split():
    with pytest.raises(ValueError, match=r"data\.val_docs"):
        documents.split_documents(small_cfg(builtin_docs=40), seed=0)  # 20 + 15 fit, val gets 5 of 10


def test_local_jsonl_splits_disjoint_by_document(tmp_path):
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(60):
            f.write(json.dumps({"body": f"document {i} is here.", "id": i}) + "\n")
    cfg = DataConfig(source="local", path=str(path), text_field="body", val_docs=5, attack_opt_docs=5,
                     test_docs=10, shuffle_buffer=100)
    splits = all_splits(cfg, seed=1)
    ids = {k: {int(t.split()[1]) for t in v} for k, v in splits.items()}
    assert sum(len(v) for v in ids.values()) == 60 and set().union(*ids.values()) == set(range(60))
    assert all(not ids[a] & ids[b] for a, b in itertools.combinations(ids, 2))
    assert all_splits(cfg, seed=1) == splits


def test_held_out_splits_come_from_their_own_files(tmp_path):
    """The Pile's layout: train shards, and separate val and test files. test comes from the
    test file, attack_opt and val take disjoint documents of the val file, train only train's."""
    import zstandard

    def shard(path, name, n):
        lines = "".join(json.dumps({"text": f"{name} document {i}."}) + "\n" for i in range(n))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))

    shard(tmp_path / "train" / "00.jsonl.zst", "train", 30)
    shard(tmp_path / "train" / "01.jsonl.zst", "train2", 30)
    shard(tmp_path / "val.jsonl.zst", "val", 20)
    shard(tmp_path / "test.jsonl.zst", "test", 12)
    cfg = DataConfig(source="local", path=str(tmp_path / "train" / "*.jsonl.zst"), test_docs=12, attack_opt_docs=8,
                     val_docs=12, test_from=str(tmp_path / "test.jsonl.zst"),
                     attack_opt_from=str(tmp_path / "val.jsonl.zst"), val_from=str(tmp_path / "val.jsonl.zst"))
    splits = all_splits(cfg, seed=0)
    origin = {k: {t.split()[0] for t in v} for k, v in splits.items()}
    assert origin == {"test": {"test"}, "attack_opt": {"val"}, "val": {"val"}, "train": {"train", "train2"}}
    assert len(splits["train"]) == 60 and not set(splits["attack_opt"]) & set(splits["val"])
    with pytest.raises(ValueError, match="data.val_from .* ran out while filling 'val'"):
        all_splits(dataclasses.replace(cfg, val_docs=13), seed=0)
    sources = documents.split_sources(dataclasses.asdict(cfg))
    assert sources["test"].endswith("test.jsonl.zst") and "held out" not in sources["val"]
    assert "held out by document" in documents.split_sources({"source": "builtin"})["test"]


def test_a_text_repeated_across_held_out_files_lands_in_one_split_only(tmp_path):
    """Held-out files that share documents (the Pile's val and test do) still give disjoint splits."""
    for name in ("train", "val", "test"):
        lines = [{"text": f"{name} document {i}."} for i in range(20)] + [{"text": "shared document."}] * 3
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = DataConfig(source="local", path=str(tmp_path / "train.jsonl"), test_docs=23, attack_opt_docs=18,
                     val_docs=2, test_from=str(tmp_path / "test.jsonl"), attack_opt_from=str(tmp_path / "val.jsonl"),
                     val_from=str(tmp_path / "val.jsonl"))
    held, _ = documents.split_documents(cfg, seed=0)
    assert held["test"].count("shared document.") == 3  # repeats within a split are the source's own
    assert "shared document." not in held["attack_opt"] + held["val"]
    pipeline.require_disjoint(held)


def test_held_out_sources_are_checked_in_the_config(tmp_path):
    from monollm import config

    with pytest.raises(ConfigError, match="data.test_from"):
        config.load({"data": {"test_from": "test"}})  # builtin has one source
    with pytest.raises(ConfigError, match="'data.val_from' matches no file"):
        write_jsonl(tmp_path / "a.jsonl")
        config.load({"data": {"source": "local", "path": str(tmp_path / "a.jsonl"),
                              "val_from": str(tmp_path / "none.jsonl")}})


# --- packing ------------------------------------------------------------------------

def test_pack_no_padding_eos_between_docs_tail_dropped():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11], [12, 13, 14, 15]]
    T = 4
    blocks = documents.pack(docs, T, EOS)
    stream = [t for d in docs for t in d + [EOS]]  # 5 docs + 5 EOS = 20 tokens
    n = len(stream) // T
    assert blocks.shape == (n, T) and blocks.dtype == np.int32
    assert blocks.flatten().tolist() == stream[:n * T]  # every row full of real tokens, order kept
    assert (blocks == EOS).sum() == stream[:n * T].count(EOS)  # EOS only between documents


def test_pack_drops_partial_tail_and_stops_at_max_blocks():
    docs = [list(range(1, 8))]  # 7 tokens + EOS = 8
    assert documents.pack(docs, 3, EOS).flatten().tolist() == [1, 2, 3, 4, 5, 6]  # [7, EOS] dropped
    assert documents.pack(docs, 3, EOS, max_blocks=1).tolist() == [[1, 2, 3]]
    assert documents.pack([], 5, EOS).shape == (0, 5)
    assert documents.pack([[1]], 5, EOS).shape == (0, 5)


def test_tokenize_adds_no_special_tokens(tokenizer):
    docs = corpus.generate(5)
    ids = documents.tokenize(tokenizer, docs)
    assert len(ids) == 5 and all(tokenizer.eos_token_id not in d for d in ids)
    assert [tokenizer.decode(d) for d in ids] == docs
    assert documents.tokenize(tokenizer, []) == []


# --- train_blocks and the token budget ------------------------------------------------

class Counting:
    """An iterator that counts how many documents were taken from it."""

    def __init__(self, docs):
        self.docs, self.taken = iter(docs), 0

    def __iter__(self):
        return self

    def __next__(self):
        doc = next(self.docs)
        self.taken += 1
        return doc


def test_train_blocks_stop_at_token_budget(tokenizer):
    docs = corpus.generate(400)
    T, eos = 16, tokenizer.eos_token_id
    stream = Counting(docs)
    budget = 20 * T + 1  # needs 21 blocks
    blocks = documents.train_blocks(tokenizer, stream, T, budget, eos, chunk=5)
    assert blocks.shape == (21, T)
    assert stream.taken < 50  # read only as far as the budget needs, in chunks
    # identical to packing the consumed documents in one go: the tail carries across chunks
    expected = documents.pack(documents.tokenize(tokenizer, docs[:stream.taken]), T, eos)[:21]
    np.testing.assert_array_equal(blocks, expected)


def test_train_blocks_short_stream_returns_what_exists(tokenizer):
    docs = corpus.generate(6)
    T, eos = 16, tokenizer.eos_token_id
    blocks = documents.train_blocks(tokenizer, iter(docs), T, 10 ** 9, eos, chunk=4)
    np.testing.assert_array_equal(blocks, documents.pack(documents.tokenize(tokenizer, docs), T, eos))


@pytest.mark.parametrize("before", ["false", None])
def test_tokenizer_threads_give_the_same_ids_and_restore_the_setting(tokenizer, monkeypatch, before):
    """setup tokenizes on all CPUs; the ids and blocks are those of one thread."""
    if before is None:
        monkeypatch.delenv(documents.PARALLELISM, raising=False)
    else:
        monkeypatch.setenv(documents.PARALLELISM, before)
    docs = corpus.generate(300)
    T, eos = 16, tokenizer.eos_token_id
    os.environ[documents.PARALLELISM] = "false"
    one = documents.tokenize(tokenizer, docs), documents.train_blocks(tokenizer, iter(docs), T, 10 ** 9, eos, chunk=50)
    if before is None:
        del os.environ[documents.PARALLELISM]
    with documents.tokenizer_threads():
        if len(os.sched_getaffinity(0)) > 1:
            assert os.environ[documents.PARALLELISM] == "true"
        many = documents.tokenize(tokenizer, docs), documents.train_blocks(tokenizer, iter(docs), T, 10 ** 9, eos, chunk=50)
    assert many[0] == one[0]
    np.testing.assert_array_equal(many[1], one[1])
    # back as it was; "false" where it was unset, so that later forks do not make the tokenizer warn
    assert os.environ[documents.PARALLELISM] == "false"


def test_train_blocks_empty_stream(tokenizer):
    with pytest.raises(ValueError, match="training split is empty"):
        documents.train_blocks(tokenizer, iter([]), 16, 1000, tokenizer.eos_token_id)


# --- local files through `datasets` ----------------------------------------------------

DOCS = [f"Document {i}: the river runs past the mill." for i in range(12)]


def write_jsonl(path):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))


def write_txt(path):
    path.write_text("\n\n".join(DOCS) + "\n")  # one document per paragraph


def write_parquet(path):
    pd.DataFrame({"text": DOCS}).to_parquet(path)


def write_csv(path):
    pd.DataFrame({"text": DOCS}).to_csv(path, index=False)


@pytest.mark.parametrize("ext,writer", [(".jsonl", write_jsonl), (".txt", write_txt),
                                        (".parquet", write_parquet), (".csv", write_csv)])
def test_local_file_formats_load_through_datasets(tmp_path, ext, writer, monkeypatch):
    import datasets

    # the parquet builder sleeps 5 s whenever a stream closes (an Arrow thread-shutdown workaround)
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.05)
    path = tmp_path / f"docs{ext}"
    writer(path)
    builder, files = documents.local_files(str(path))
    assert files == [str(path)] and builder == documents.FORMATS[ext]
    cfg = DataConfig(source="local", path=str(path), shuffle_buffer=100)
    got = list(documents.document_stream(cfg, seed=0))
    # each document exactly once, text intact (the text builder keeps the file's final newline)
    assert sorted(d.strip() for d in got) == sorted(DOCS)
    assert got == list(documents.document_stream(cfg, seed=0))


def test_local_directory_and_glob(tmp_path):
    write_jsonl(tmp_path / "a.jsonl")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "one more document."}) + "\n")
    builder, files = documents.local_files(str(tmp_path))
    assert builder == "json" and len(files) == 2
    assert documents.local_files(str(tmp_path / "*.jsonl"))[1] == [str(tmp_path / "a.jsonl")]
    got = list(documents.document_stream(DataConfig(source="local", path=str(tmp_path)), seed=0))
    assert sorted(got) == sorted(DOCS + ["one more document."])


def test_local_missing_text_field(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl")
    cfg = DataConfig(source="local", path=str(tmp_path / "docs.jsonl"), text_field="body")
    with pytest.raises(KeyError, match="body"):
        next(documents.document_stream(cfg, seed=0))


def test_local_path_errors(tmp_path):
    with pytest.raises(ConfigError, match="matches no file"):
        documents.local_files(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="matches no file"):
        documents.local_files(str(tmp_path))  # empty directory
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(ConfigError, match=r"\.docx") as exc:
        documents.local_files(str(tmp_path / "notes.docx"))
    assert "data.path" in str(exc.value) and ".jsonl" in str(exc.value)
    write_jsonl(tmp_path / "docs.jsonl")
    with pytest.raises(ConfigError, match="one format"):
        documents.local_files(str(tmp_path))  # .docx and .jsonl mixed


def _bad_byte_files(folder, offset: int = 20) -> str:
    """Three .jsonl files of 40 documents; the second has byte 0xff at `offset`, inside a document's
    text (the only byte of the set that is not UTF-8). Its path."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        raw = "".join(json.dumps({"text": f"file {i} document {j}."}) + "\n" for j in range(40)).encode()
        if i == 1:
            raw = raw[:offset] + b"\xff" + raw[offset + 1:]
        (folder / f"{i}.jsonl").write_bytes(raw)
    return str(folder / "1.jsonl")


@pytest.mark.parametrize("where", ["path", "test_from"])
def test_a_file_that_is_not_utf8_is_named_with_its_byte_and_key(tmp_path, where):
    """`datasets` says only "'utf-8' codec can't decode byte 0xff in position N" (a position in
    its own chunk): the error names the file, the byte offset in it and the key."""
    bad = _bad_byte_files(tmp_path / "bad")
    write_jsonl(tmp_path / "good.jsonl")
    key, cfg = ("data.path", DataConfig(source="local", path=str(tmp_path / "bad"), test_docs=5, val_docs=5,
                                        attack_opt_docs=5)) if where == "path" else \
        ("data.test_from", DataConfig(source="local", path=str(tmp_path / "good.jsonl"), test_docs=120, val_docs=1,
                                      attack_opt_docs=1, test_from=str(tmp_path / "bad")))  # every test document
    with pytest.raises(ConfigError) as err:
        all_splits(cfg, seed=0)
    msg = str(err.value)
    for needle in (f"'{key}'", bad, "byte 0xff at byte offset 20", "UTF-8"):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert "\n" not in msg


def test_first_non_utf8_finds_the_byte_across_chunks_and_compression(tmp_path):
    import zstandard

    raw = "é".encode() * 5 + b"\xffabc"  # two-byte characters: the bad byte at offset 10
    (tmp_path / "a.txt").write_bytes(raw)
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "ok.txt").write_text("fine ü")
    for chunk in (1, 3, 4, 100):  # a character split between two reads is no error
        assert documents.first_non_utf8([str(tmp_path / "ok.txt"), str(tmp_path / "a.txt")], chunk) == \
            (str(tmp_path / "a.txt"), 10, 0xFF)
    assert documents.first_non_utf8([str(tmp_path / "b.jsonl.zst")]) == (str(tmp_path / "b.jsonl.zst"), 10, 0xFF)
    assert documents.first_non_utf8([str(tmp_path / "ok.txt")]) is None


def test_a_txt_file_of_one_document_per_line_is_one_document_and_the_error_says_so(tmp_path):
    """Lines without blank lines between them are one paragraph, so one document: the corpus "runs
    out" at 1 document; the error says how a .txt file is cut and how long the document read is."""
    (tmp_path / "docs.txt").write_text("\n".join(f"short document number {i}." for i in range(100)))
    cfg = DataConfig(source="local", path=str(tmp_path / "docs.txt"), test_docs=20, val_docs=5, attack_opt_docs=5)
    with pytest.raises(ValueError, match=r"1 of 20 documents") as err:
        documents.split_documents(cfg, seed=0)
    assert "a document is a paragraph, ended by a blank line" in str(err.value)
    assert "the longest read has 400 words" in str(err.value)
    (tmp_path / "docs.txt").write_text("\n\n".join(f"short document number {i}." for i in range(100)))
    assert len(documents.split_documents(cfg, seed=0)[0]["test"]) == 20
