"""Chains of texts that strengthen along one semantic axis, for the order-preservation measurement
(monollm/evaluation/order.py).

A chain is a dict {"axis", "topic", "texts"}: `texts` are ordered from weakest to strongest along
`axis` ("The medication has side effects." ⪯ "The medication has severe side effects." ⪯ ...),
and every text of a chain is about the same `topic`, so that two neighbours differ only in the
axis' wording.

Two sets ship with the package, under monollm/resources/order/, one chain per line (JSON lines):

* `english.jsonl`: English for hub models (Pythia): 16 axes x 20 topics, 3 or 4 texts a chain.
  Each axis is a sentence frame whose wording strengthens from level to level; each topic fills
  the frame's slots (a subject, a problem, the people concerned, a task, a drastic response).
* `builtin.jsonl`: the built-in corpus' sentence patterns and words (monollm/data/corpus.py) for the
  tiny built model, whose tokenizer is trained on that corpus: 13 axes (counts, quantities,
  durations, sizes, ...) x 16 towns.

Both are generated here, deterministically (no randomness at all), and the shipped files must
equal the generated ones (tests/test_order.py checks it); `load_chains` generates a shipped set
instead of reading its file. Regenerate the files with

    python -m monollm.evaluation.order_chains

`load_chains` also reads a pairs file of the published format (`read_published`): one JSON
object (a `.json` file) with `metadata`, `chains` and explicit `pairs`, each with its fit / eval
split. Such chains carry their `pairs` and `split`, which the measurement uses as they are.
"""
from __future__ import annotations

import json
import os
import sys

from monollm.data import corpus
from monollm.evaluation import chain_fields as field
from monollm.evaluation.chain_fields import SPLITS

__all__ = ["english_chains", "builtin_chains", "load_chains", "read_published", "write", "CHAIN_SETS",
           "DATA_DIR", "SPLITS"]

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "order")
CHAIN_SETS = ("english", "builtin")

# --- English ------------------------------------------------------------------------------------
# Slots: S a singular definite subject, Q its problem (bare plural noun phrase), U the people
# concerned (plural), T a task (base-form verb phrase), R a drastic response (third-person
# singular verb phrase).
_TOPICS = {
    "medication": ("the medication", "side effects", "patients", "review the dosage",
                   "requires medical supervision"),
    "bridge": ("the old bridge", "cracks", "drivers", "inspect the old bridge",
               "has to be closed to traffic"),
    "software": ("the software update", "bugs", "users", "roll back the software update",
                 "has to be withdrawn"),
    "factory": ("the factory", "safety violations", "workers", "inspect the factory",
                "must shut down its production lines"),
    "school": ("the school", "staff shortages", "parents", "hire more teachers",
               "has to cancel classes"),
    "hospital": ("the hospital", "delays in treatment", "patients", "open more beds",
                 "is turning patients away"),
    "restaurant": ("the restaurant", "hygiene problems", "customers", "clean the kitchen",
                   "has been ordered to close"),
    "railway": ("the train line", "delays", "commuters", "repair the signals",
                "is running a reduced timetable"),
    "vaccine": ("the new vaccine", "production problems", "doctors", "increase production",
                "is being rationed"),
    "housing": ("the housing project", "construction defects", "residents", "repair the buildings",
                "has been declared unsafe"),
    "power_plant": ("the power plant", "equipment failures", "engineers", "replace the turbines",
                    "must reduce its output"),
    "airline": ("the airline", "cancellations", "passengers", "hire more pilots",
                "has grounded part of its fleet"),
    "water": ("the water supply", "contamination problems", "households", "test the water",
              "must not be used for drinking"),
    "stadium": ("the stadium", "structural faults", "fans", "inspect the stands",
                "must stay closed for events"),
    "museum": ("the museum", "funding gaps", "visitors", "find new sponsors",
               "must close several galleries"),
    "phone_network": ("the phone network", "outages", "customers", "restore the service",
                      "needs emergency repairs"),
    "farm": ("the farm", "crop losses", "farmers", "replant the fields", "needs emergency aid"),
    "dam": ("the dam", "leaks", "nearby residents", "lower the water level",
            "threatens the valley below"),
    "hotel": ("the hotel", "booking errors", "guests", "fix the booking system",
              "is refunding every guest"),
    "online_bank": ("the online bank", "security flaws", "customers", "patch the servers",
                    "has been taken offline"),
}

