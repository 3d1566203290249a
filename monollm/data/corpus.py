"""Built-in offline corpus for the default profile.

The text is synthetic English: a small, fixed "world" (towns, rivers, trades,
people) described through a few genres of documents.  The world's facts are
stated with one fixed wording each (the downstream cloze and choice tasks rely
on it) and repeat often enough for a tiny GPT-NeoX model to learn them on CPU;
everything around them is composed from a small grammar (optional openers,
adverbials, places, times and subordinate clauses over a lexicon of a few
hundred words, random quantities, several phrasings of each opening and
closing), so that held-out documents are not copies of training text: few of
their 16-token windows occur verbatim in the training split
(tests/test_corpus.py measures it on the flow's own splits).

Everything is pure Python and driven by ``random.Random`` instances, so the
output never depends on the global RNG state or on any download.
"""

from __future__ import annotations

import random

__all__ = ["generate", "DEFAULT_SEED", "world_facts", "names"]

from monollm.data.grammar import (
    _a, _body, _cap, _clause, _context, _other, _place, _time, _when)
# the world's names stay importable from here (downstream, order_chains and tests use them)
from monollm.data.world import (
    DEFAULT_SEED, FACT_SLOTS, _ADJS, _ADJ_ALL, _COLOURS, _DAYS, _GOODS, _GOODS_ALL, _JOBS, _NOUNS,
    _NOUN_ALL, _NUMBERS, _PEOPLE, _PERSON, _PLACES, _PLURAL, _RELATIVES, _RIVERS, _TOWN, _TOWNS,
    _TRADES, _WEATHER, _person_fact, _town_facts, names, world_facts)  # noqa: F401


def _travel(rng, target):
    t = rng.choice(_TOWNS)
    n = _TOWN[t]["neighbour"]
    p = rng.choice(_PEOPLE)
    c = _context(rng, n, p, _other(rng, p))
    opening = rng.choice(_OPENINGS["travel"]).format(p=p)
    start = rng.choice((f"On {rng.choice(_DAYS)} I left {t} and walked to {n}.",
                        f"I left {t} {_time(rng)} and walked to {n}.",
                        f"{_time(rng).capitalize()} I set out from {t} for {n}."))
    facts = [_person_fact(p)] + rng.sample(_town_facts(t)[:2], 1) + rng.sample(_town_facts(n), 1)
    rng.shuffle(facts)
    out = [opening, start] + _body(rng, c, target, facts)
    out.append(f"I will {rng.choice(('rest', 'stay', 'sleep', 'work'))} in {n} {_time(rng)} and "
               f"{rng.choice(('return to', 'walk back to', 'go home to'))} {t} {_when(rng)}.")
    return out


def _letter(rng, target):
    p, q = rng.sample(_PEOPLE, 2)
    t = _PERSON[p]["home"]
    c = _context(rng, t, p, q)
    facts = [_person_fact(p)] + rng.sample(_town_facts(t), 2)
    out = [rng.choice(_OPENINGS["letter"]).format(q=q),
           rng.choice((f"I am writing to you from {t} {_time(rng)}.", f"I write from {t} {_time(rng)}.",
                       f"Greetings from {t}, where {_clause(rng, c)}."))]
    out += _body(rng, c, target, facts + [f"How is the {rng.choice(('weather', 'harvest', 'market', 'family', 'river'))} in {_PERSON[q]['home']} "
                                   f"{_time(rng)}?"],
                 extra=lambda r: f"I hope the {r.choice(_JOBS)} {_place(r, c)} is {r.choice(('well', 'happy', 'busy', 'better'))}.",
                 extra_p=0.15)
    out.append(rng.choice((f"Your friend, {p}.", f"With love, {p}.", f"Yours, {p}.", f"Write soon, {p}.")))
    return out


def _market(rng, target):
    t = rng.choice(_TOWNS)
    p = rng.choice(_PEOPLE)
    c = _context(rng, t, p, _other(rng, p))
    day = rng.randrange(7)
    out = [rng.choice(_OPENINGS["market"]).format(t=t, day=_DAYS[day])]

    def price(r):
        a = r.randrange(2, 18)
        b = a + r.choice((-2, -1, 1, 2))
        move = "rose" if b > a else "fell"
        good = r.choice(_GOODS_ALL)
        if r.random() < 0.4:
            return (f"The price of {good} {_place(r, c)} {move} from {_NUMBERS[a - 1]} to {_NUMBERS[b - 1]} "
                    f"coins {_time(r)}.")
        return f"{_cap(good)} cost {r.randint(2, 60)} coins {r.choice(('a sack', 'a basket', 'a jar', 'each', 'a box'))}."

    facts = [_town_facts(t)[1],
             f"Today the {_TOWN[t]['trade']} sold {rng.choice(('well', 'badly', 'slowly', 'fast'))} "
             f"{_time(rng)} and the square was {rng.choice(_ADJ_ALL)}."]
    out += _body(rng, c, target, facts, extra=price, extra_p=0.3)
    out.append(rng.choice((f"The next market in {t} is on {_DAYS[(day + 1) % 7]}.",
                           f"The market of {t} opens again on {_DAYS[(day + 1) % 7]}.")))
    return out


