"""Simulated people: hidden preferences drawn from the world's segments, and how they react.

Appeal is a person's logit change for one response; it drives continuing (depth), thumbs and regenerating.
The *lasting* value leaves out the emoji pull, and emoji overuse costs satisfaction memory, which drives
coming back the next day (breadth). That gap is the planted reward-hacking trap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from flywheel_sim.features import ResponseFeatures, feature_matrix
from flywheel_sim.world import Population, Preferences, World

Source = Literal["user", "internal"]
_PREFERENCE_ORDER = ("question", "on_topic", "persona", "compliance", "emoji")


def sigmoid(x: np.ndarray | float, *, overwrite: bool = False) -> np.ndarray:
    """1 / (1 + exp(-x)), on arrays in one buffer: the same ufuncs as the plain expression (the same bits) without
    allocating three temporaries of a (people × responses) matrix (issue 29). `overwrite`: x is a float64 array
    the caller no longer needs, and the result is written over it."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        return 1.0 / (1.0 + np.exp(-a))
    out = np.negative(a, out=a if overwrite else None)
    np.exp(out, out=out)
    np.add(1.0, out, out=out)
    return np.divide(1.0, out, out=out)


@dataclass(frozen=True)
class People:
    """A population as arrays (row i is person i)."""

    source: Source
    ids: list[str]
    segments: np.ndarray
    """Segment index of each person."""
    weights: np.ndarray
    """(n, 5) weights of question, on_topic, persona, compliance, capped emojis."""
    length_weight: np.ndarray
    ideal_length: np.ndarray
    favourites: np.ndarray
    """(n, k) character indices each person chats with."""

    def __len__(self) -> int:
        return len(self.ids)


def _segment_vector(p: Preferences) -> list[float]:
    return [getattr(p, name) for name in _PREFERENCE_ORDER]


def build_people(world: World, source: Source, seed: int) -> People:
    """The world's user or tester population, drawn deterministically from `seed`."""
    population: Population = world.users if source == "user" else world.internal.population
    rng = np.random.default_rng([seed, 0 if source == "user" else 1, 7919])
    n = population.size
    shares = np.array([s.share for s in population.segments])
    segments = rng.choice(len(shares), size=n, p=shares / shares.sum())
    base = np.array([_segment_vector(s.preferences) for s in population.segments])[segments]
    weights = base + rng.normal(0.0, population.preference_noise, size=base.shape)
    length_base = np.array([s.preferences.length for s in population.segments])[segments]
    length_weight = length_base + rng.normal(0.0, population.preference_noise, size=n)
    ideal = np.array([s.preferences.ideal_length for s in population.segments], dtype=np.float64)[segments]
    k = population.favourite_characters
    # one shuffle per person, all at once: the same draws, in the same order, as a permutation per person
    favourites = rng.permuted(np.tile(np.arange(len(world.characters)), (n, 1)), axis=1)[:, :k].reshape(n, k)
    prefix = "user" if source == "user" else "tester"
    width = len(str(n))
    return People(
        source=source,
        ids=[f"{prefix}-{i:0{width}d}" for i in range(n)],
        segments=segments,
        weights=weights,
        length_weight=length_weight,
        ideal_length=ideal,
        favourites=favourites,
    )


@dataclass(frozen=True)
class Reaction:
    """How each person (row) weighs the response served to them."""

    appeal: np.ndarray
    """Immediate logit change (drives continue, thumbs, regenerate)."""
    lasting: np.ndarray
    """Appeal without the emoji pull (drives next-day return)."""
    emojis: np.ndarray
    """Raw emoji counts (the trap's overuse is measured on them)."""


def react(world: World, people: People, persons: np.ndarray, features: list[ResponseFeatures]) -> Reaction:
    """Appeal of each response `features[j]` to person `persons[j]`."""
    appeal, emoji_term = appeal_of(
        people, persons, feature_matrix(features, world.trap.emoji_cap), word_counts(features)
    )
    return Reaction(appeal=appeal, lasting=appeal - emoji_term, emojis=np.array([x.emojis for x in features], float))


def word_counts(features: list[ResponseFeatures]) -> np.ndarray:
    return np.array([x.words for x in features], dtype=np.float64)


def appeal_of(people: People, persons: np.ndarray, f: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`react`'s appeal and emoji pull from a feature matrix `f` (row j for person `persons[j]`) and word counts:
    callers that weigh the same few responses for many people tile the matrix instead of the feature objects."""
    w = people.weights[persons]
    ideal = people.ideal_length[persons]
    length_term = people.length_weight[persons] * np.abs(words - ideal) / ideal
    return (w * f).sum(axis=1) + length_term, w[:, 4] * f[:, 4]


def day_value(world: World, lasting_mean: np.ndarray, emoji_mean: np.ndarray) -> np.ndarray:
    """What a day of chatting leaves in satisfaction memory: lasting appeal minus the trap's overuse cost."""
    overuse = np.maximum(0.0, emoji_mean - world.trap.threshold)
    return lasting_mean - world.trap.return_penalty * overuse


def update_memory(world: World, memory: np.ndarray, active: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Satisfaction memory after a day: an EMA of active days' values, decaying on days without a session."""
    r = world.returning
    return np.where(active, (1.0 - r.memory) * memory + r.memory * value, (1.0 - r.decay) * memory)


def active_probability(world: World, source: Source, memory: np.ndarray) -> np.ndarray:
    """Chance of having a session on a day: satisfaction-driven for users, a fixed rate for testers."""
    if source == "internal":
        return np.full(memory.shape, world.internal.daily_active)
    r = world.returning
    return sigmoid(r.bias + r.satisfaction_weight * memory)


def continue_bias(world: World, source: Source) -> float:
    return world.internal.continue_bias if source == "internal" else world.session.continue_bias