# One frame per axis, weakest level first; each level strengthens the one before.
_AXES = {
    "severity": ("{S} has {Q}.", "{S} has severe {Q}.", "{S} has severe {Q} and {R}."),
    "certainty": ("{S} might have {Q}.", "{S} probably has {Q}.", "{S} almost certainly has {Q}.",
                  "{S} definitely has {Q}."),
    "urgency": ("Someone should {T} eventually.", "Someone should {T} soon.",
                "Someone must {T} today.", "Someone must {T} immediately."),
    "quantity": ("A few {U} reported {Q}.", "Several {U} reported {Q}.", "Many {U} reported {Q}.",
                 "Almost all {U} reported {Q}."),
    "frequency": ("{U} rarely complain about the {Q}.", "{U} sometimes complain about the {Q}.",
                  "{U} often complain about the {Q}.", "{U} constantly complain about the {Q}."),
    "size": ("The problem with {S} is small.", "The problem with {S} is large.",
             "The problem with {S} is enormous."),
    "cost": ("Dealing with the {Q} will cost a little money.",
             "Dealing with the {Q} will cost a lot of money.", "Dealing with the {Q} will cost a fortune."),
    "speed": ("The {Q} are slowly getting worse.", "The {Q} are quickly getting worse.",
              "The {Q} are getting worse by the hour."),
    "duration": ("The {Q} will last a few days.", "The {Q} will last a few weeks.",
                 "The {Q} will last several months.", "The {Q} will last for years."),
    "danger": ("{S} poses a slight risk to {U}.", "{S} poses a real risk to {U}.",
               "{S} poses a serious danger to {U}.", "{S} poses a grave danger to {U}."),
    "importance": ("The {Q} are a minor concern.", "The {Q} are a real concern.",
                   "The {Q} are a major concern.", "The {Q} are the most pressing concern of the year."),
    "difficulty": ("Getting rid of the {Q} is easy.", "Getting rid of the {Q} is hard.",
                   "Getting rid of the {Q} is extremely hard.", "Getting rid of the {Q} seems almost impossible."),
    "anger": ("{U} are a little annoyed about the {Q}.", "{U} are upset about the {Q}.",
              "{U} are angry about the {Q}.", "{U} are furious about the {Q}."),
    "approval": ("{U} think {S} is acceptable.", "{U} think {S} is good.", "{U} think {S} is excellent."),
    "evidence": ("One report mentions the {Q}.", "Several reports confirm the {Q}.",
                 "Every official report confirms the {Q}."),
    "scale": ("The {Q} affected ten {U}.", "The {Q} affected hundreds of {U}.",
              "The {Q} affected thousands of {U}.", "The {Q} affected millions of {U}."),
}


def _sentence(frame: str, slots: dict) -> str:
    text = frame.format(**slots)
    return text[0].upper() + text[1:]


def english_chains() -> list[dict]:
    """Every axis x topic chain of the English set, axes then topics in their fixed order."""
    chains = []
    for axis, frames in _AXES.items():
        for topic, (s, q, u, t, r) in _TOPICS.items():
            slots = {"S": s, "Q": q, "U": u, "T": t, "R": r}
            chains.append({"axis": axis, "topic": topic, "texts": [_sentence(f, slots) for f in frames]})
    return chains


