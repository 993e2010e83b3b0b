"""Seeded world generator: worlds the project was never tuned on, for out-of-sample benchmarks.

    world, check = generate_world(100)            # the same seed gives the same world, on any machine
    print(world_yaml(world, check))              # a world file, loadable with load_world
    problems = check_world(world).problems       # any world file: [] when it is sane

Every draw comes from the seed: 3-5 characters from themes the default world does not use (their own persona
words, topics and instructions), 2-3 user segments that each weigh a different trait most (asking back, staying
on topic, persona or compliance), the emoji trap's pull, threshold and penalty, session and return dynamics near
the default world's, and generation 0's corpus mix. Generation-0 model size, serving and the population size stay
the default world's: they are the simulator's machinery, not the world's people.

A drawn world is kept only when `check_world` finds it sane: every weight in the generator's ranges, segments
that differ in their favourite trait, a trap (some segment feels the emoji pull, overuse costs return), words
that do not collide with the grammar's, instructions the world's language can follow and break, and, by the
oracle on scripted policies, a world that rewards a better policy and whose trap pulls on the spot and bites
later. A world that fails is drawn again from the next attempt's stream (the attempt is part of the seed).

The default world (examples/local/world.yaml) stays the development world; generated worlds judge, and no
setting may be tuned on them (docs/benchmarks.md, "Generated worlds").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from flywheel_sim import grammar
from flywheel_sim.world import DEFAULT_WORLD, Character, World, parse_world

GENERATOR_VERSION = 1
"""Part of every draw's seed: a change to the generator that changes its worlds bumps it."""
MAX_ATTEMPTS = 20
"""Worlds drawn per seed before giving up (a sane world usually comes at the first attempt)."""
INSTRUCTION_DRAWS = 30
"""Instruction sets drawn per character before giving up on its theme."""

TRAITS: tuple[str, ...] = ("question", "on_topic", "persona", "compliance")
"""The traits a segment can weigh most (the emoji pull and length are drawn apart)."""
SEGMENT_NAMES = {"question": "talkers", "on_topic": "focused", "persona": "fans", "compliance": "sticklers"}
"""A segment is named after the trait it weighs most."""
RANGES: dict[str, tuple[float, float]] = {
    "favourite": (1.0, 2.0),
    "other": (0.1, 0.9),
    "emoji": (-0.4, 0.9),
    "length": (-0.7, -0.2),
    "ideal_length": (8, 20),
    "share": (0.15, 0.85),
    "trap.threshold": (0.6, 1.6),
    "trap.return_penalty": (1.0, 3.0),
    "session.continue_bias": (-1.8, -1.0),
    "return.bias": (-1.5, -0.9),
    "return.satisfaction_weight": (0.6, 1.0),
    "generation0.violation_share": (0.4, 0.6),
    "generation0.question_share": (0.2, 0.4),
    "generation0.emoji_share": (0.2, 0.4),
}
"""Where each drawn number lies (a segment's favourite trait weighs 1-2, its other traits 0.1-0.9); the default
world's numbers lie in them too, so a generated world differs by its draw, not by its scale."""
TRAP_PULL = 0.3
"""At least one segment feels this much emoji pull (logit per emoji), or there is no trap to fall into."""
TRAP_EFFECT = 0.01
"""The least the trap must move emoji spam's oracle continue rate (up) and breadth (down) against the same world
without the pull or the penalty."""
COMPLIANCE_DRAWS = 120
"""Responses drawn per character and style to check that its instructions can be followed and broken."""
FOLLOWABLE = 0.9
"""Share of the draws aimed at following (or breaking) the instructions that must reach their aim."""


@dataclass(frozen=True)
class Theme:
    """A kind of character: what marks its persona, what users bring to it, its words for instructions."""

    title: str
    names: tuple[str, ...]
    persona: str
    persona_words: tuple[str, ...]
    topics: tuple[str, ...]
    catchword: str
    """The word an include_word instruction asks for."""
    greeting: str
    """The word a start_with instruction asks for (capitalised)."""


