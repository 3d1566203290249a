"""Tests for monollm.evaluation.perplexity: perplexity counts every predicted token exactly once; a NaN or
infinite NLL raises, naming the model."""
import copy
import math

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from monollm.evaluation.perplexity import NonFiniteNLL, block_nll, perplexity

VOCAB = 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, vocab_size=VOCAB,
                                            max_position_embeddings=64)).eval()


def blocks(n, t, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, t)).astype(np.int32)


def manual_block_nll(model, block) -> float:
    """Sum of -log p(token_i | tokens_<i) for i = 1..T-1, one block, one position at a time."""
    ids = torch.as_tensor(block, dtype=torch.long)[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return float(-sum(logp[i - 1, ids[0, i]] for i in range(1, ids.shape[1])))


def test_every_predicted_token_counted_once(model):
    n, t = 7, 12
    data = blocks(n, t)
    nll, tokens = block_nll(model, data, batch_size=3, device="cpu")  # uneven last batch
    assert nll.shape == tokens.shape == (n,) and nll.dtype == np.float64
    assert (tokens == t - 1).all() and tokens.sum() == n * (t - 1)
    expected = [manual_block_nll(model, b) for b in data]
    np.testing.assert_allclose(nll, expected, rtol=1e-5)


def test_batch_size_does_not_change_the_result(model):
    data = blocks(5, 10, seed=1)
    one = block_nll(model, data, 1, "cpu")
    many = block_nll(model, data, 64, "cpu")
    np.testing.assert_allclose(one[0], many[0], rtol=1e-5)
    np.testing.assert_array_equal(one[1], many[1])


def test_perplexity_is_exp_of_token_weighted_mean():
    nll, tokens = np.array([2.0, 6.0]), np.array([1, 3])
    assert perplexity(nll, tokens) == pytest.approx(math.exp(8 / 4))  # not exp(mean(2/1, 6/3)) = e^2
    assert perplexity(np.array([3.0, 9.0]), np.array([3, 3])) == pytest.approx(math.exp(2.0))


def test_perplexity_matches_hf_loss_for_one_block(model):
    data = blocks(1, 20, seed=2)
    nll, tokens = block_nll(model, data, 8, "cpu")
    ids = torch.as_tensor(data, dtype=torch.long)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss  # HF shifts labels: mean over T-1 tokens
    assert perplexity(nll, tokens) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_blocks_split_across_calls_give_the_same_perplexity(model):
    data = blocks(6, 9, seed=3)
    whole = perplexity(*block_nll(model, data, 4, "cpu"))
    a, b = block_nll(model, data[:2], 4, "cpu"), block_nll(model, data[2:], 4, "cpu")
    assert perplexity(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])) == pytest.approx(whole, rel=1e-9)


def test_training_mode_restored_and_empty_input(model):
    model.train()
    block_nll(model, blocks(2, 5), 2, "cpu")
    assert model.training
    model.eval()
    nll, tokens = block_nll(model, np.zeros((0, 5), dtype=np.int32), 2, "cpu")
    assert len(nll) == len(tokens) == 0 and not model.training


def test_untrained_perplexity_near_vocab_size(model):
    # a random model's prediction is near uniform: perplexity within a factor of the vocabulary
    ppl = perplexity(*block_nll(model, blocks(8, 32, seed=4), 8, "cpu"))
    assert VOCAB / 2 < ppl < VOCAB * 2


def _broken(model, where: str):
    """A copy of `model` with one NaN weight: in an MLP matrix (every output NaN) or in the
    embedding row of token 5 (only blocks holding token 5)."""
    broken = copy.deepcopy(model)
    with torch.no_grad():
        if where == "mlp":
            broken.gpt_neox.layers[0].mlp.dense_4h_to_h.weight[0, 0] = float("nan")
        else:
            broken.gpt_neox.embed_in.weight[5, 0] = float("nan")
    return broken


def test_nan_weights_raise_naming_the_model(model):
    with pytest.raises(NonFiniteNLL, match="perplexity of 'monotonic'"):
        block_nll(_broken(model, "mlp"), blocks(3, 8), 2, "cpu", name="monotonic")


def test_one_non_finite_block_is_enough_and_is_located(model):
    data = blocks(6, 8, seed=5)
    data[data == 5] = 6
    data[4, 3] = 5  # only block 4 sees the NaN embedding row
    block_nll(_broken(model, "embedding"), data[:4], 2, "cpu")  # blocks 0-3: finite
    with pytest.raises(NonFiniteNLL, match=r"'baseline' on blocks 4\.\.5: 1 of 2 NLLs .*index 0"):
        block_nll(_broken(model, "embedding"), data, 2, "cpu", name="baseline")


def test_pipeline_evaluate_names_the_broken_model(model, tmp_path):
    from attack_models import tokenizer

    from monollm import config, pipeline
    from monollm.model import foundation

    good, bad = str(tmp_path / "good"), str(tmp_path / "bad")
    foundation.save(model, tokenizer(), good)
    foundation.save(_broken(model, "mlp"), tokenizer(), bad)
    cfg = config.load({"device": "cpu"})
    with pytest.raises(NonFiniteNLL, match="'monotonic'"):
        pipeline.evaluate(cfg, {"baseline": good, "monotonic": bad}, blocks(4, 8))


def test_pipeline_evaluate_records_the_device_and_precision_it_ran_on(model, tmp_path):
    """What the card's Sources show for `evaluate`: the device the perplexities were computed on and
    the precision block_nll used there (bf16 autocast only on CUDA), whatever `device` asked for."""
    from attack_models import tokenizer

    from monollm import config, pipeline
    from monollm.model import foundation

    path = str(tmp_path / "model")
    foundation.save(model, tokenizer(), path)
    done = pipeline.evaluate(config.load({"device": "cpu"}), {"baseline": path}, blocks(4, 8))
    assert set(done.per_block) == {"baseline"} and done.per_block["baseline"][0].shape == (4,)
    assert done.ran_on == {"device": "cpu", "device_name": "", "processes": 1, "precision": "fp32"}
    assert foundation.compute_precision("cpu") == "fp32" and foundation.compute_precision("cuda") == "bf16"
    assert foundation.compute_precision("cuda", "fp32") == "fp32"  # an explicit setting is kept