# --- built-in corpus ----------------------------------------------------------------------------
# Sentence patterns of monollm/data/corpus.py with its own words, so that the tiny model's tokenizer
# (trained on that corpus) encodes them with the tokens it learned. A topic is a town with its
# river, neighbour, one of its nouns and goods, and a person.
_N = corpus._NUMBERS
_D = corpus._DAYS


def _counting(k: int) -> str:
    return ", ".join(_N[:k])


def _days(k: int) -> str:
    return f"{', '.join(_D[:k - 1])} and {_D[k - 1]}"


def _goods(goods: list[str], k: int) -> str:
    return goods[0] if k == 1 else f"{', '.join(goods[:k - 1])} and {goods[k - 1]}"


_BUILTIN_AXES = {
    "count": lambda c: [f"We counted the {c['nouns']} near {c['town']}: {_counting(k)}." for k in (3, 4, 5, 6)],
    "seen": lambda c: [f"{c['person']} saw {n} {c['nouns']} by the river {c['river']}."
                       for n in ("two", "five", "eight", "eleven")],
    "days": lambda c: [f"The work in {c['town']} went on through {_days(k)}." for k in (2, 3, 4)],
    "gates": lambda c: [f"The people of {c['town']} keep {_counting(k)} gates." for k in (3, 4, 5, 6)],
    "price": lambda c: [f"The price of {c['good']} in {c['town']} rose from two to {n} coins."
                        for n in ("three", "five", "nine")],
    "goods": lambda c: [f"The market in {c['town']} sold {_goods(c['goods'], k)}." for k in (1, 2, 3)],
    "crowd": lambda c: [f"{who} came to {c['town']}." for who in
                        (c['person'], f"{c['person']} and {c['friend']}",
                         f"{c['person']}, {c['friend']} and {c['third']}")],
    "distance": lambda c: [f"I left {c['town']} and walked to {c['neighbour']}.",
                           f"I left {c['town']} and walked to {c['neighbour']} and {c['next']}."],
    "size": lambda c: [f"The {c['noun']} near {c['town']} was {a}." for a in ("small", "large")],
    "light": lambda c: [f"The sky over {c['town']} was {a}." for a in ("dark", "bright")],
    "warmth": lambda c: [f"The {c['noun']} near {c['town']} was {a}." for a in ("cold", "warm")],
    "width": lambda c: [f"The road to {c['neighbour']} was {a}." for a in ("narrow", "wide")],
    "activity": lambda c: [f"The square in {c['town']} was {a}." for a in ("quiet", "busy")],
}


def _builtin_topic(i: int) -> dict:
    """The i-th town's slots, taken from the corpus' fixed world (no randomness)."""
    town = corpus._TOWNS[i]
    info = corpus._TOWN[town]
    noun = corpus._NOUNS[i % len(corpus._NOUNS)]
    people = corpus._PEOPLE
    goods = corpus._GOODS
    return {"town": town, "river": info["river"], "neighbour": info["neighbour"],
            "next": corpus._TOWN[info["neighbour"]]["neighbour"], "noun": noun,
            "nouns": corpus._PLURAL[noun], "good": goods[i % len(goods)],
            "goods": [goods[(i + j) % len(goods)] for j in range(3)],
            "person": people[i % len(people)], "friend": people[(i + 7) % len(people)],
            "third": people[(i + 13) % len(people)]}


def builtin_chains(n_topics: int = 16) -> list[dict]:
    """Every axis x town chain in the built-in corpus' words, for the first `n_topics` towns."""
    topics = [_builtin_topic(i) for i in range(n_topics)]
    return [{"axis": axis, "topic": c["town"], "texts": make(c)}
            for axis, make in _BUILTIN_AXES.items() for c in topics]


# --- files --------------------------------------------------------------------------------------

def _path(name: str, folder: str = DATA_DIR) -> str:
    return os.path.join(folder, f"{name}.jsonl")


