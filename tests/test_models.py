"""Tests for monollm.model.foundation: the built tokenizer and model, save/load, and the local
(hub-style) loading path with tiny models saved by save_pretrained."""
import hashlib
import json
import os
import shutil
import struct
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from monollm import errors
from monollm.data import corpus
from monollm.model import foundation
from monollm.config import BuildConfig, ModelConfig

BUILD = BuildConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=300,
                    max_position=64)


@pytest.fixture(scope="module")
def docs():
    return corpus.generate(220)


@pytest.fixture(scope="module")
def tokenizer(docs):
    return foundation.build_tokenizer(docs[:200], BUILD.vocab_size)


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """A built model saved with models.save, and logits of a fixed batch before saving."""
    model = foundation.build_model(BUILD, tokenizer, seed=0).eval()
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    path = str(tmp_path_factory.mktemp("saved"))
    foundation.save(model, tokenizer, path)
    return path, ids, logits


# --- tokenizer -------------------------------------------------------------------------

def test_tokenizer_is_fast_transformers_tokenizer_with_eos(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and tokenizer.is_fast
    assert tokenizer.eos_token == foundation.EOS and tokenizer.eos_token_id is not None
    assert tokenizer.convert_tokens_to_ids(foundation.EOS) == tokenizer.eos_token_id
    assert tokenizer(foundation.EOS, add_special_tokens=False)["input_ids"] == [tokenizer.eos_token_id]
    assert 256 < len(tokenizer) <= BUILD.vocab_size  # bytes + EOS + merges


def test_tokenizer_round_trips_corpus_text(tokenizer, docs):
    for doc in docs:  # training documents and 20 it never saw
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        assert tokenizer.eos_token_id not in ids
        assert tokenizer.decode(ids) == doc
    odd = "Ünïcode, tabs\tand  double  spaces\n\nnew lines 123 {}"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd  # byte-level
    # merges were learnt: corpus text takes fewer tokens than bytes
    assert len(tokenizer(docs[0])["input_ids"]) < len(docs[0].encode()) / 1.5


def test_tokenizer_is_deterministic(docs, tokenizer):
    again = foundation.build_tokenizer(docs[:200], BUILD.vocab_size)
    assert again.get_vocab() == tokenizer.get_vocab()


# --- built model -----------------------------------------------------------------------

def test_build_model_has_padding_rows_and_config(tokenizer):
    model = foundation.build_model(BUILD, tokenizer, seed=0)
    rows = model.config.vocab_size
    assert rows % 64 == 0 and len(tokenizer) < rows < len(tokenizer) + 64
    assert model.get_input_embeddings().weight.shape == (rows, BUILD.hidden_size)
    assert model.get_output_embeddings().weight.shape[0] == rows
    c = model.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.max_position_embeddings) == ("gpt_neox", 32, 2, 4, 64, 64)
    assert c.eos_token_id == tokenizer.eos_token_id and c.hidden_act == "gelu"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert foundation.max_positions(model) == 64 == foundation.max_positions(model.config)


def test_build_model_seeded(tokenizer):
    a, b, c = (foundation.build_model(BUILD, tokenizer, seed=s) for s in (0, 0, 1))
    w = lambda m: m.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))


# --- save / load ------------------------------------------------------------------------

def test_save_load_round_trip_identical_logits(saved, tokenizer, docs):
    path, ids, logits = saved
    model, tok = foundation.load(path)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)
    assert tok.eos_token_id == tokenizer.eos_token_id and len(tok) == len(tokenizer)
    assert tok(docs[-1])["input_ids"] == tokenizer(docs[-1])["input_ids"]
    assert tok.decode(tok(docs[-1])["input_ids"]) == docs[-1]


def test_saved_model_loads_with_vanilla_transformers(saved):
    path, ids, logits = saved
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)


# --- stored models carry checksums ------------------------------------------------------

def flip_sign_bits(path: str, every: int = 97):
    """Flip the sign bit of every `every`-th float32 weight of `path`/model.safetensors in place:
    the file keeps its size and its header, so it still parses as a valid checkpoint."""
    weights = os.path.join(path, "model.safetensors")
    raw = bytearray(open(weights, "rb").read())
    start = 8 + struct.unpack("<Q", raw[:8])[0]  # u64 header length, then the JSON header
    for i in range(start + 3, len(raw), 4 * every):  # little-endian: byte 3 holds the sign
        raw[i] ^= 0x80
    size = os.path.getsize(weights)
    open(weights, "wb").write(bytes(raw))
    assert os.path.getsize(weights) == size


def test_save_writes_a_manifest_of_every_file(saved):
    path = saved[0]
    manifest = json.load(open(os.path.join(path, foundation.MANIFEST)))["files"]
    assert set(manifest) == set(os.listdir(path)) - {foundation.MANIFEST}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest)
    weights = os.path.join(path, "model.safetensors")
    assert manifest["model.safetensors"]["bytes"] == os.path.getsize(weights)
    assert manifest["model.safetensors"]["sha256"] == hashlib.sha256(open(weights, "rb").read()).hexdigest()