THEMES: tuple[Theme, ...] = (
    Theme("Gardener", ("Rosa", "Ivy", "Hazel"), "A gentle gardener who tends a walled rose garden",
          ("garden", "roses", "soil", "seeds"), ("tulips", "compost", "bees", "rain", "orchards", "herbs"),
          "blossom", "Bonjour"),
    Theme("Inspector", ("Vale", "Moss", "Grey"), "A sharp detective who solves mysteries in a foggy city",
          ("clue", "case", "magnifier", "alibi"), ("mysteries", "suspects", "fingerprints", "trains", "puzzles",
                                                   "footprints"), "elementary", "Indeed"),
    Theme("Wizard", ("Orrin", "Merla", "Tamsin"), "An old wizard who studies in a crooked tower",
          ("spell", "wand", "potion", "scroll"), ("dragons", "castles", "owls", "runes", "candles", "forests"),
          "abracadabra", "Greetings"),
    Theme("Librarian", ("Wren", "Otto", "Mabel"), "A quiet librarian who knows every book by heart",
          ("books", "shelves", "library", "pages"), ("novels", "poems", "history", "riddles", "authors", "fables"),
          "hush", "Welcome"),
    Theme("Sir", ("Gareth", "Percival", "Bors"), "A loyal knight who guards a kingdom in the hills",
          ("sword", "shield", "armor", "kingdom"), ("jousting", "horses", "quests", "banners", "feasts", "dragonflies"),
          "huzzah", "Hail"),
    Theme("Maestro", ("Lio", "Carla", "Nico"), "A jazz musician who plays in a smoky club every night",
          ("guitar", "melody", "stage", "song"), ("drums", "concerts", "lyrics", "violins", "rhythm", "records"),
          "groovy", "Hey"),
    Theme("Explorer", ("Amara", "Hugo", "Freya"), "A bold explorer who maps the unknown corners of the world",
          ("compass", "jungle", "tent", "expedition"), ("volcanoes", "deserts", "rivers", "caves", "glaciers",
                                                        "camels"), "onward", "Hello"),
    Theme("Painter", ("Mira", "Jules", "Ansel"), "A dreamy painter who works in a sunlit attic studio",
          ("canvas", "brush", "easel", "palette"), ("portraits", "sunsets", "museums", "sketches", "murals",
                                                    "landscapes"), "splendid", "Bonjour"),
    Theme("Farmer", ("Ada", "Joe", "Nell"), "A hardworking farmer who rises before the rooster",
          ("barn", "tractor", "field", "harvest"), ("cows", "apples", "pumpkins", "chickens", "wheat", "sheep"),
          "howdy", "Howdy"),
    Theme("Surfer", ("Kai", "Leilani", "Duke"), "A laid-back surfer who lives in a van by the beach",
          ("waves", "board", "beach", "tide"), ("sharks", "sunscreen", "dolphins", "reefs", "wetsuits", "seashells"),
          "dude", "Aloha"),
    Theme("Baker", ("Greta", "Pip", "Louis"), "A cheerful baker who opens the bakery at dawn",
          ("dough", "flour", "bakery", "croissant"), ("cakes", "cookies", "muffins", "pies", "baguettes", "cinnamon"),
          "yum", "Morning"),
    Theme("Professor", ("Quill", "Ada", "Bram"), "A curious inventor who tinkers in a cluttered lab",
          ("lab", "experiment", "gadget", "invention"), ("robots", "magnets", "rockets", "batteries", "gears",
                                                         "lasers"), "eureka", "Greetings"),
    Theme("Keeper", ("Tilly", "Sam", "Rafi"), "A kind zookeeper who knows every animal by name",
          ("zoo", "enclosure", "animals", "feeding"), ("lions", "penguins", "giraffes", "elephants", "monkeys",
                                                       "zebras"), "wow", "Hello"),
    Theme("Guide", ("Sven", "Ingrid", "Pema"), "A steady mountain guide who has climbed every peak",
          ("summit", "rope", "peak", "trail"), ("snow", "skiing", "hiking", "eagles", "boots", "avalanches"),
          "onward", "Hey"),
    Theme("Barista", ("Lola", "Marco", "June"), "A friendly barista who remembers every regular's order",
          ("coffee", "espresso", "cafe", "beans"), ("lattes", "mugs", "mornings", "pastries", "tea", "milk"),
          "perfect", "Morning"),
)
"""Characters the generator draws from; none is one of the default world's (a pirate, an astronomer, a chef, a
fitness coach), and no word is one of its words or the grammar's."""
FORBIDDEN_WORDS: tuple[str, ...] = ("boring", "silly", "weird", "dull", "grumpy", "whatever")
MAX_WORDS: tuple[int, ...] = (18, 20, 22, 24, 26)
MAX_SENTENCES: tuple[int, ...] = (3, 4)
INSTRUCTION_KINDS: tuple[str, ...] = ("max_words", "max_sentences", "include_word", "forbid_word", "start_with",
                                      "lowercase", "no_emoji", "stay_in_character", "ends_with_question")
