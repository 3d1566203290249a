"""Tiny models, tokenizer and examples shared by the attack tests (CPU, fixed seeds)."""
from __future__ import annotations

import functools

import numpy as np
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from monollm.data import corpus, documents
from monollm.model import foundation
from monollm.attacks.examples import make_examples

CONTEXT, CONT = 12, 6


@functools.lru_cache(maxsize=1)
def tokenizer():
    """A byte-level BPE of 300 tokens trained on the built-in corpus (like the default profile's)."""
    return foundation.build_tokenizer(corpus.generate(200, seed=7), 300)


def model(seed: int = 0) -> GPTNeoXForCausalLM:
    """A random 2-layer GPT-NeoX (hidden 32) in eval mode; like Pythia's, its embedding has
    padding rows beyond the tokenizer (320 rows for 300 tokens)."""
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25,
                        tie_word_embeddings=False)
    return GPTNeoXForCausalLM(cfg).eval()


@functools.lru_cache(maxsize=4)
def examples(n: int = 8, seed: int = 0) -> np.ndarray:
    """(n, CONTEXT + CONT) int64 windows of held-out corpus documents that survive decode -> encode."""
    tok = tokenizer()
    docs = documents.tokenize(tok, corpus.generate(60, seed=100 + seed))
    return make_examples(docs, n, CONTEXT, CONT, seed, tok)


def unused_symbol(skip=()) -> int:
    """Id of a one-character punctuation token that no example uses: it stays a token of its own
    next to any text, so an attack can place it anywhere."""
    tok, used = tokenizer(), set(np.concatenate([examples(), examples(8, 1)]).ravel().tolist())
    for ch in "~|}{^`@#<>":
        ids = tok(ch, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in used and ids[0] not in skip:
            return ids[0]
    raise AssertionError("no unused one-character token")


@torch.no_grad()
def plant(m: GPTNeoXForCausalLM, token: int, sink: int) -> GPTNeoXForCausalLM:
    """Make `m` sensitive to one token: wherever `token` occurs, every later position attends to it
    (layer 0, head 0) and receives a direction that the LM head reads as a large logit for `sink`,
    which wrecks the continuation's NLL. Without `token` the planted head writes exactly zero.
    """
    d, hd = m.config.hidden_size, m.config.hidden_size // m.config.num_attention_heads
    u = torch.zeros(d)
    u[0], u[1] = 1.0, -1.0  # zero-mean directions pass LayerNorm's centring
    w = torch.zeros(d)
    w[2], w[3] = 1.0, -1.0
    u, w = u / u.norm(), w / w.norm()
    emb = m.gpt_neox.embed_in.weight
    emb -= torch.outer(emb @ u, u)  # no token has a u component ...
    emb[token] += u  # ... except the planted one
    attn = m.gpt_neox.layers[0].attention
    qkv_w, qkv_b = attn.query_key_value.weight, attn.query_key_value.bias
    qkv_w[:3 * hd] = 0
    qkv_b[:3 * hd] = 0
    j = hd - 1  # a head dimension outside the rotary part: position-free
    qkv_b[j] = 8.0  # query
    qkv_w[hd + j] = 8.0 * u  # key: large only for the planted token
    qkv_w[2 * hd + j] = 4.0 * u  # value
    attn.dense.weight[:, :hd] = 0
    attn.dense.weight[:, j] = 4.0 * w
    head = m.get_output_embeddings().weight
    head -= torch.outer(head @ w, w)
    head[sink] += 10.0 * w
    return m


class Disk:
    """A checkpoint that saves as real files (checkpoints.write) and gives back one of them the way
    a resumed step reads it (checkpoints.read: torch.load with weights_only=True)."""

    def __init__(self, root, resume_from=None):
        self.root, self.resume_from, self.folders = root, resume_from, []

    def save(self, state, step):
        import os

        from monollm import checkpoints

        self.folders.append(checkpoints.write(os.path.join(self.root, f"c{len(self.folders)}"), state))

    def restore(self):
        from monollm import checkpoints

        return checkpoints.read(self.resume_from) if self.resume_from else None