def generate(name: str) -> list[dict]:
    """The chains of set `name` ("english" or "builtin") as this module generates them."""
    if name not in CHAIN_SETS:
        raise ValueError(f"unknown chain set {name!r}; known: {', '.join(CHAIN_SETS)}")
    return english_chains() if name == "english" else builtin_chains()


def write(folder: str = DATA_DIR) -> list[str]:
    """Write every chain set as `folder`/NAME.jsonl (one chain a line); the paths written."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in CHAIN_SETS:
        with open(_path(name, folder), "w", encoding="utf-8") as f:
            for chain in generate(name):
                f.write(json.dumps(chain, ensure_ascii=False) + "\n")
        paths.append(_path(name, folder))
    return paths


def load_chains(name_or_path: str) -> list[dict]:
    """Chains of a shipped set ("english", "builtin"), of a .jsonl file in the same format (one
    chain a line, optionally with a `split`: "fit" or "eval") or of a .json pairs file of the
    published format (`read_published`), checked: every chain has an axis, a topic and at least
    two distinct texts.

    A shipped set is generated here rather than read from its file (the two are equal): a code
    package that carries only Python files, such as Metaflow's for remote steps, has it too."""
    if name_or_path in CHAIN_SETS:
        chains, where = generate(name_or_path), f"chain set {name_or_path!r}"
    elif os.path.exists(name_or_path) and name_or_path.endswith(".json"):
        return read_published(name_or_path)
    elif os.path.exists(name_or_path):  # every field's type checked, with the line it is on
        return [chain for _, chain in field.jsonl_lines(name_or_path)]
    else:
        raise FileNotFoundError(f"no chain file {name_or_path!r}: give one of {', '.join(CHAIN_SETS)}, "
                                "the path of a .jsonl file of chains or of a .json pairs file")
    for i, c in enumerate(chains):
        text = f"{where} chain {i + 1}"
        field.text(c, "axis", text), field.text(c, "topic", text), field.texts(c, "texts", text), field.split(c, text)
    return chains


# --- the published pairs format -----------------------------------------------------------------
PUBLISHED_KEYS = {"": ("metadata", "chains", "pairs"), "metadata": ("axes",),
                  "chains": ("chain_id", "axis", "topic", "sequence"),
                  "pairs": ("pair_id", "chain_id", "axis", "topic", "weaker", "stronger", "level_gap")}
"""What a published pairs file must hold, per part: the top-level object, `metadata`, each chain
and each pair. A `split` ("fit" or "eval") is optional on chains and pairs (a pair without one
takes its chain's), but every pair has one or none does."""