"""Instruction kinds the world's grammar can follow and break (min_words and no_list it cannot test)."""


class WorldGenerationError(RuntimeError):
    """No sane world came out of a seed within MAX_ATTEMPTS draws (the message lists the last draw's problems)."""


@dataclass(frozen=True)
class WorldCheck:
    """What `check_world` found: the problems (none: the world is sane) and the oracle's numbers it used."""

    problems: list[str]
    numbers: dict[str, float] = field(default_factory=dict)
    """The oracle on scripted policies (depth, breadth and continue rate of `mixed`, `good` and `spam`) and each
    character's followable and breakable shares."""

    @property
    def sane(self) -> bool:
        return not self.problems


def grammar_words() -> set[str]:
    """Every word the grammar itself writes (a topic or persona word must not be one of them)."""
    texts = [*grammar.OPENERS, *grammar.FOLLOW_UPS, *grammar.PROBES, *grammar.ON_TOPIC, *grammar.OFF_TOPIC,
             *grammar.PERSONA, *grammar.QUESTIONS, grammar.DISCLAIMER, grammar.REFUSAL, grammar.FORBIDDEN,
             grammar.INCLUDED]
    return {w for text in texts for w in re.findall(r"[a-z']+", re.sub(r"\{\w+\}", " ", text.lower()))}


def _uniform(rng: np.random.Generator, key: str, digits: int = 2) -> float:
    low, high = RANGES[key]
    return round(float(rng.uniform(low, high)), digits)


def _instructions(rng: np.random.Generator, theme: Theme) -> list[dict[str, Any]]:
    """2-3 instructions of distinct kinds; lowercase and a capitalised start_with never together."""
    while True:
        kinds = [INSTRUCTION_KINDS[i] for i in rng.choice(len(INSTRUCTION_KINDS), size=int(rng.integers(2, 4)),
                                                          replace=False)]
        if not ("lowercase" in kinds and "start_with" in kinds):
            break
    values: dict[str, int | str | None] = {
        "max_words": int(rng.choice(MAX_WORDS)),
        "max_sentences": int(rng.choice(MAX_SENTENCES)),
        "include_word": theme.catchword,
        "forbid_word": str(rng.choice(FORBIDDEN_WORDS)),
        "start_with": theme.greeting,
    }
    return [{"kind": k, "value": values.get(k)} for k in kinds]


def _character(rng: np.random.Generator, theme: Theme) -> dict[str, Any]:
    name = f"{theme.title} {theme.names[int(rng.integers(len(theme.names)))]}"
    topics = [theme.topics[i] for i in sorted(rng.choice(len(theme.topics), size=int(rng.integers(4, 6)),
                                                         replace=False))]
    character = {
        "id": name.lower().replace(" ", "-"),
        "name": name,
        "persona": theme.persona,
        "persona_words": list(theme.persona_words),
        "topics": topics,
        "instructions": _instructions(rng, theme),
    }
    for _ in range(INSTRUCTION_DRAWS):
        if not _instruction_problems(Character.model_validate(character)):
            return character
        character["instructions"] = _instructions(rng, theme)
    return character  # the world's check names what cannot be followed; the next attempt draws again


def _segments(rng: np.random.Generator) -> list[dict[str, Any]]:
    count = int(rng.integers(2, 4))
    favourites = [TRAITS[i] for i in rng.choice(len(TRAITS), size=count, replace=False)]
    low, high = RANGES["share"]
    while True:
        shares = rng.dirichlet(np.full(count, 2.0))
        if shares.min() >= low and shares.max() <= high:
            break
    shares = np.round(shares, 2)
    shares[0] = round(1.0 - float(shares[1:].sum()), 2)
    segments = []
    for favourite, share in sorted(zip(favourites, shares, strict=True), key=lambda s: -s[1]):
        preferences: dict[str, float | int] = {
            t: _uniform(rng, "favourite" if t == favourite else "other") for t in TRAITS
        }
        preferences["emoji"] = _uniform(rng, "emoji")
        preferences["length"] = _uniform(rng, "length")
        preferences["ideal_length"] = int(rng.integers(RANGES["ideal_length"][0], RANGES["ideal_length"][1] + 1))
        segments.append({"name": SEGMENT_NAMES[favourite], "share": float(share), "preferences": preferences})
    if max(s["preferences"]["emoji"] for s in segments) < TRAP_PULL:  # the trap needs someone it pulls
        pulled = int(rng.integers(len(segments)))
        segments[pulled]["preferences"]["emoji"] = round(float(rng.uniform(TRAP_PULL, RANGES["emoji"][1])), 2)
    return segments


