"""Built-in offline corpus for the default profile.

The text is synthetic English: a small, fixed "world" (towns, rivers, trades,
people) described through a few genres of templated documents.  It is meant to
be easy enough that a tiny GPT-NeoX model learns it in about a minute on CPU
(fixed facts, repeated entities, ordered sequences), yet varied enough that an
adversarial trigger has predictions worth breaking.

Everything is pure Python and driven by ``random.Random`` instances, so the
output never depends on the global RNG state or on any download.
"""

from __future__ import annotations

import random

__all__ = ["generate", "DEFAULT_SEED", "world_facts", "names"]

DEFAULT_SEED = 1234

# The world is built from its own fixed seed, not from the ``seed`` passed to
# generate(): facts must stay the same for every corpus, otherwise a model
# trained on one seed and evaluated on another would see contradictions.
_WORLD_SEED = 20240601

_TOWNS = (
    "Arden Brill Calder Dunmore Elswick Farrow Glenby Harwick Ilsley Jarrow "
    "Kelby Larkin Marrow Norwell Oakham Pellow Quenby Redmere Selby Tarrow "
    "Ulwick Varden Wexley Yarrow Ashby Belton Corfe Dalby Eskdale Fenwick "
    "Garston Holt Irby Kirkby Lydden Melton Nayland Orford Padley Rydal"
).split()
_RIVERS = "Vell Ouse Tamsin Lune Esk Wendle Calm Brae Stour Idle Rother Wye".split()
_TRADES = (
    "wool cheese salt timber pottery rope honey cider linen iron "
    "bread glass leather candles fish"
).split()
_PEOPLE = (
    "Mara Tobin Elsa Rowan Ivo Nessa Bram Lena Odo Petra Quill Rhea Silas "
    "Tamsin Ula Viggo Wren Yara Alden Bess Cato Dara Emil Fenn Greta Hugo "
    "Ilse Jory Kit Lorne"
).split()
_JOBS = (
    "baker miller weaver smith potter farmer fisher carpenter tailor "
    "merchant teacher doctor sailor shepherd"
).split()