def _require_keys(obj, part: str, where: str):
    """Refuse `obj` unless it is an object with every key PUBLISHED_KEYS names for `part`."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in PUBLISHED_KEYS[part] if k not in obj]
    if missing:
        raise ValueError(f"{where} has no {', '.join(repr(k) for k in missing)} (a published pairs file has "
                         f"{', '.join(PUBLISHED_KEYS[part])} there)")


def _published_chain(c: dict, where: str, axes) -> dict:
    """One chain of a published file as a chain of this module, with `chain_id` and `split`."""
    _require_keys(c, "chains", where)
    field.ident(c, "chain_id", where), field.text(c, "axis", where), field.text(c, "topic", where)
    seq = field.texts(c, "sequence", where)
    field.split(c, where)
    if c["axis"] not in axes:
        raise ValueError(f"{where}: axis {c['axis']!r} is not among metadata.axes")
    out = {"chain_id": c["chain_id"], "axis": c["axis"], "topic": c["topic"], "texts": list(seq), "pairs": []}
    if "split" in c:
        out["split"] = c["split"]
    return out


def _published_pair(p: dict, where: str, chains: dict) -> dict:
    """One pair of a published file, checked against its chain: {pair_id, weaker, stronger,
    level_gap, split (where given)}."""
    _require_keys(p, "pairs", where)
    field.ident(p, "pair_id", where), field.ident(p, "chain_id", where), field.text(p, "axis", where)
    field.text(p, "topic", where), field.text(p, "weaker", where), field.text(p, "stronger", where)
    field.positive_int(p, "level_gap", where), field.split(p, where)
    chain = chains.get(p["chain_id"])
    if chain is None:
        raise ValueError(f"{where}: chain_id {p['chain_id']!r} names no chain")
    if (p["axis"], p["topic"]) != (chain["axis"], chain["topic"]):
        raise ValueError(f"{where}: axis and topic differ from those of chain {p['chain_id']!r}")
    texts = chain["texts"]
    if p["weaker"] not in texts or p["stronger"] not in texts or texts.index(p["weaker"]) >= texts.index(p["stronger"]):
        raise ValueError(f"{where}: 'weaker' and 'stronger' must be texts of the chain's sequence, weaker first")
    if "split" in p and "split" in chain and p["split"] != chain["split"]:
        raise ValueError(f"{where}: split {p['split']!r} differs from its chain's {chain['split']!r}")
    pair = {k: p[k] for k in ("pair_id", "weaker", "stronger", "level_gap")}
    if "split" in p or "split" in chain:
        pair["split"] = p.get("split", chain.get("split"))
    return pair


def read_published(path: str) -> list[dict]:
    """Chains of a pairs file of the published format, read as it is: one JSON object with
    `metadata` (`axes`, and e.g. `fit_fraction`, `split_seed`, counts), `chains` (`chain_id`,
    `axis`, `topic`, `sequence` of texts weakest to strongest, optional `split`) and `pairs`
    (`pair_id`, `chain_id`, `axis`, `topic`, `weaker`, `stronger`, `level_gap`, optional `split`).

    Each chain comes back as {"chain_id", "axis", "topic", "texts" (its sequence), "split" (where
    given), "pairs": its pairs as {"pair_id", "weaker", "stronger", "level_gap", "split"}}. A file
    of another shape is refused with a ValueError naming what is missing or wrong."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    _require_keys(data, "", path)
    _require_keys(data["metadata"], "metadata", f"{path} metadata")
    axes = data["metadata"]["axes"]
    if not isinstance(axes, list) or not all(isinstance(a, str) and a for a in axes):
        field.fail(f"{path} metadata", "axes", "must be a list of axis names", axes)
    for part in ("chains", "pairs"):
        if not isinstance(data[part], list) or not data[part]:
            raise ValueError(f"{path}: {part!r} must be a non-empty list")
    chains = {}
    for i, c in enumerate(data["chains"]):
        chain = _published_chain(c, f"{path} chains[{i}]", data["metadata"]["axes"])
        if chain["chain_id"] in chains:
            raise ValueError(f"{path} chains[{i}] field 'chain_id': {chain['chain_id']!r} is not unique")
        chains[chain["chain_id"]] = chain
    for i, p in enumerate(data["pairs"]):
        pair = _published_pair(p, f"{path} pairs[{i}]", chains)
        chains[p["chain_id"]]["pairs"].append(pair)
    field.unique([p["pair_id"] for p in data["pairs"]], "pairs", "pair_id", path)  # each checked an id above
    splits = [p.get("split") for c in chains.values() for p in c["pairs"]]  # a pair's, else its chain's
    if any(s is None for s in splits) and any(s is not None for s in splits):
        raise ValueError(f"{path}: some pairs have a 'split' (their own or their chain's) and others not: "
                         "all or none")
    splits += [c.get("split") for c in chains.values()]
    bad = sorted({str(s) for s in splits if s is not None and s not in SPLITS})
    if bad:
        raise ValueError(f"{path}: split {bad[0]!r}; allowed: {', '.join(SPLITS)}")
    return list(chains.values())

if __name__ == "__main__":
    for p in write(sys.argv[1] if len(sys.argv) > 1 else DATA_DIR):
        print(p)
