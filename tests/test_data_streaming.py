"""The streaming data path of paper scale, on local shards through the same `datasets` code.

The Pile profile streams `monology/pile-uncopyrighted` (jsonl.zst shards) with
`datasets.load_dataset(..., streaming=True)`. Here the same calls read local jsonl,
parquet and jsonl.zst shards, and a local folder laid out like the hub repository goes
through the hub branch itself (`data.source = "hub"`, offline).
"""
import dataclasses
import itertools
import json
import os
import re

import pytest

from monollm import config
from monollm.data import documents

SHARDS, ROWS = 3, 400


def doc(shard: int, row: int) -> str:
    return f"shard {shard} row {row}: the {row % 7} quick foxes of shard {shard} jump"


def parse(text: str) -> tuple[int, int]:
    shard, row = re.match(r"shard (\d+) row (\d+):", text).groups()
    return int(shard), int(row)


def write_shards(folder, fmt: str, shards: int = SHARDS, rows: int = ROWS) -> str:
    """`shards` files of `rows` documents (plus a `meta` column, like the Pile); returns a glob."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for s in range(shards):
        records = [{"text": doc(s, r), "meta": {"pile_set_name": "test"}} for r in range(rows)]
        lines = "".join(json.dumps(rec) + "\n" for rec in records).encode()
        path = os.path.join(folder, f"{s:02d}.{fmt}")
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(records), path)
        elif fmt == "jsonl.zst":
            import zstandard

            with open(path, "wb") as f:
                f.write(zstandard.ZstdCompressor().compress(lines))
        else:
            with open(path, "wb") as f:
                f.write(lines)
    return os.path.join(folder, f"*.{fmt}")


def data_cfg(**kw) -> config.DataConfig:
    base = dict(source="local", val_docs=20, attack_opt_docs=15, test_docs=25, shuffle_buffer=64)
    return dataclasses.replace(config.DataConfig(), **{**base, **kw})


def read_all(cfg, seed):
    held, stream = documents.split_documents(cfg, seed)
    return held, list(stream)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "jsonl.zst"])
def test_local_shards_split_disjoint_complete_and_seeded(fmt, tmp_path):
    cfg = data_cfg(path=write_shards(tmp_path / "shards", fmt))
    held, train = read_all(cfg, seed=1)
    assert {k: len(v) for k, v in held.items()} == {"test": 25, "attack_opt": 15, "val": 20}
    everything = [d for docs in held.values() for d in docs] + train
    assert len(everything) == len(set(everything)) == SHARDS * ROWS  # disjoint, nothing lost or repeated
    assert {parse(d)[0] for d in held["test"]} == set(range(SHARDS))  # shuffled across shards
    assert read_all(cfg, seed=1) == (held, train)  # deterministic from the seed
    other, _ = read_all(cfg, seed=2)
    assert other["test"] != held["test"]


def test_hub_branch_on_a_local_mirror_streams_like_local_files(tmp_path):
    """A folder laid out like monology/pile-uncopyrighted (train/NN.jsonl.zst) read through the
    hub branch gives exactly the documents, in the order, of the same shards read as local files."""
    mirror = tmp_path / "pile-uncopyrighted"
    pattern = write_shards(mirror / "train", "jsonl.zst")
    hub = data_cfg(source="hub", path=str(mirror), split="train", max_train_docs=200)
    local = data_cfg(source="local", path=pattern, max_train_docs=200)
    h_held, h_train = read_all(hub, seed=3)
    l_held, l_train = read_all(local, seed=3)
    assert (h_held, h_train) == (l_held, l_train)
    assert len(h_train) == 200


def test_buffered_shuffle_never_reads_ahead_of_the_buffer(tmp_path):
    """Output i of a buffered shuffle can only come from the first `buffer + i` rows of a shard:
    the stream is read as it is consumed, never loaded whole."""
    rows, buffer = 5000, 50
    cfg = data_cfg(path=write_shards(tmp_path / "one", "jsonl", shards=1, rows=rows), shuffle_buffer=buffer,
                   max_train_docs=40)
    held, stream = documents.split_documents(cfg, seed=0)
    out = held["test"] + held["attack_opt"] + held["val"] + list(stream)
    assert len(out) == 25 + 15 + 20 + 40
    for i, text in enumerate(out):
        assert parse(text)[1] < buffer + i + 1, (i, text)
    assert max(parse(t)[1] for t in out) < buffer + len(out) < rows // 10


class Counter:
    """A document source that counts how many rows anyone pulled from it."""

    def __init__(self, n):
        self.n, self.pulled = n, 0

    def rows(self):
        for i in range(self.n):
            self.pulled += 1
            yield {"text": f"shard 0 row {i}: text", "meta": {}}


def test_hub_branch_pulls_only_what_it_uses(monkeypatch):
    """A generator-backed stand-in for the hub: a million documents, of which the splits pull
    only the shuffle buffer plus what was consumed."""
    import datasets

    source, calls = Counter(1_000_000), []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming, kwargs))
        return datasets.IterableDataset.from_generator(source.rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = data_cfg(source="hub", path="monology/pile-uncopyrighted", shuffle_buffer=100)
    held, stream = documents.split_documents(cfg, seed=0)
    train = list(itertools.islice(stream, 30))
    assert calls == [("monology/pile-uncopyrighted", None, "train", True, {"revision": "main"})]
    consumed = sum(map(len, held.values())) + len(train)
    assert consumed <= source.pulled <= cfg.shuffle_buffer + consumed + 1
    assert source.pulled < 1000


def test_hub_branch_reads_the_pinned_revision_for_every_split(monkeypatch):
    """`data.revision` reaches every load_dataset call of a hub source, held-out files included."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((split, kwargs))
        return datasets.IterableDataset.from_generator(Counter(500).rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pinned = "0123456789abcdef0123456789abcdef01234567"
    cfg = data_cfg(source="hub", path="monology/pile-uncopyrighted", revision=pinned, test_from="test.jsonl.zst")
    documents.split_documents(cfg, seed=0)
    assert dict(calls) == {"train": {"revision": pinned},
                           "held_out": {"data_files": {"held_out": "test.jsonl.zst"}, "revision": pinned}}
    assert len(calls) == 2


def fake_tokenizer(docs, add_special_tokens=False):
    return {"input_ids": [[ord(c) % 97 for c in d] for d in docs]}


def test_train_blocks_read_only_as_far_as_the_budget():
    source = Counter(1_000_000)
    texts = (r["text"] for r in source.rows())
    blocks = documents.train_blocks(fake_tokenizer, texts, block_len=32, tokens_needed=32 * 100, eos_id=0, chunk=10)
    assert blocks.shape == (100, 32)
    lengths = itertools.accumulate(len(r["text"]) + 1 for r in Counter(1_000_000).rows())  # tokens + EOS
    needed = next(i + 1 for i, total in enumerate(lengths) if total >= 32 * 100)
    assert needed <= source.pulled <= needed + 10  # at most one chunk beyond the budget


def test_local_files_look_through_compression(tmp_path):
    write_shards(tmp_path / "z", "jsonl.zst", shards=2, rows=3)
    builder, files = documents.local_files(str(tmp_path / "z"))
    assert builder == "json" and len(files) == 2
    (tmp_path / "z" / "extra.parquet").write_bytes(b"")
    with pytest.raises(config.ConfigError, match="one format"):
        documents.local_files(str(tmp_path / "z"))


def test_missing_text_field_names_the_columns(tmp_path):
    cfg = data_cfg(path=write_shards(tmp_path / "s", "jsonl", shards=1, rows=100), text_field="content")
    with pytest.raises(KeyError, match="meta"):
        documents.split_documents(cfg, seed=0)