_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_NUMBERS = (
    "one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_COLOURS = "red blue green yellow grey white black brown".split()
_ADJS = "quiet busy old small large cold warm bright dark long narrow wide".split()
# Nouns that take a plain "s" plural, so templates never need irregular forms.
_NOUNS = (
    "bird cart tree house bridge boat horse stone field barrel basket lamp "
    "bell gate road hill cow sheep dog"
).split()
_PLURAL = {n: (n if n == "sheep" else n + "s") for n in _NOUNS}
_WEATHER = "rain wind sun fog snow frost".split()
_GOODS = "apples eggs nails cloth grain milk beans wine".split()


def _build_world() -> tuple[dict, dict]:
    rng = random.Random(_WORLD_SEED)
    towns = list(_TOWNS)
    order = towns[:]
    rng.shuffle(order)
    # Neighbours form one ring so every town has exactly one fixed neighbour.
    neighbour = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    town_info = {
        t: {
            "river": rng.choice(_RIVERS),
            "trade": rng.choice(_TRADES),
            "neighbour": neighbour[t],
            "colour": rng.choice(_COLOURS),
        }
        for t in towns
    }
    people = {p: {"job": rng.choice(_JOBS), "home": rng.choice(towns)} for p in _PEOPLE}
    return town_info, people


_TOWN, _PERSON = _build_world()


# --- fact sentences: the only place world facts are verbalised, so every
# document states them with identical wording ---------------------------------

def _town_facts(t: str) -> list[str]:
    i = _TOWN[t]
    return [
        f"The town of {t} lies on the river {i['river']}.",
        f"{t} is known for its {i['trade']}.",
        f"The nearest town to {t} is {i['neighbour']}.",
        f"The gates of {t} are painted {i['colour']}.",
    ]


def _person_fact(p: str) -> str:
    i = _PERSON[p]
    return f"{p} is a {i['job']} from {i['home']}."


FACT_SLOTS = {"river": _RIVERS, "trade": _TRADES, "neighbour": _TOWNS, "colour": _COLOURS, "home": _TOWNS}
"""What each fact's last word is drawn from: slot -> every value the world may give it."""


def world_facts() -> list[dict]:
    """Every fact of the world as {"prefix", "answer", "slot"}: a fact sentence of the corpus
    (the wording documents use) without its last word, that word, and its slot in FACT_SLOTS.
    Four facts per town (river, trade, neighbour, colour) and one per person (home)."""
    slots = ("river", "trade", "neighbour", "colour")
    pairs = [(s, slot) for t in _TOWNS for s, slot in zip(_town_facts(t), slots)]
    pairs += [(_person_fact(p), "home") for p in _PEOPLE]
    out = []
    for sentence, slot in pairs:
        prefix, answer = sentence.rstrip(".").rsplit(" ", 1)
        out.append({"prefix": prefix, "answer": answer, "slot": slot})
    return out


def names() -> frozenset[str]:
    """Every proper name the corpus uses: towns, rivers, people and days."""
    return frozenset(_TOWNS + _RIVERS + _PEOPLE + _DAYS)


def _count(rng: random.Random, noun: str) -> str:
    # Counting from one gives the model an easy, strictly ordered sequence.
    n = rng.randint(3, 8)
    return f"We counted the {_PLURAL[noun]}: {', '.join(_NUMBERS[:n])}."


def _days_run(rng: random.Random) -> str:
    start = rng.randrange(7)
    n = rng.randint(3, 5)
    days = [_DAYS[(start + k) % 7] for k in range(n)]
    return f"The work went on through {', '.join(days[:-1])} and {days[-1]}."


def _filler(rng: random.Random, t: str, p: str) -> str:
    # Generic sentences reuse the document's own entities so copying from
    # context is rewarded.
    kind = rng.randrange(8)
    noun = rng.choice(_NOUNS)
    if kind == 0:
        return f"The {noun} near {t} was {rng.choice(_ADJS)} and {rng.choice(_COLOURS)}."
    if kind == 1:
        return f"{p} saw {rng.choice(_NUMBERS[1:12])} {_PLURAL[noun]} by the river {_TOWN[t]['river']}."
    if kind == 2:
        return f"On {rng.choice(_DAYS)} there was {rng.choice(_WEATHER)} over {t}."
    if kind == 3:
        return _count(rng, noun)
    if kind == 4:
        return _days_run(rng)
    if kind == 5:
        return f"The people of {t} sell {_TOWN[t]['trade']} to {_TOWN[t]['neighbour']}."
    if kind == 6:
        return rng.choice(_town_facts(t))
    return f"{p} said that the {noun} was {rng.choice(_ADJS)}."


def _fill(rng, out, target, t, p, extra=None) -> None:
    """Append sentences until the document reaches ``target`` words."""
    while sum(len(s.split()) for s in out) < target:
        if extra is not None and rng.random() < 0.5:
            out.append(extra(rng))
        else:
            out.append(_filler(rng, t, p))


def _travel(rng, target):
    t = rng.choice(_TOWNS)
    n = _TOWN[t]["neighbour"]
    p = rng.choice(_PEOPLE)
    out = [f"Travel note by {p}.", _person_fact(p),
           f"On {rng.choice(_DAYS)} I left {t} and walked to {n}."]
    out += _town_facts(t)[:2] + _town_facts(n)[:2]
    out.append(f"The road was {rng.choice(_ADJS)} and the sky was {rng.choice(_COLOURS)}.")
    _fill(rng, out, target, n, p)
    out.append(f"I will rest in {n} and return to {t} soon.")
    return out


def _letter(rng, target):
    p, q = rng.sample(_PEOPLE, 2)
    t = _PERSON[p]["home"]
    out = [f"Dear {q},", f"I am writing to you from {t}.", _person_fact(p)]
    out += _town_facts(t)
    out.append(f"How is the weather in {_PERSON[q]['home']}?")
    _fill(rng, out, target, t, p,
          extra=lambda r: f"I hope the {r.choice(_JOBS)} in {t} is well.")
    out.append(f"Your friend, {p}.")
    return out


def _market(rng, target):
    t = rng.choice(_TOWNS)
    p = rng.choice(_PEOPLE)
    day = rng.randrange(7)
    out = [f"Market report for {t} on {_DAYS[day]}.", _town_facts(t)[1]]

    def price(r):
        a = r.randrange(2, 18)
        b = a + r.choice((-2, -1, 1, 2))
        move = "rose" if b > a else "fell"
        return f"The price of {r.choice(_GOODS)} {move} from {_NUMBERS[a - 1]} to {_NUMBERS[b - 1]} coins."

    out.append(f"Today the {_TOWN[t]['trade']} sold well and the square was {rng.choice(_ADJS)}.")
    _fill(rng, out, target, t, p, extra=price)
    out.append(f"The next market in {t} is on {_DAYS[(day + 1) % 7]}.")
    return out


def _story(rng, target):
    p = rng.choice(_PEOPLE)
    job, t = _PERSON[p]["job"], _PERSON[p]["home"]
    q = rng.choice([x for x in _PEOPLE if x != p])
    out = [f"Once there was a {job} named {p} who lived in {t}.",
           _town_facts(t)[0],
           f"Every day {p} worked as a {job} and sold {_TOWN[t]['trade']}.",
           f"One {rng.choice(_DAYS)} a stranger named {q} came to {t}.",
           _person_fact(q)]

    def dialogue(r):
        # Short question/answer pairs whose answer is fixed by the world.
        u = r.choice(_TOWNS)
        if r.random() < 0.5:
            return f'"Where does {u} lie?" asked {q}. "On the river {_TOWN[u]["river"]}," said {p}.'
        return f'"What is {u} known for?" asked {q}. "For its {_TOWN[u]["trade"]}," said {p}.'

    _fill(rng, out, target, t, p, extra=dialogue)
    out.append(f"In the end {q} stayed in {t} and {p} was glad.")
    return out


def _list(rng, target):
    t = rng.choice(_TOWNS)
    p = rng.choice(_PEOPLE)
    out = [f"A list of facts about {t}."] + _town_facts(t)
    k = rng.randint(3, 6)
    out.append(f"The people of {t} keep {', '.join(_NUMBERS[:k])} gates.")
    locals_ = [x for x in _PEOPLE if _PERSON[x]["home"] == t] or [p]
    _fill(rng, out, target, t, p,
          extra=lambda r: _person_fact(r.choice(locals_)))
    out.append(f"That is all about {t}.")
    return out


_GENRES = (_travel, _letter, _market, _story, _list)

MIN_WORDS, MAX_WORDS = 60, 200


def generate(n_docs: int, seed: int = DEFAULT_SEED) -> list[str]:
    """Return ``n_docs`` deterministic synthetic documents for ``seed``."""
    if not isinstance(n_docs, int) or n_docs < 1:
        raise ValueError(f"n_docs must be a positive integer, got {n_docs!r}")
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        # Openings and closings add up to ~60 words at most, and filler
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
