"""The grammar of the built-in corpus's non-fact sentences (used by monollm.data.corpus): composed
from the lexicon of monollm.data.world, so that the same words rarely recur in the same order."""

from __future__ import annotations

import random

from monollm.data.world import (
    _ADJ_ALL, _ADVS, _COLOURS, _CONJS, _DAYS, _GOODS_ALL, _INTRANS, _JOBS, _MORE_JOBS,
    _MORE_WEATHER, _NOUNS, _NOUN_ALL, _NUMBERS, _OPENERS, _PEOPLE, _PLACES, _PLURAL, _RELATIVES,
    _RIVERS, _TIMES, _TOWN, _TOWNS, _TRANS, _WEATHER, _town_facts)

# --- the grammar of non-fact sentences -------------------------------------------------------
# A document's context `c` holds its main town "t", that town's river "r" and neighbour "n",
# and its two people "p" and "q". Sentences name them often (so copying from context pays) but
# wrap them in freely drawn words, so that the same words rarely recur in the same order.

def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _a(word: str) -> str:
    """`word` with its indefinite article."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _time(rng: random.Random) -> str:
    """A time of day or of the year, now and then a clock time."""
    if rng.random() < 0.25:
        return f"at {rng.randint(1, 12)} " + rng.choice(("o'clock", "in the morning", "at night"))
    return rng.choice(_TIMES)


def _qty(rng: random.Random) -> str:
    """A random quantity: a number word, digits or a vague amount."""
    k = rng.randrange(4)
    if k == 0:
        return rng.choice(_NUMBERS[1:])
    if k in (1, 2):
        return str(rng.randint(21, 999))
    return rng.choice(("a few", "some", "many", "a dozen", "several", "a pair of", "a cart of", "a sack of"))


def _np(rng: random.Random) -> str:
    """An object noun phrase: 'the old ladder', 'seven buckets', 'a sack of plums'."""
    noun = rng.choice(_NOUN_ALL)
    k = rng.randrange(8)
    if k == 5:
        return f"{_qty(rng)} {rng.choice(_ADJ_ALL)} {_PLURAL.get(noun, noun + 's')}"
    if k == 6:
        return f"the {noun} of {rng.choice(_PEOPLE)}"
    if k == 7:
        a, b = rng.sample(_ADJ_ALL, 2)
        return f"{_a(a)}, {b} {noun}"
    if k == 0:
        return f"the {noun}"
    if k == 1:
        return f"the {rng.choice(_ADJ_ALL)} {noun}"
    if k == 2:
        return f"{_a(rng.choice(_ADJ_ALL))} {noun}"
    if k == 3:
        return f"{_qty(rng)} {_PLURAL.get(noun, noun + 's')}"
    return f"{_qty(rng)} {rng.choice(_GOODS_ALL)}"


def _subject(rng: random.Random, c: dict) -> str:
    k = rng.randrange(10)
    if k < 2:
        return c[rng.choice("pq")]
    if k >= 8:
        return rng.choice(_PEOPLE)
    if k == 2:
        return f"the {rng.choice(_JOBS + _MORE_JOBS)}"
    if k == 3:
        return f"the {rng.choice(_ADJ_ALL)} {rng.choice(_JOBS + _MORE_JOBS)}"
    if k == 4:
        return f"{c['p']} and {c['q']}"
    if k == 5:
        return f"{c[rng.choice('pq')]}'s {rng.choice(_RELATIVES)}"
    if k == 6:
        return rng.choice(("I", "we", "they", "she", "he"))
    return f"the children of {c['t']}"


def _place(rng: random.Random, c: dict) -> str:
    k = rng.randrange(7)
    # half the time the document's own town, river or neighbour (copying pays), else any
    own = rng.random() < 0.5
    if k == 0:
        return f"near {c['t'] if own else rng.choice(_TOWNS)}"
    if k == 1:
        return f"by the river {c['r'] if own else rng.choice(_RIVERS)}"
    if k == 2:
        return f"on the road to {c['n'] if own else rng.choice(_TOWNS)}"
    if k == 3:
        return f"in the {rng.choice(_PLACES)}"
    if k == 4:
        return f"behind the {rng.choice(_NOUN_ALL)}"
    if k == 5:
        return f"at the {rng.choice(_PLACES)} in {c['t']}"
    return rng.choice(("under the bridge", "up the hill", "across the field", "down by the gate"))


def _clause(rng: random.Random, c: dict) -> str:
    """subject, verb, an optional object, adverb, place and time: 'the baker mended a wet roof in the mill'."""
    parts = [_subject(rng, c)]
    if rng.random() < 0.5:
        parts.append(rng.choice(_INTRANS))
    else:
        parts += [rng.choice(_TRANS), _np(rng)]
    if rng.random() < 0.4:
        parts.append(rng.choice(_ADVS))
    if rng.random() < 0.7:
        parts.append(_place(rng, c))
    if rng.random() < 0.45:
        parts.append(_time(rng))
    return " ".join(parts)


def _action(rng: random.Random, c: dict) -> str:
    """A sentence of one or two clauses, with an optional opener."""
    s = _clause(rng, c)
    if rng.random() < 0.45:
        s += f"{rng.choice(_CONJS)} {_clause(rng, c)}"
    if rng.random() < 0.3:
        s = f"{rng.choice(_OPENERS + _TIMES)}, {s}"
    return _cap(s) + "."


def _describe(rng: random.Random, c: dict) -> str:
    noun = rng.choice(_NOUN_ALL)
    a, b = rng.sample(_ADJ_ALL, 2)
    k = rng.randrange(5)
    if k == 4:
        return f"It was {_a(a)} {rng.choice(('day', 'night', 'morning', 'week', 'year'))} in {c['t']}, and {_clause(rng, c)}."
    if k == 0:
        return f"The {noun} {_place(rng, c)} was {a} and {rng.choice(_COLOURS)}."
    if k == 1:
        return f"The {noun} was {a}, and the {rng.choice(_NOUN_ALL)} was {b}."
    if k == 2:
        return f"The road to {c['n']} was {a} {_time(rng)}, {_clause(rng, c)}."
    if rng.random() < 0.5:
        return f"The sky over {c['t']} was {rng.choice(_COLOURS + ['dark', 'bright', 'pale'])} {_time(rng)}."
    return f"The {rng.choice(_PLACES)} was {a} {_time(rng)}, and {_clause(rng, c)}."


def _weather(rng: random.Random, c: dict) -> str:
    w = rng.choice(_WEATHER + _MORE_WEATHER)
    k = rng.randrange(3)
    if k == 0:
        return f"On {rng.choice(_DAYS)} there was {w} over {c['t']}."
    if k == 1:
        return f"The {w} {rng.choice(('came', 'stopped', 'returned', 'lasted', 'grew'))} {_time(rng)}."
    return f"There was {w} {_place(rng, c)} {_time(rng)}, {rng.choice(('so', 'and', 'but'))} {_clause(rng, c)}."


def _speech(rng: random.Random, c: dict) -> str:
    who = c[rng.choice("pq")] if rng.random() < 0.6 else rng.choice(_PEOPLE)
    k = rng.randrange(3)
    if k == 0:
        return f"{who} said that {_clause(rng, c)}."
    if k == 1:
        return f'"{_cap(_clause(rng, c))}," said {who}.'
    return f"{who} asked whether {_clause(rng, c)}."


def _trade_talk(rng: random.Random, c: dict) -> str:
    who = c[rng.choice("pq")]
    k = rng.choice((0, 0, 0, 1, 2, 2))
    if k == 0:
        return (f"{who} {rng.choice(('bought', 'sold', 'wanted'))} {_qty(rng)} {rng.choice(_GOODS_ALL)} for "
                f"{rng.randint(2, 300)} coins at {rng.randint(1, 12)} o'clock.")
    if k == 1:
        t = c["t"]
        return f"The people of {t} sell {_TOWN[t]['trade']} to {_TOWN[t]['neighbour']}."
    noun = rng.choice(_NOUN_ALL)
    return f"{who} saw {_qty(rng)} {_PLURAL.get(noun, noun + 's')} {_place(rng, c)}."


def _journey(rng: random.Random, c: dict) -> str:
    """Distances, durations and loads: random numbers in digits."""
    who = _subject(rng, c)
    k = rng.randrange(3)
    if k == 0:
        return (f"{_cap(who)} {rng.choice(('walked', 'rode', 'carried the cart', 'rowed'))} {rng.randint(2, 99)} miles "
                f"to {rng.choice(_TOWNS)} in {rng.randint(2, 30)} hours.")
    if k == 1:
        return f"{_cap(who)} was {rng.randint(6, 95)} years old {_time(rng)}."
    return f"In {rng.randint(1000, 1999)} {who} {rng.choice(_TRANS)} {_np(rng)} {_place(rng, c)}."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _lists(rng: random.Random, c: dict) -> str:
    """Unordered lists drawn from the lexicon: many choices, few function words."""
    k = rng.randrange(4)
    if k == 0:
        goods = _and(rng.sample(_GOODS_ALL, rng.randint(2, 5)))
        return f"{_cap(_subject(rng, c))} {rng.choice(('bought', 'sold', 'packed', 'brought'))} {goods} {_place(rng, c)}."
    if k == 1:
        return f"{_and(rng.sample(_PEOPLE, rng.randint(2, 4)))} came to {c['t']} {_time(rng)}."
    if k == 2:
        return f"The {rng.choice(_NOUN_ALL)} was {_and(rng.sample(_ADJ_ALL, rng.randint(2, 4)))}."
    things = _and([rng.choice((_a(n), f"one {n}", f"the {n}")) for n in rng.sample(_NOUN_ALL, rng.randint(2, 4))])
    return f"In the {rng.choice(_PLACES)} there were {things}."


def _count(rng: random.Random, noun: str) -> str:
    # Counting from one gives the model an easy, strictly ordered sequence.
    n = rng.randint(3, 8)
    return f"We counted the {_PLURAL[noun]}: {', '.join(_NUMBERS[:n])}."


def _days_run(rng: random.Random) -> str:
    start = rng.randrange(7)
    n = rng.randint(3, 5)
    days = [_DAYS[(start + k) % 7] for k in range(n)]
    return f"The work went on through {', '.join(days[:-1])} and {days[-1]}."


def _filler(rng: random.Random, c: dict) -> str:
    # Mostly composed sentences; now and then an ordered sequence or a fact of the town.
    k = rng.random()
    if k < 0.38:
        return _action(rng, c)
    if k < 0.48:
        return _lists(rng, c)
    if k < 0.57:
        return _describe(rng, c)
    if k < 0.65:
        return _weather(rng, c)
    if k < 0.77:
        return _speech(rng, c)
    if k < 0.87:
        return _trade_talk(rng, c)
    if k < 0.94:
        return _journey(rng, c) if rng.random() < 0.5 else _lists(rng, c)
    if k < 0.952:
        return _count(rng, rng.choice(_NOUNS))
    if k < 0.96:
        return _days_run(rng)
    return rng.choice(_town_facts(c["t"]))


def _words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def _body(rng, c, target, facts, extra=None, extra_p=0.3) -> list[str]:
    """Filler sentences (or `extra(rng)` with probability `extra_p`) until `target` words,
    with the fact sentences `facts` scattered among them at random places (in order), so that
    facts recur word for word but their neighbours do not."""
    out: list[str] = []
    while _words(out) + _words(facts) < target:
        out.append(extra(rng) if extra is not None and rng.random() < extra_p else _filler(rng, c))
    # distinct gaps where there are enough, so that two fixed sentences rarely stand side by side
    gaps = sorted(rng.sample(range(len(out) + 1), len(facts))) if len(facts) <= len(out) + 1 else \
        sorted(rng.randint(0, len(out)) for _ in facts)
    for f, g in reversed(list(zip(facts, gaps))):
        out.insert(g, f)
    return out


def _context(rng, t: str, p: str, q: str) -> dict:
    return {"t": t, "r": _TOWN[t]["river"], "n": _TOWN[t]["neighbour"], "p": p, "q": q}


def _other(rng, p: str) -> str:
    return rng.choice([x for x in _PEOPLE if x != p])


def _when(rng) -> str:
    return rng.choice(("soon", f"on {rng.choice(_DAYS)}", f"in {rng.choice(_NUMBERS[1:9])} days", "before long",
                       "next week", "after the market", f"with {rng.choice(_PEOPLE)}"))