def test_flipped_sign_bits_are_refused_naming_the_path(saved, tmp_path):
    path, ids, logits = saved
    copy = str(tmp_path / "copy")
    shutil.copytree(path, copy)
    flip_sign_bits(copy)
    with pytest.raises(foundation.CorruptModel) as err:
        foundation.load(copy)
    weights = os.path.join(copy, "model.safetensors")
    assert weights in str(err.value) and "checksum mismatch" in str(err.value)
    assert "resume" in str(err.value) and "new run" in str(err.value)  # what to do next
    with pytest.raises(foundation.CorruptModel, match="model.name"):  # a local foundation is checked too
        foundation.load_foundation(ModelConfig(source="local", name=copy))
    # without the manifest it is a foreign checkpoint: loaded as it is, and silently wrong
    os.remove(os.path.join(copy, foundation.MANIFEST))
    model, _ = foundation.load(copy)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, logits)


def test_missing_file_is_refused(saved, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(saved[0], copy)
    os.remove(os.path.join(copy, "tokenizer.json"))
    with pytest.raises(foundation.CorruptModel, match=f"missing: {os.path.join(copy, 'tokenizer.json')}"):
        foundation.load(copy)


def test_a_damaged_model_in_a_flow_step_is_named_as_load_model_names_it(saved, tmp_path):
    """The flow's own model loading (pipeline.step_errors around a step's work) refuses a damaged
    fetched model with results.load_model's words: which model of which run, which task saved it,
    and the commands to fetch it again and to resume from the step that saved it; one line."""
    from metaflow.exception import MetaflowException

    from monollm import config, pipeline
    from monollm.results import client

    copy = str(tmp_path / "fetched")
    shutil.copytree(saved[0], copy)
    flip_sign_bits(copy)
    current = types.SimpleNamespace(flow_name="MonoFlow", run_id="42", step_name="evaluate")
    flow = types.SimpleNamespace(monotonic_model={"pathspec": "MonoFlow/41/train_monotonic/7", "key": "k"})
    cfg = config.load({"name": "p"})
    with pytest.raises(MetaflowException) as err:
        with pipeline.step_errors(cfg, current, flow, {"monotonic": copy, "baseline": saved[0]}):
            pipeline.evaluate(cfg, {"baseline": saved[0], "monotonic": copy}, saved[1].numpy())
    msg = err.value.message
    what, next_step = client.stored_model_words("monotonic", flow.monotonic_model, "MonoFlow/42",
                                                "Resume this step to fetch it again (python flows/mono_flow.py "
                                                "resume evaluate --origin-run-id 42)")
    assert msg.startswith(f"stored model {copy} ({what}) is damaged: ") and msg.endswith(next_step)
    for needle in ("monotonic model of run MonoFlow/42, artifact monotonic_model",
                   "saved by task MonoFlow/41/train_monotonic/7", os.path.join(copy, "model.safetensors"),
                   "checksum mismatch", "resume evaluate --origin-run-id 42",
                   "resume the run from train_monotonic (python flows/mono_flow.py resume train_monotonic "
                   "--origin-run-id 42)"):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert "\n" not in msg
    with pytest.raises(ZeroDivisionError), pipeline.step_errors(cfg, current, flow, {"monotonic": copy}):
        1 / 0  # a bug keeps its traceback


def test_a_full_disk_while_saving_or_storing_a_model_names_the_path_and_sizes(saved, tmp_path, monkeypatch):
    """safetensors reports a full disk as its own error quoting the OS's; the datastore's copy as
    OSError [Errno 28]: both become DiskFull, naming where, what was needed and what was free."""
    import errno

    from monollm import pipeline, saving

    model, tokenizer = foundation.load(saved[0])
    monkeypatch.setattr(saving.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**10, 10**10 - 10**8,
                                                                                        10**8))

    def full(*args, **kwargs):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(model, "save_pretrained", full)
    with pytest.raises(errors.DiskFull) as err:
        foundation.save(model, tokenizer, str(tmp_path / "out"))
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert (f"no space left on the disk of {tmp_path / 'out'}: the model's files needed {size / 1e6:.1f} MB, "
            f"0.10 GB was free there when it began") in str(err.value)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    current = types.SimpleNamespace(model=types.SimpleNamespace(save=no_space))
    monkeypatch.setattr(saving, "datastore_place", lambda: "/data/.metaflow")
    with pytest.raises(errors.DiskFull, match=r"^no space left on the disk of /data/.metaflow: storing the baseline "
                                              r"model needed \d+\.\d MB, 0.10 GB was free there"):
        pipeline.store_model(current, saved[0], "baseline")
    assert saving.out_of_space(RuntimeError("unrelated")) is False