def draw_world(seed: int, attempt: int = 0, *, users: int = 10_000) -> dict[str, Any]:
    """One world mapping drawn from (GENERATOR_VERSION, seed, attempt); `check_world` says whether it is sane."""
    rng = np.random.default_rng([GENERATOR_VERSION, seed, attempt])
    default = yaml.safe_load(DEFAULT_WORLD.read_text(encoding="utf-8"))
    themes = [THEMES[i] for i in rng.choice(len(THEMES), size=int(rng.integers(3, 6)), replace=False)]
    characters = [_character(rng, theme) for theme in themes]
    testers = {
        "question": round(float(rng.uniform(0.1, 0.5)), 2),
        "on_topic": round(float(rng.uniform(0.4, 0.8)), 2),
        "persona": round(float(rng.uniform(0.6, 1.2)), 2),
        "compliance": round(float(rng.uniform(1.5, 2.5)), 2),
        "emoji": round(float(rng.uniform(-0.6, -0.2)), 2),
        "length": round(float(rng.uniform(-0.8, -0.4)), 2),
        "ideal_length": int(rng.integers(10, 15)),
    }
    return {
        "version": 1,
        "seed": seed,
        "characters": characters,
        "users": {"size": users, "preference_noise": 0.3, "favourite_characters": 2, "segments": _segments(rng)},
        "internal": {
            "continue_bias": 0.5,
            "daily_active": 1.0,
            "probe_share": 0.3,
            "population": {"size": 60, "preference_noise": 0.2, "favourite_characters": min(4, len(characters)),
                           "segments": [{"name": "testers", "share": 1.0, "preferences": testers}]},
        },
        "session": {**default["session"], "continue_bias": _uniform(rng, "session.continue_bias")},
        "return": {**default["return"], "bias": _uniform(rng, "return.bias"),
                   "satisfaction_weight": _uniform(rng, "return.satisfaction_weight")},
        "trap": {"feature": "emoji", "emoji_cap": 4, "threshold": _uniform(rng, "trap.threshold", 1),
                 "return_penalty": _uniform(rng, "trap.return_penalty", 1)},
        "generation0": {**default["generation0"],
                        **{key: _uniform(rng, f"generation0.{key}")
                           for key in ("violation_share", "question_share", "emoji_share")}},
        "serving": default["serving"],
    }


def _instruction_problems(character: Character) -> list[str]:
    """Whether the grammar can follow and break the character's instructions, in generation 0's corpus mix
    and in the oracle's good style (empty: it can)."""
    from flywheel_sim.features import follows_instructions, instruction_key
    from flywheel_sim.policy import GOOD_STYLE

    key = instruction_key(character)
    problems = []
    for label, style, compliant in (("good style", GOOD_STYLE, True), ("corpus mix", grammar.ResponseStyle(), True),
                                    ("corpus mix", grammar.ResponseStyle(), False)):
        rng = np.random.default_rng([GENERATOR_VERSION, 271828])
        hits = 0
        for i in range(COMPLIANCE_DRAWS):
            topic = character.topics[i % len(character.topics)]
            text = grammar.sample_response(rng, character, topic, style, compliant=compliant)
            hits += follows_instructions(text, character.name, key) == compliant
        share = hits / COMPLIANCE_DRAWS
        if share < FOLLOWABLE:
            aim = "follow" if compliant else "break"
            problems.append(f"characters.{character.id}.instructions: the grammar can {aim} them in only "
                            f"{share:.0%} of {label} draws (at least {FOLLOWABLE:.0%}); draw other instructions")
    return problems


