"""`random`: random-token prefix triggers, the control every gradient attack is measured against."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from monollm.attacks.common import (AttackResult, allowed_tokens, clean_nlls, continuation_nll, prepend,
                                    sample_trigger)


@dataclass(frozen=True)
class RandomConfig:
    """Random triggers of the same length and vocabulary as the universal trigger."""
    trigger_len: int = 5
    """Tokens per trigger."""
    samples: int = 8
    """Independent random triggers; each is applied to every example and every model."""
    max_tries: int = 200
    """Draws per position before giving up on a token that survives re-tokenization."""

    @property
    def prefix_len(self) -> int:
        """Tokens the attack prepends to a window (its trigger)."""
        return self.trigger_len

    def check(self):
        if self.trigger_len < 1 or self.samples < 1 or self.max_tries < 1:
            raise ValueError("attack.random: trigger_len, samples and max_tries must be positive")


def run(models: dict, tokenizer, examples: dict, continuation_len: int, batch_size: int,
        params: RandomConfig, seed: int, log=print, checkpoint=None, precision: str = "fp32") -> list[AttackResult]:
    """Score `params.samples` random triggers against every model on the same examples.

    examples: split -> (N, C + K) int64 windows; the random attack uses only "test".
    models: name -> model in eval mode.
    Returns one AttackResult per (trigger, model), kind "attack" (the random attack is its
    own control: the draw is the attack).
    """
    rng = np.random.default_rng(seed)
    examples = examples["test"]
    any_model = next(iter(models.values()))
    device = any_model.device
    allowed = allowed_tokens(tokenizer, any_model.get_input_embeddings().weight.shape[0])
    ids = torch.as_tensor(examples, device=device)
    clean = clean_nlls(models, ids, continuation_len, batch_size)
    results = []
    for trial in range(params.samples):
        trigger = sample_trigger(rng, allowed, params.trigger_len, tokenizer, examples, params.max_tries)
        attacked_ids = prepend(torch.tensor(trigger, device=device), ids)
        for name, model in models.items():
            attacked = continuation_nll(model, attacked_ids, continuation_len, batch_size)
            results.append(AttackResult(
                attack="random", model=name, kind="attack", example_ids=np.arange(len(examples)),
                clean_nll=clean[name], attacked_nll=attacked.numpy(), trial=trial,
                trigger_ids=trigger, trigger_text=tokenizer.decode(trigger),
                forward_passes=0, candidate_evals=0, input_ids=examples, scored_tokens=continuation_len))
        log(f"[random] trigger {trial + 1}/{params.samples} {tokenizer.decode(trigger)!r}: " + ", ".join(
            f"{r.model} dNLL {np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in results[-len(models):]))
    return results