@pytest.mark.parametrize("source", ["local", "hub"])
def test_load_foundation_from_directory(saved, source):
    # "hub" with a directory exercises the hub code path (revision kwarg) offline
    path, ids, logits = saved
    model, tok = foundation.load_foundation(ModelConfig(source=source, name=path))
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, logits)
    assert tok.eos_token_id is not None


def test_sources_record_the_commit_a_hub_revision_resolved_to(saved, tmp_path, monkeypatch):
    """Offline, on a hub cache laid out as huggingface_hub writes it (refs/<branch> -> commit,
    snapshots/<commit>/): the run records the commit it loaded, not only the branch name."""
    import dataclasses

    import huggingface_hub.constants

    from monollm import config, pipeline

    commit = hashlib.sha1(b"a made-up commit of a stand-in repository").hexdigest()
    repo = tmp_path / "models--acme--tiny"
    shutil.copytree(saved[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "step143000").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = config.load({"model": {"source": "hub", "name": "acme/tiny", "revision": "step143000"},
                       "data": {"source": "hub", "path": "acme/corpus", "revision": "main"}})
    model, _ = foundation.load_foundation(cfg.model)
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=saved[1]).logits, saved[2])  # the cached snapshot was read
    assert pipeline.sources(cfg) == {
        "model": {"source": "hub", "name": "acme/tiny", "revision": "step143000", "commit": commit},
        "data": {"source": "hub", "path": "acme/corpus", "revision": "main", "commit": None}}  # a branch: unknown
    pinned = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, revision=commit))
    assert pipeline.sources(pinned)["data"]["commit"] == commit
    assert foundation.hub_commit("acme/tiny", "main") is None  # nothing recorded for that branch
    local = config.load({"model": {"source": "local", "name": saved[0]}})
    assert pipeline.sources(local)["model"] == {"source": "local", "name": saved[0], "revision": "", "commit": None}


def test_load_foundation_upcasts_to_fp32(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, vocab_size=320, max_position_embeddings=64))
    model.to(torch.bfloat16).save_pretrained(tmp_path)  # like a hub checkpoint stored in half precision
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = foundation.load_foundation(ModelConfig(source="local", name=str(tmp_path)))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    w = model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    assert torch.equal(loaded.gpt_neox.layers[0].mlp.dense_h_to_4h.weight, w.float())


def test_load_foundation_requires_eos(docs, tmp_path):
    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers, trainers

    raw = Tokenizer(tmodels.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(docs[:20], trainers.BpeTrainer(vocab_size=280, show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(tmp_path)  # no EOS
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=320)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="EOS"):
        foundation.load_foundation(ModelConfig(source="local", name=str(tmp_path)))


def test_pick_device():
    assert foundation.pick_device("cpu") == "cpu"
    assert foundation.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(errors.ConfigError, match="cuda"):
            foundation.pick_device("cuda")


def test_a_hub_dataset_branch_is_pinned_to_its_commit_before_streaming(monkeypatch):
    """setup asks the hub once what commit the dataset's branch points to, streams that commit and
    records it beside the branch; offline (the hub cannot be asked) it streams the branch and
    records no commit, saying so; a commit or a local folder is used as it is."""
    import huggingface_hub

    from monollm import config, pipeline

    commit = hashlib.sha1(b"a made-up dataset commit").hexdigest()
    asked = []

    def dataset_info(self, repo_id, revision=None, **kw):
        asked.append((repo_id, revision))
        return types.SimpleNamespace(sha=commit)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    cfg = config.load({"data": {"source": "hub", "path": "acme/corpus", "revision": "main"}})
    lines = []
    monkeypatch.setattr(pipeline, "log", lines.append)
    pinned, got = pipeline.pin_data(cfg)
    assert (got, pinned.data.revision, asked) == (commit, commit, [("acme/corpus", "main")])
    assert pinned.data.path == cfg.data.path and "is commit" in lines[-1]
    assert pipeline.sources(cfg, got)["data"] == {"source": "hub", "path": "acme/corpus", "revision": "main",
                                                   "commit": commit}
    as_commit = config.load({"data": {"source": "hub", "path": "acme/corpus", "revision": commit}})
    assert pipeline.pin_data(as_commit) == (as_commit, commit) and len(asked) == 1  # not asked again

    def offline(self, repo_id, revision=None, **kw):
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    assert pipeline.pin_data(cfg) == (cfg, None) and "commit not recorded" in lines[-1]
    builtin = config.load({})
    assert pipeline.pin_data(builtin) == (builtin, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_stops_the_step_with_one_line():
    from metaflow.exception import MetaflowException

    from monollm import errors

    with pytest.raises(MetaflowException) as err, errors.user_errors("profile 'pythia-1.4b'"):
        foundation.pick_device("cuda")
    message = str(err.value)
    assert "'device' is \"cuda\" but no CUDA device is visible" in message and "\n" not in message
    assert foundation.pick_device("auto") == "cpu"
