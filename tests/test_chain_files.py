"""eval.order.chains files of the wrong shape: every field of every record given values of the
other JSON types, lists for strings and strings for lists, empty values and duplicate ids. Each
stops the profile's load (what `start` runs) with one line naming the file, the record and the
field; none is read with another meaning."""
import copy
import json
import os
import tomllib

import pytest

from monollm import config
from monollm.evaluation import order_chains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "tests", "micro.toml"), "rb") as _f:
    MICRO_RAW = tomllib.load(_f)

CHAINS = [{"chain_id": "c0", "axis": "size", "topic": "t0", "sequence": ["small", "large", "huge"], "split": "fit"},
          {"chain_id": "c1", "axis": "size", "topic": "t1", "sequence": ["tiny", "big"], "split": "eval"}]
PAIRS = [{"pair_id": "p0", "chain_id": "c0", "axis": "size", "topic": "t0", "weaker": "small", "stronger": "large",
          "level_gap": 1, "split": "fit"},
         {"pair_id": "p1", "chain_id": "c0", "axis": "size", "topic": "t0", "weaker": "small", "stronger": "huge",
          "level_gap": 2, "split": "fit"},
         {"pair_id": "p2", "chain_id": "c1", "axis": "size", "topic": "t1", "weaker": "tiny", "stronger": "big",
          "level_gap": 1, "split": "eval"}]
"""A valid published pairs file (hand-built): two chains, three pairs."""

TEXT = [None, 0, 1.5, True, [], ["size"], {}, {"a": 1}, "", "  "]
ID = [None, True, 1.5, [], ["c0"], {}, {"id": "c0"}, ""]  # an integer is a valid id
TEXTS = ["abc", "", [], ["one"], ["a", "a"], [1, 2], [["a"], ["b"]], [{}, {}], ["a", ""], None, {}, 3]
GAP = [0, -1, True, "1", 1.5, None, [], {}]
SPLIT = ["train", "", 1, None, [], ["fit"], {}]
CHAIN_FIELDS = {"chain_id": ID, "axis": TEXT, "topic": TEXT, "sequence": TEXTS, "split": SPLIT}
PAIR_FIELDS = {"pair_id": ID, "chain_id": ID, "axis": TEXT, "topic": TEXT, "weaker": TEXT, "stronger": TEXT,
               "level_gap": GAP, "split": SPLIT}


def load_with(path: str):
    raw = copy.deepcopy(MICRO_RAW)
    raw.setdefault("eval", {}).setdefault("order", {})["chains"] = str(path)
    return config.load(raw)


def refused(path, *needles) -> str:
    with pytest.raises(config.ConfigError) as err:
        load_with(path)
    msg = str(err.value)
    assert "\n" not in msg and "eval.order.chains" in msg and str(path) in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def published(tmp_path, chains=CHAINS, pairs=PAIRS) -> str:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"metadata": {"axes": ["size"]}, "chains": chains, "pairs": pairs}))
    return str(path)


def test_the_base_published_file_and_jsonl_file_load(tmp_path):
    chains = order_chains.load_chains(published(tmp_path))
    assert [c["texts"] for c in chains] == [["small", "large", "huge"], ["tiny", "big"]]
    assert [[p["pair_id"] for p in c["pairs"]] for c in chains] == [["p0", "p1"], ["p2"]]
    load_with(published(tmp_path))
    path = tmp_path / "chains.jsonl"
    path.write_text("".join(json.dumps({"axis": c["axis"], "topic": c["topic"], "texts": c["sequence"]}) + "\n"
                            for c in CHAINS))
    assert load_with(path).eval.order.chains == str(path)


@pytest.mark.parametrize("field, value", [(f, v) for f, vs in CHAIN_FIELDS.items() for v in vs])
def test_every_chain_field_of_another_shape_names_file_record_and_field(tmp_path, field, value):
    chains = copy.deepcopy(CHAINS)
    chains[1][field] = value
    refused(published(tmp_path, chains=chains), "chains[1] field", f"'{field}")


@pytest.mark.parametrize("field, value", [(f, v) for f, vs in PAIR_FIELDS.items() for v in vs])
def test_every_pair_field_of_another_shape_names_file_record_and_field(tmp_path, field, value):
    pairs = copy.deepcopy(PAIRS)
    pairs[2][field] = value
    refused(published(tmp_path, pairs=pairs), "pairs[2] field", f"'{field}")


@pytest.mark.parametrize("field, value", [(f, v) for f, vs in {"axis": TEXT, "topic": TEXT, "texts": TEXTS,
                                                                "split": SPLIT, "chain_id": ID}.items() for v in vs])
def test_every_jsonl_field_of_another_shape_names_file_line_and_field(tmp_path, field, value):
    lines = [{"axis": "size", "topic": "t0", "texts": ["small", "large"]},
             {"axis": "size", "topic": "t1", "texts": ["tiny", "big"], field: value}]
    path = tmp_path / "chains.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    refused(path, "line 2 (chain 2) field", f"'{field}")


@pytest.mark.parametrize("line", ['["size", "t0", ["a", "b"]]', '"a chain"', "3", "null", "{not json"])
def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path, line):
    path = tmp_path / "chains.jsonl"
    path.write_text('{"axis": "size", "topic": "t0", "texts": ["small", "large"]}\n\n' + line + "\n")
    refused(path, "line 3 (chain 2)")


def test_empty_files_and_duplicate_ids_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    refused(empty, "no chains")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"chain_id": 4, "axis": "a", "topic": "t", "texts": ["x", "y"]}\n'
                   '{"chain_id": 4, "axis": "a", "topic": "u", "texts": ["v", "w"]}\n')
    refused(dup, "line 2 (chain 2) field 'chain_id'", "line 1")
    chains = copy.deepcopy(CHAINS)
    chains[1]["chain_id"] = "c0"
    refused(published(tmp_path, chains=chains), "chains[1] field 'chain_id'", "not unique")
    pairs = copy.deepcopy(PAIRS)
    pairs[2]["pair_id"] = "p0"
    refused(published(tmp_path, pairs=pairs), "pairs[2] field 'pair_id'", "not unique")
    for part in ("chains", "pairs"):
        refused(published(tmp_path, **{part: []}), f"'{part}' must be a non-empty list")
    path = tmp_path / "axes.json"
    path.write_text(json.dumps({"metadata": {"axes": "size"}, "chains": CHAINS, "pairs": PAIRS}))
    refused(path, "metadata field 'axes'")
    path.write_text("[1, 2]")
    refused(path, "must be a JSON object")
    path.write_text("{")
    refused(path, "not JSON")
