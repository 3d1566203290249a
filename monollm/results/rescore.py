"""Re-scoring one row of the attack table from the table alone.

Every row keeps what it takes to rebuild its attacked input: the clean example (`input_ids`),
the number of scored continuation tokens (`scored_tokens`), and either the attacked input
itself (`attacked_ids`: flip attacks and their controls) or the prefix trigger (`trigger_ids`:
UAT, random triggers and their controls). `rescore` recomputes the row's NLL with a plain
transformers forward pass, independently of the attack code, so a reported number can be
checked by anyone holding the table and the model:

    row = run.data.attacks.iloc[0]
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    assert abs(rescore(row, model, tok) - row["attacked_nll"]) < 1e-4
"""
from __future__ import annotations

import torch


def attacked_input(row) -> list[int]:
    """The attacked input of a table row (a dict or a DataFrame row): its `attacked_ids` where the
    attack changed the context, else `trigger_ids` followed by the clean `input_ids`."""
    if len(row["attacked_ids"]):
        return [int(t) for t in row["attacked_ids"]]
    return [int(t) for t in row["trigger_ids"]] + [int(t) for t in row["input_ids"]]


@torch.no_grad()
def rescore(row, model, tokenizer, clean: bool = False) -> float:
    """Mean NLL per token of the row's last `scored_tokens` tokens under `model` (in eval mode):
    the attacked input by default (compare with `attacked_nll`), the clean example with
    `clean=True` (compare with `clean_nll`).

    The ids are first checked against their text: a reported attack is the text's tokens, so
    an input that changes under decode -> encode raises. One sequence, one fp32 forward pass.
    """
    ids = [int(t) for t in row["input_ids"]] if clean else attacked_input(row)
    k = int(row["scored_tokens"])
    if not ids or k < 1 or k >= len(ids):
        raise ValueError(f"row has {len(ids)} input ids and scored_tokens={k}: not enough to re-score")
    if tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] != ids:
        raise ValueError("the row's input changes under decode -> encode")
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()  # (T, V)
    # position t predicts token t + 1: the last k tokens are predicted by positions T-k-1 .. T-2
    logp = torch.log_softmax(logits[-k - 1:-1], dim=-1)
    target = torch.tensor(ids[-k:], device=device)
    return float(-logp.gather(1, target[:, None]).mean())