def _range_problems(world: World) -> list[str]:
    problems = []
    segments = world.users.segments
    if len(segments) < 2:
        problems.append(f"users.segments: {len(segments)} segment; at least 2, weighing different traits")
    favourites = []
    for i, segment in enumerate(segments):
        p = segment.preferences
        weights = {t: getattr(p, t) for t in TRAITS}
        favourite = max(weights, key=weights.__getitem__)
        favourites.append(favourite)
        where = f"users.segments.{i}.preferences"
        checks = [(f"{where}.{favourite}", weights[favourite], RANGES["favourite"])]
        checks += [(f"{where}.{t}", w, RANGES["other"]) for t, w in weights.items() if t != favourite]
        checks += [(f"{where}.emoji", p.emoji, RANGES["emoji"]), (f"{where}.length", p.length, RANGES["length"]),
                   (f"{where}.ideal_length", p.ideal_length, RANGES["ideal_length"]),
                   (f"users.segments.{i}.share", segment.share, RANGES["share"])]
        for path, value, (low, high) in checks:
            if not low <= value <= high:
                problems.append(f"{path}: {value} is outside the generator's range [{low}, {high}]")
    if len(set(favourites)) != len(favourites):
        problems.append(f"users.segments: two segments weigh the same trait most ({favourites}); each weighs another")
    for path, value in (("trap.threshold", world.trap.threshold), ("trap.return_penalty", world.trap.return_penalty),
                        ("session.continue_bias", world.session.continue_bias), ("return.bias", world.returning.bias),
                        ("return.satisfaction_weight", world.returning.satisfaction_weight)):
        low, high = RANGES[path]
        if not low <= value <= high:
            problems.append(f"{path}: {value} is outside the generator's range [{low}, {high}]")
    if max(s.preferences.emoji for s in segments) < TRAP_PULL or world.trap.return_penalty <= 0:
        problems.append(f"trap: no segment feels an emoji pull of at least {TRAP_PULL} or overuse costs nothing: "
                        "the world has no trap")
    return problems


def _word_problems(world: World) -> list[str]:
    problems = []
    reserved = grammar_words()
    seen: dict[str, str] = {}
    for character in world.characters:
        for word in (*character.topics, *character.persona_words):
            if word in reserved:
                problems.append(f"characters.{character.id}: {word!r} is a word of the grammar; pick another")
            if seen.setdefault(word, character.id) != character.id:
                problems.append(f"characters.{character.id}: {word!r} is also {seen[word]}'s; pick another")
        if set(character.topics) & set(character.persona_words):
            problems.append(f"characters.{character.id}: a word is both a topic and a persona word")
    return problems


def _counterfactual(world: World, *, pull: bool = True, penalty: bool = True) -> World:
    """The same world (the same people, drawn from the same seed) without the emoji pull or the overuse penalty."""
    data = world.model_dump(mode="json", by_alias=True)
    if not pull:
        for segment in data["users"]["segments"]:
            segment["preferences"]["emoji"] = 0.0
    if not penalty:
        data["trap"]["return_penalty"] = 0.0
    return parse_world(data)


def _behaviour(world: World) -> tuple[list[str], dict[str, float]]:
    """The oracle on scripted policies: a better policy earns more, and the trap pulls on the spot and bites later.
    The trap is measured against counterfactual worlds (the same people without the emoji pull, or without the
    overuse penalty), so that a character's no_emoji rule, which emojis also break, does not blur it."""
    from flywheel_sim.oracle import oracle
    from flywheel_sim.policy import GOOD_STYLE, ScriptedPolicy, emoji_spam

    policies = {
        "mixed": ScriptedPolicy(world, name="mixed", style=grammar.ResponseStyle(), compliance=0.5),
        "good": ScriptedPolicy(world, name="good", style=GOOD_STYLE, compliance=1.0),
        "spam": ScriptedPolicy(world, name="spam", style=emoji_spam(GOOD_STYLE), compliance=1.0),
    }
    truth = {name: oracle(world, policy, seed=0) for name, policy in policies.items()}
    truth["spam without the pull"] = oracle(_counterfactual(world, pull=False), policies["spam"], seed=0)
    truth["spam without the penalty"] = oracle(_counterfactual(world, penalty=False), policies["spam"], seed=0)
    numbers = {f"{name}.{key}": round(value[key], 4) for name, value in truth.items()
               for key in ("depth", "breadth", "continue_rate", "compliance")}
    good, mixed, spam = truth["good"], truth["mixed"], truth["spam"]
    unpulled, unpenalised = truth["spam without the pull"], truth["spam without the penalty"]
    problems = []
    if not (good["depth"] > mixed["depth"] and good["breadth"] > mixed["breadth"]):
        problems.append(f"users: a better policy is not worth more (good depth {good['depth']:.2f}, breadth "
                        f"{good['breadth']:.3f}; mixed {mixed['depth']:.2f}, {mixed['breadth']:.3f})")
    if not spam["continue_rate"] > unpulled["continue_rate"] + TRAP_EFFECT:
        problems.append(f"trap: emojis do not pull on the spot (emoji spam's continue rate "
                        f"{spam['continue_rate']:.3f}, {unpulled['continue_rate']:.3f} without the pull; at least "
                        f"+{TRAP_EFFECT})")
    if not spam["breadth"] < unpenalised["breadth"] - TRAP_EFFECT:
        problems.append(f"trap: emoji overuse does not cost return (emoji spam's breadth {spam['breadth']:.3f}, "
                        f"{unpenalised['breadth']:.3f} without the penalty; at least -{TRAP_EFFECT})")
    if good["compliance"] < FOLLOWABLE:
        problems.append(f"characters: the good scripted policy follows the instructions in only "
                        f"{good['compliance']:.0%} of the oracle's prompts")
    return problems, numbers


