"""Scoring machinery shared by every attack.

An example is a window of a test document: `context_len` context tokens
followed by `continuation_len` continuation tokens. Attacks may prepend a
trigger or change context tokens; only continuation tokens are ever scored,
so an attack's own inserted tokens never count as damage.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from monollm.evaluation.perplexity import require_finite
from monollm.model import foundation


@dataclass
class AttackResult:
    """One attack (or control, or transfer) applied to one model on the same examples.

    `clean_nll` and `attacked_nll` are mean NLL per continuation token, shape (N,). With
    `input_ids`, `scored_tokens` and either `attacked_ids` or `trigger_ids`, every row of the
    table can be re-scored from the table alone (monollm.results.rescore).
    """
    attack: str
    model: str
    kind: str
    """"attack", "transfer", or a control: "control" (the primary control, the one every
    "above control" number uses) or "control_random_positions" (HotFlip's second control); for the
    trigger searches also "restart" (one restart's final trigger, scored on every model) and
    "budget" (the best trigger found within a fraction of the forward passes, scored on every
    model: monollm.attacks.curves)."""
    example_ids: np.ndarray
    clean_nll: np.ndarray
    attacked_nll: np.ndarray
    trial: int = 0
    """Index of the trigger among repeated draws (random controls), of the restart ("restart") or of
    the fraction in `curve_fractions` ("budget")."""
    source_model: str = ""
    """Model the perturbation was found on (differs from `model` for transfer). On a control row:
    the model whose attack the control is matched to (HotFlip: whose flip positions it uses)."""
    trigger_ids: list[int] = field(default_factory=list)
    trigger_text: str = ""
    forward_passes: int = 0
    """Sequences passed through the model to find the perturbation."""
    candidate_evals: int = 0
    """Candidate perturbations scored exactly."""
    n_changed: np.ndarray | None = None
    """Per example, tokens changed in the context (flip attacks), shape (N,)."""
    input_ids: np.ndarray | None = None
    """(N, T) the clean examples (context + continuation)."""
    attacked_ids: np.ndarray | None = None
    """(N, T) the attacked inputs as scored, for attacks that change the context (flips); None
    where the attacked input is `trigger_ids` + `input_ids`."""
    scored_tokens: int = 0
    """Continuation tokens scored: the last `scored_tokens` of every input."""
    ranking: str = ""
    """How the search chose which candidates to score exactly: "gradient" (first-order estimate),
    "random" (random candidates, same count) or "exact" (every allowed token at the positions
    searched); "" on rows no search produced (controls, random triggers)."""
    guidance_spearman: float = float("nan")
    """Spearman correlation between the first-order estimate and the exact loss change over a
    random sample of single-token swaps on the source model (monollm.attacks.guidance); NaN where
    not measured."""
    guidance_n: int = 0
    """Swaps in that sample (summed over the examples it was measured on)."""
    budget: int = 0
    """Forward passes the search that found the trigger was given per model (attack.budget; auto: the
    passes every model's search was brought up to; 0: no budget, or a row no budgeted search produced)."""
    budget_converged_at: int = 0
    """Auto budget, "attack" rows: the budget whose doubling no longer raised the damage significantly
    (monollm.attacks.budgets); 0 where it never did or was not tested."""
    budget_capped: bool = False
    """With the auto budget, on "attack" rows: whether the search reached attack.max_budget still rising."""
    opt_dnll: float = float("nan")
    """Mean over all attack_opt examples of attacked minus clean NLL of the row's trigger on the row's
    model (trigger rows of kind "attack", "transfer" and "restart"; NaN elsewhere): a choice of
    trigger on attack_opt that needs no test data."""
    budget_fraction: float = float("nan")
    """Fraction of the search's forward passes the trigger was found within ("budget" rows; NaN elsewhere)."""
    clean_halves: np.ndarray | None = None
    """(N, 2) clean NLL per example over the even (0, 2, 4, ...) and the odd continuation positions: the
    two halves of the scored tokens on which the worst case is cross-fitted (monollm.results.worst_case)."""
    attacked_halves: np.ndarray | None = None
    """(N, 2) attacked NLL over the even and the odd continuation positions (as `clean_halves`)."""

    def __post_init__(self):
        # every attack's reported numbers pass through here: a NaN model fails loudly, by name
        what = f"{self.attack} ({self.kind}) on model {self.model!r}"
        require_finite(self.clean_nll, f"clean NLL of {what}")
        require_finite(self.attacked_nll, f"attacked NLL of {what}")

    def rows(self) -> list[dict]:
        """Tidy rows, one per example."""
        n = len(self.example_ids)
        changed = self.n_changed if self.n_changed is not None else np.zeros(n, int)
        clean = self.input_ids if self.input_ids is not None else [None] * n
        attacked = self.attacked_ids if self.attacked_ids is not None else [None] * n
        return [
            {
                "attack": self.attack, "kind": self.kind, "model": self.model,
                "source_model": self.source_model or self.model, "trial": self.trial,
                "example": int(e), "clean_nll": float(c), "attacked_nll": float(a),
                "dnll": float(a - c), "n_changed": int(k),
                "trigger_text": self.trigger_text, "trigger_ids": list(self.trigger_ids),
                "forward_passes": self.forward_passes, "candidate_evals": self.candidate_evals,
                "scored_tokens": self.scored_tokens, "ranking": self.ranking,
                "guidance_spearman": float(self.guidance_spearman), "guidance_n": int(self.guidance_n),
                "budget": int(self.budget), "opt_dnll": float(self.opt_dnll),
                "budget_fraction": float(self.budget_fraction), **_ids(x, y),
                "budget_converged_at": int(self.budget_converged_at), "budget_capped": bool(self.budget_capped),
                "dnll_even": float(h[0]), "dnll_odd": float(h[1]),
            }
            for e, c, a, k, x, y, h in zip(self.example_ids, self.clean_nll, self.attacked_nll, changed, clean, attacked,
                                           self._dnll_halves())
        ]

    def _dnll_halves(self) -> np.ndarray:
        """(N, 2) attacked minus clean NLL on the even and the odd continuation positions (NaN where unknown)."""
        if self.clean_halves is None or self.attacked_halves is None:
            return np.full((len(self.example_ids), 2), np.nan)
        return np.asarray(self.attacked_halves, np.float64) - np.asarray(self.clean_halves, np.float64)


def _ids(clean, attacked) -> dict:
    """A row's input ids (clean example), attacked ids and changed positions, as lists ([] where unknown)."""
    clean = [] if clean is None else [int(t) for t in clean]
    attacked = [] if attacked is None else [int(t) for t in attacked]
    same_len = len(attacked) == len(clean)
    changed = [i for i, (a, b) in enumerate(zip(attacked, clean)) if a != b] if same_len else []
    return {"input_ids": clean, "attacked_ids": attacked, "changed_positions": changed}


@dataclass
class AttackContext:
    """What every attack starts from, built once per attack step (`context`): an attack is
    `run(ctx, params) -> list[AttackResult]`."""
    models: dict
    """name -> model in eval mode (all on one device)."""
    tokenizer: object
    examples: dict
    """split ("test", "attack_opt") -> (N, context_len + continuation_len) int64 windows."""
    test: torch.Tensor
    """(N, T) long on the device: the examples every reported row is scored on."""
    allowed: torch.Tensor
    """(V,) bool: tokens an attack may insert (`allowed_tokens`)."""
    clean: dict
    """model -> clean NLL (N,) float32 numpy on `test` (`clean_nlls`)."""
    n_cont: int
    """Continuation tokens scored per example (the last `n_cont` of every row)."""
    batch_size: int
    seed: int
    precision: str = "fp32"
    """Of the search only ("auto", "bf16", "fp32"; `search_precision`); reported NLLs are fp32."""
    log: object = print
    checkpoint: object = None
    """A monollm.checkpoints.StepCheckpointer (or None): long attacks save progress to it."""
    budget: int | str = 0
    """Forward passes every universal-trigger search spends against each model (attack.budget; 0:
    none, each search runs its own restarts and steps; "auto": found by doubling, monollm.attacks.budgets)."""
    max_budget: int = 0
    """The auto budget's cap (attack.max_budget)."""
    auto_start: int = 0
    """The auto budget's first stage, in forward passes (attack.auto_start)."""
    clean_halves: dict = field(default_factory=dict)
    """model -> (N, 2) clean NLL on `test` over the even and the odd continuation positions (`halves`)."""
    edit_budget: int = 0
    """Forward passes every per-input search spends per example against each model (attack.edit_budget;
    0: none)."""
    curve_points: int = 8
    """Points of every search's budget curve (attack.curve_points; `curve_fractions`)."""
    opt_clean: dict = field(default_factory=dict)
    """model -> clean NLL (N,) on all of "attack_opt": filled once, by `clean_opt`."""

    @property
    def device(self) -> torch.device:
        return self.test.device

    @property
    def context_len(self) -> int:
        return self.test.shape[1] - self.n_cont

    def split(self, name: str) -> torch.Tensor:
        """The windows of split `name` as (N, T) long on the device."""
        return torch.as_tensor(self.examples[name], device=self.device)

    def clean_opt(self) -> dict:
        """model -> clean NLL (N,) float32 numpy on all of "attack_opt", computed on first use (only
        the trigger attacks score attack_opt) and kept."""
        if not self.opt_clean:
            self.opt_clean.update(clean_nlls(self.models, self.split("attack_opt"), self.n_cont, self.batch_size))
        return self.opt_clean

    def searching(self):
        """The context a search runs in (bf16 autocast where the precision asks for it)."""
        return search_precision(self.device, self.precision)

    def score(self, attack: str, attacked: torch.Tensor, **kw) -> list[AttackResult]:
        """Attacked test inputs (N, T') scored on every model (`score_attacked`)."""
        return score_attacked(attack, self.models, self.tokenizer, attacked, self.test, self.clean, self.n_cont,
                              self.batch_size, clean_halves=self.clean_halves, **kw)


def context(models: dict, tokenizer, examples: dict, continuation_len: int, batch_size: int, seed: int,
            log=print, checkpoint=None, precision: str = "fp32", tokens: str = "round_trip",
            budget: int | str = 0, edit_budget: int = 0, curve_points: int = 8, max_budget: int = 0,
            auto_start: int = 0) -> AttackContext:
    """The attack context: allowed tokens (`tokens`: allowed_tokens), test examples on the device
    and every model's clean NLL and its halves (checked finite before any search time is spent);
    `budget`, `edit_budget`, `curve_points`, `max_budget`, `auto_start`: AttackContext's."""
    any_model = next(iter(models.values()))
    test = torch.as_tensor(examples["test"], device=any_model.device)
    tokens_nll = {name: continuation_token_nll(m, test, continuation_len, batch_size) for name, m in models.items()}
    clean = {name: require_finite(t.mean(dim=1).numpy(), f"clean NLL of model {name!r}") for name, t in tokens_nll.items()}
    return AttackContext(models=models, tokenizer=tokenizer, examples=examples, test=test,
                         allowed=allowed_tokens(tokenizer, any_model.get_input_embeddings().weight.shape[0], tokens),
                         clean=clean, clean_halves={name: halves(t) for name, t in tokens_nll.items()},
                         n_cont=continuation_len, batch_size=batch_size, seed=seed, precision=precision, log=log,
                         checkpoint=checkpoint, budget=budget, edit_budget=edit_budget, curve_points=curve_points,
                         max_budget=max_budget, auto_start=auto_start)


def curve_fractions(points: int) -> tuple[float, ...]:
    """The budget curve's fractions of a search's passes: 2**-(points - 1), ..., 1/4, 1/2, 1 (log-spaced,
    so that every step, the last one included, is a doubling)."""
    return tuple(2.0 ** -k for k in range(points - 1, -1, -1))


def token_nll(model, target: torch.Tensor, **inputs) -> torch.Tensor:
    """NLL of every token of `target` (B, K), the last K tokens of each input row; (B, K) float32.

    `inputs` are `input_ids` (B, T) or `inputs_embeds` (B, T, d). The single definition of
    the attack objective: scoring and gradients both go through here. Only the logits
    that predict the continuation are computed (`logits_to_keep`).
    """
    n_cont = target.shape[1]
    logits = model(**inputs, logits_to_keep=n_cont + 1).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")


def row_nll(model, target: torch.Tensor, **inputs) -> torch.Tensor:
    """Mean NLL per token of `target` (B, K) (`token_nll`); (B,) float32."""
    return token_nll(model, target, **inputs).mean(dim=1)


@torch.no_grad()
def continuation_token_nll(model, ids: torch.Tensor, n_cont: int, batch_size: int) -> torch.Tensor:
    """NLL of each of the last `n_cont` tokens of each row: ids (B, T) long on the model's device ->
    (B, n_cont) float32 on CPU."""
    out = [token_nll(model, chunk[:, -n_cont:], input_ids=chunk).cpu() for chunk in ids.split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, n_cont)


def continuation_nll(model, ids: torch.Tensor, n_cont: int, batch_size: int) -> torch.Tensor:
    """Mean NLL per token of the last `n_cont` tokens of each row: ids (B, T) long -> (B,) float32 on CPU."""
    return continuation_token_nll(model, ids, n_cont, batch_size).mean(dim=1)


def halves(tokens: torch.Tensor) -> np.ndarray:
    """(B, K) per-token NLL -> (B, 2) float64 numpy: the mean over the even positions (0, 2, ...) and
    over the odd ones (1, 3, ...). Disjoint halves of the scored tokens: a member chosen on one
    half and read on the other is held out from its own selection."""
    t = tokens.double()
    return torch.stack([t[:, 0::2].mean(dim=1), t[:, 1::2].mean(dim=1)], dim=1).numpy()


def clean_nlls(models: dict, ids: torch.Tensor, n_cont: int, batch_size: int) -> dict:
    """name -> clean NLL (N,) float32 numpy of every model on the examples ids (N, T); raises
    NonFiniteNLL naming the model before any search time is spent on a broken one."""
    return {name: require_finite(continuation_nll(m, ids, n_cont, batch_size).numpy(), f"clean NLL of model {name!r}")
            for name, m in models.items()}


def resolved_precision(device, precision: str) -> str:
    """"bf16" or "fp32": what `precision` ("auto", "bf16", "fp32") means on `device` (auto: bf16 on CUDA)."""
    return foundation.compute_precision(device, precision)


def search_precision(device, precision: str):
    """Context in which an attack searches: bf16 autocast when `precision` resolves to bf16, else none.

    Only the search (one-hot gradients, candidate re-scoring, choosing among finished
    searches) runs inside it; the reported clean and attacked NLLs are scored outside, in fp32.
    """
    if resolved_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def prepend(trigger: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
    """trigger: (L,) long; examples: (N, T) long -> (N, L + T): the trigger before every context."""
    return torch.cat([trigger.expand(examples.shape[0], -1), examples], dim=1)


def allowed_tokens(tokenizer, vocab_rows: int, tokens: str = "round_trip") -> torch.Tensor:
    """Tokens an attack may insert: (vocab_rows,) bool.

    Excludes special tokens, ids >= len(tokenizer) (embedding padding rows, as in
    Pythia) and tokens whose decode -> encode does not give back the same single id.
    `tokens` (`attack.tokens`): "printable" also excludes tokens whose text has a character
    that is not printable (control bytes such as "\x00"), newline and tab excepted.
    """
    mask = torch.zeros(vocab_rows, dtype=torch.bool)
    n = min(len(tokenizer), vocab_rows)
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, (text, enc) in enumerate(zip(texts, encoded)):
        mask[i] = i not in special and enc == [i] and (tokens != "printable" or printable(text))
    return mask


def printable(text: str) -> bool:
    """Whether every character of `text` is printable, or a newline or tab."""
    return all(c.isprintable() or c in "\n\t" for c in text)


def trigger_survives(tokenizer, trigger: list[int], examples: np.ndarray) -> bool:
    """True when decode -> encode of trigger + example gives back the same ids for every example.

    examples: (N, T) int. A trigger whose tokens merge with the text on re-tokenization
    would be a different attack from the one reported, so it is rejected.
    """
    return bool(rows_survive(tokenizer, [list(trigger) + [int(t) for t in ex] for ex in examples]).all())


def rows_survive(tokenizer, rows) -> np.ndarray:
    """(N,) bool: whether decode -> encode of each row of `rows` (N rows of ids) gives it back."""
    rows = [[int(t) for t in row] for row in rows]
    if not rows:
        return np.zeros(0, dtype=bool)
    encoded = tokenizer(tokenizer.batch_decode(rows), add_special_tokens=False)["input_ids"]
    return np.array([enc == row for enc, row in zip(encoded, rows)], dtype=bool)


def retokenized(tokenizer, rows: torch.Tensor) -> torch.Tensor:
    """The attacked inputs as the model would see them from their text: (N, T) long, same device.

    Every row is decoded and encoded again; a row that changes would be an attack other than
    the one reported (and could move the scored tokens), so it raises instead.
    """
    texts = tokenizer.batch_decode(rows.tolist())
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bad = [i for i, (enc, row) in enumerate(zip(encoded, rows.tolist())) if enc != row]
    if bad:
        raise ValueError(f"{len(bad)} attacked inputs change under decode -> encode (first: row {bad[0]}, "
                         f"{texts[bad[0]]!r})")
    return torch.tensor(encoded, dtype=torch.long, device=rows.device)


def score_attacked(attack: str, models: dict, tokenizer, attacked: torch.Tensor, test: torch.Tensor,
                   clean: dict, n_cont: int, batch_size: int, source: str = "", trial: int = 0, kind: str = "",
                   clean_halves: dict | None = None, **fields) -> list[AttackResult]:
    """Attacked inputs (N, T'), re-tokenized from their text, scored on every model.

    test: the clean examples (N, T); clean: model -> clean NLL (N,). With a `source` model the
    rows are "attack" (source itself) or "transfer"; without, "control". A `kind` given is every
    row's kind, with `source` as the model the control is matched to. `fields` go to every
    AttackResult (trigger ids and text, attacked ids, n_changed, compute); the clean ids and
    the number of scored tokens are added, so that each row can be re-scored from the table.
    `clean_halves` (model -> (N, 2), AttackContext.clean_halves) adds the halves of the scored tokens.
    """
    attacked = retokenized(tokenizer, attacked)
    assert torch.equal(attacked[:, -n_cont:], test[:, -n_cont:]), "scored tokens moved"
    out, clean_ids = [], test.cpu().numpy()
    for name, model in models.items():
        row_kind = kind or ("control" if not source else "attack" if name == source else "transfer")
        tokens = continuation_token_nll(model, attacked, n_cont, batch_size)
        out.append(AttackResult(
            attack=attack, model=name, kind=row_kind, example_ids=np.arange(len(test)), clean_nll=clean[name],
            attacked_nll=tokens.mean(dim=1).numpy(), trial=trial, source_model=source or name, input_ids=clean_ids,
            scored_tokens=n_cont, clean_halves=(clean_halves or {}).get(name), attacked_halves=halves(tokens),
            **fields))
    return out


def sample_trigger(rng: np.random.Generator, allowed: torch.Tensor, length: int, tokenizer,
                   examples: np.ndarray, max_tries: int) -> list[int]:
    """A random trigger of allowed tokens that survives re-tokenization on its own and before every example.

    Drawn position by position (uniform over allowed tokens, redrawn where a token would
    merge with its neighbours), so long triggers do not need exponentially many draws. On its
    own too, because a row reports the trigger's ids and its text, and they must agree.
    """
    pool = allowed.nonzero().flatten().numpy()
    trigger: list[int] = []
    for _ in range(length):
        for _ in range(max_tries):
            token = int(rng.choice(pool))
            if rows_survive(tokenizer, [trigger + [token]])[0] and trigger_survives(tokenizer, trigger + [token],
                                                                                     examples):
                trigger.append(token)
                break
        else:
            raise RuntimeError(f"no allowed token survived decode -> encode after {trigger} in "
                               f"{max_tries} draws; the tokenizer merges across the trigger boundary")
    return trigger
