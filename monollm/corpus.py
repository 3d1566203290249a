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

# --- the wider lexicon of the non-fact sentences (the lists above stay as they are: the
# world is drawn from them, and monollm.order_chains and monollm.downstream read them) ---
_MORE_ADJS = (
    "soft rough heavy fresh dry wet clean muddy tall short new broken steep deep "
    "loud calm pale sweet bitter empty full strange plain fine thin thick round flat "
    "sharp smooth shiny dusty rusty wooden stony sunny shady lonely friendly proud "
    "tired hungry lucky gentle clever simple rich poor hollow golden silver ancient angry "
    "bold brave cheap cheerful crooked curly damp eager faint fancy fierce foggy frozen "
    "grand greedy hard honest huge icy kind lazy little lively lovely mighty misty modest "
    "neat nervous noisy odd patient plump polite pretty quick rare ripe rotten royal salty "
    "sandy secret shy silly sleepy slim sour spare stiff sticky stormy strong sturdy tame "
    "tender tidy tiny tough ugly weak wild wise worn young"
).split()
_ADJ_ALL = _ADJS + _MORE_ADJS
# More nouns with a plain "s" plural.
_THINGS = (
    "chair table door window roof wall wheel sack jar coat hat ladder fence well pond "
    "garden orchard barn mill inn shop kitchen path lane shore cloud fire kettle spoon "
    "bucket letter song map box pot pan cup plate knife book bag rug bed shed hut cap "
    "boot glove scarf coin ring clock drum flute pipe kite ball shovel hammer plank nail "
    "pillow blanket mirror lantern tent wagon sled raft oar net anchor apron arrow badge "
    "banner blade bolt bone bottle bowl brick button cabin canoe carpet castle chain cloak "
    "collar comb cottage cradle crown curtain cushion dagger desk doll drawer feather flag "
    "flower fork frame gown handle harp helmet hook horn jacket jug key lock log mask mat "
    "medal needle oven paddle pail pebble pen pencil pin pole purse quilt ribbon rock rod "
    "sail saddle scale seed shell shield shirt sign skirt slipper sock spade stool stove "
    "string sword tile tool towel toy trap tray trumpet tub tunnel vase vest whistle wing "
    "wire worm"
).split()
_NOUN_ALL = _NOUNS + _THINGS
_PLACES = (
    "mill inn shop barn kitchen garden orchard square church harbour school bakery forge yard "
    "meadow wood quarry dairy stable cellar attic hall library tower chapel pier ferry "
    "cottage farm fountain hillside lighthouse palace pasture riverbank sawmill smithy "
    "stall tannery tavern temple vineyard warehouse workshop"
).split()
_MORE_GOODS = (
    "pears plums onions butter flour oats turnips carrots herbs soap thread cabbages "
    "cherries nuts peas barley rye leeks mushrooms berries lamps boots hats ribbons "
    "almonds apricots beets chestnuts cloves corn cream dates figs garlic ginger grapes hay "
    "jam lentils lemons melons mustard olives peppers potatoes radishes raisins rice seeds "
    "silk spices sugar tea walnuts wax wheat"
).split()
_GOODS_ALL = _GOODS + _MORE_GOODS
_MORE_WEATHER = "hail thunder mist drizzle sleet".split()
_INTRANS = (
    "waited rested worked sang laughed listened slept stayed wandered hurried returned "
    "arrived waved smiled shouted whistled danced read wrote cooked prayed fished swam "
    "climbed jumped knocked nodded sighed wept yawned coughed grumbled hummed paused "
    "argued blinked bowed chuckled cried drifted frowned giggled groaned hopped howled "
    "leaned lingered marched mumbled napped paced rushed shivered shrugged skipped "
    "snored sneezed stumbled trembled whispered wobbled"
).split()
_TRANS = (
    "mended painted cleaned carried found lost kept fixed filled washed moved sold bought "
    "loaded opened closed watched followed checked fetched dropped shared emptied pulled "
    "pushed lifted hid burned covered tied polished guarded borrowed hung stacked sorted "
    "weighed traded gathered baked boiled brushed buried chased chopped collected delivered "
    "dried dug folded grabbed hammered harvested hauled kicked knitted measured mixed oiled "
    "packed peeled picked planted pressed rolled rubbed scrubbed sewed sharpened shook "
    "spilled squeezed stirred swept tasted tossed twisted wrapped"
).split()
_ADVS = "slowly quickly quietly carefully gladly early late again alone together twice happily".split()
_TIMES = (
    "at dawn", "in the morning", "at noon", "in the afternoon", "in the evening", "at night",
    "before supper", "after breakfast", "at first light", "after dark", "by midday",
    "later that day", "the next morning", "that evening", "last week", "every spring",
    "in the autumn", "in winter", "all summer", "at midnight", "before the storm", "after the harvest",
    "on the feast day", "before the market", "after the rain", "for an hour", "all day", "at sunset",
)
_OPENERS = (
    "Later", "Then", "Soon", "After a while", "Before long", "Even so", "At last", "Meanwhile",
    "Sometimes", "As usual", "By chance", "That year", "For a time", "Still",
)
_RELATIVES = "sister brother mother father aunt uncle cousin friend son daughter grandmother grandfather".split()
_MORE_JOBS = "hunter guard priest singer painter cook butcher brewer clerk porter mason dyer".split()
_CONJS = (", and then", " because", " while", ", but", " before", ", so", " after", " until")


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
