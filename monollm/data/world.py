"""The built-in corpus's fixed world and its lexicon (used by monollm.data.corpus).

The world (towns, rivers, trades, people) and its facts are built from their own fixed seed,
not from the seed passed to corpus.generate(): facts must stay the same for every corpus, or a
model trained on one seed and evaluated on another would see contradictions. Each fact has one
wording (`_town_facts`, `_person_fact`), which the downstream tasks rely on. The lexicon around
the facts is in separate lists, so the world's own lists (which order_chains indexes) stay as
they are.
"""

from __future__ import annotations

import random

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
# world is drawn from them, and monollm.evaluation.order_chains and monollm.evaluation.downstream read them) ---
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