def _story(rng, target):
    p = rng.choice(_PEOPLE)
    job, t = _PERSON[p]["job"], _PERSON[p]["home"]
    q = _other(rng, p)
    c = _context(rng, t, p, q)
    how = rng.choice(("alone", "happily", "quietly", f"with {_a(rng.choice(_RELATIVES))}", f"near the {rng.choice(_PLACES)}",
                      f"behind the {rng.choice(_NOUN_ALL)}", "up the hill", f"for {rng.choice(_NUMBERS[1:])} years"))
    out = [rng.choice(_OPENINGS["story"]).format(job=job, p=p, t=t, how=how)]
    facts = [_town_facts(t)[0],
             f"One {rng.choice(_DAYS)} {_time(rng)} {rng.choice(_VISITORS)} {q} "
             f"{rng.choice(('came to', 'arrived in', 'walked into', 'rode into', 'sailed to'))} {t} {_place(rng, c)}.",
             _person_fact(q)]

    def dialogue(r):
        # Short question/answer pairs whose answer is fixed by the world.
        u = r.choice(_TOWNS)
        if r.random() < 0.5:
            return f'"Where does {u} lie?" asked {q}. "On the river {_TOWN[u]["river"]}," said {p}.'
        return f'"What is {u} known for?" asked {q}. "For its {_TOWN[u]["trade"]}," said {p}.'

    out += _body(rng, c, target, facts, extra=dialogue, extra_p=0.12)
    out.append(f"{rng.choice(('In the end', 'At last', 'And so', 'After that', 'Years later'))} {q} "
               f"{rng.choice(('stayed in', 'left', 'never forgot', 'came back to', 'grew old in'))} {t}, "
               f"and {p} was {rng.choice(_ADJ_ALL)}.")
    return out


def _list(rng, target):
    t = rng.choice(_TOWNS)
    p = rng.choice(_PEOPLE)
    c = _context(rng, t, p, _other(rng, p))
    out = [rng.choice(_OPENINGS["list"]).format(t=t)]
    k = rng.randint(3, 6)
    facts = _town_facts(t) + [f"The people of {t} keep {', '.join(_NUMBERS[:k])} gates."] * (rng.random() < 0.5)
    rng.shuffle(facts)
    locals_ = [x for x in _PEOPLE if _PERSON[x]["home"] == t] or [p]
    out += _body(rng, c, target, facts, extra=lambda r: _person_fact(r.choice(locals_)), extra_p=0.2)
    out.append(rng.choice((f"That is all about {t}.", f"There is more to say about {t} {_when(rng)}.",
                           f"So much for {t}.")))
    return out


_OPENINGS = {
    "travel": ("Travel note by {p}.", "From the notebook of {p}.", "A journey by {p}.", "Notes from the road, by {p}."),
    "letter": ("Dear {q},", "My dear {q},", "To {q},", "Hello {q},"),
    "market": ("Market report for {t} on {day}.", "News from the market of {t}, {day}.",
               "The {day} market at {t}."),
    "story": ("Once there was a {job} named {p} who lived {how} in {t}.", "Long ago a {job} called {p} lived {how} in {t}.",
              "There was once a {job} in {t} whose name was {p}, and {p} lived {how}."),
    "list": ("A list of facts about {t}.", "Some facts about {t}.", "What we know of {t}.",
             "Notes about the town of {t}."),
}
"""Genre -> the phrasings its documents open with (one drawn per document)."""

_VISITORS = ("a stranger named", "a traveller called", "a visitor named", "someone called", "a pedlar named",
             "a tired stranger called")

_GENRES = (_travel, _letter, _market, _story, _list)

MIN_WORDS, MAX_WORDS = 60, 200


def generate(n_docs: int, seed: int = DEFAULT_SEED) -> list[str]:
    """Return ``n_docs`` deterministic synthetic documents for ``seed``."""
    if not isinstance(n_docs, int) or n_docs < 1:
        raise ValueError(f"n_docs must be a positive integer, got {n_docs!r}")
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        # Openings, facts and closings add up to ~70 words at most, and filler
        # sentences are short, so targets in this range keep docs in bounds.
        target = rng.randint(70, 150)
        genre = rng.choice(_GENRES)
        sentences = genre(rng, target)
        doc = " ".join(sentences)
        words = doc.split()
        if len(words) > MAX_WORDS:
            # Safety net: never expected, but keep the contract hard.
            doc = " ".join(words[:MAX_WORDS]).rstrip(",.") + "."
        docs.append(doc)
    return docs