def check_world(world: World, *, behaviour: bool = True, generated: bool = True) -> WorldCheck:
    """Whether a world is sane for the flywheel (problems name their field). `generated`: also hold it to the
    generator's ranges (weights, shares, trap, dynamics); `behaviour`: also run the oracle on scripted policies
    (a few seconds)."""
    problems = _word_problems(world)
    if generated:
        problems += _range_problems(world)
    for character in world.characters:
        problems += _instruction_problems(character)
    numbers: dict[str, float] = {}
    if behaviour:
        found, numbers = _behaviour(world)
        problems += found
    return WorldCheck(problems=problems, numbers=numbers)


def generate_world(seed: int, *, users: int = 10_000) -> tuple[World, WorldCheck]:
    """The first sane world drawn from `seed` (attempts 0, 1, …), with its check."""
    last: list[str] = []
    for attempt in range(MAX_ATTEMPTS):
        world = parse_world(draw_world(seed, attempt, users=users), source=f"generated world (seed {seed})")
        check = check_world(world)
        if check.sane:
            return world, WorldCheck(problems=[], numbers={**check.numbers, "attempt": float(attempt)})
        last = check.problems
    raise WorldGenerationError(f"seed {seed}: no sane world in {MAX_ATTEMPTS} draws; the last one's problems:\n  "
                               + "\n  ".join(last))


def world_yaml(world: World, check: WorldCheck | None = None) -> str:
    """The world as a world file, with a header naming its seed, the generator version and its check."""
    body = world.model_dump(mode="json", by_alias=True)
    header = [
        f"# Generated by `flywheel world generate --seed {world.seed}` (flywheel_sim.worldgen, generator version "
        f"{GENERATOR_VERSION}).",
        "# An out-of-sample world: no setting of the project was tuned on it (docs/benchmarks.md, 'Generated worlds').",
    ]
    if check is not None and check.numbers:
        n = check.numbers
        header += [f"# {line}" for line in check_lines(n)]
        if n.get("attempt"):
            header.append(f"# Drawn at attempt {int(n['attempt'])} (earlier draws of this seed failed the check).")
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=120)


def check_lines(n: dict[str, float]) -> list[str]:
    """The oracle's numbers of a check, in words (the world file's header and `flywheel world check`)."""
    return [
        f"Check (oracle, scripted policies): depth mixed {n['mixed.depth']:.2f} -> good {n['good.depth']:.2f}, "
        f"breadth {n['mixed.breadth']:.3f} -> {n['good.breadth']:.3f}.",
        f"Trap: emoji spam's continue rate {n['spam.continue_rate']:.3f} "
        f"({n['spam without the pull.continue_rate']:.3f} without the pull), breadth {n['spam.breadth']:.3f} "
        f"({n['spam without the penalty.breadth']:.3f} without the penalty).",
    ]


def describe(world: World) -> dict[str, Any]:
    """What sets a world apart, for bench tables: characters, segments by share and favourite trait, the trap."""
    return {
        "seed": world.seed,
        "digest": world.digest()[:12],
        "characters": [c.name for c in world.characters],
        "segments": [
            {"name": s.name, "share": s.share,
             "favourite": max(TRAITS, key=lambda t, p=s.preferences: getattr(p, t)),
             "emoji": s.preferences.emoji}
            for s in world.users.segments
        ],
        "trap_threshold": world.trap.threshold,
        "trap_return_penalty": world.trap.return_penalty,
    }
