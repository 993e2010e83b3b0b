"""The simulator's draws over people are vectorised (issue 29) without changing a single draw: each vectorised
path gives what the per-person loop it replaced gave, and leaves the generator where the loop left it, so every
later draw (and the seeded logs of every run) is unchanged."""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import yaml
from flywheel_sim import DEFAULT_WORLD, World, parse_world
from flywheel_sim.people import build_people
from flywheel_sim.traffic import _session_draws
from hypothesis import given, settings
from hypothesis import strategies as st


def _favourites_loop(rng: np.random.Generator, n: int, characters: int, k: int) -> np.ndarray:
    """build_people's favourites before issue 29: one permutation per person."""
    return np.array([rng.permutation(characters)[:k] for _ in range(n)]).reshape(n, k)


def _session_loop(rng: np.random.Generator, favourites: np.ndarray, topic_counts: list[int], persons: np.ndarray):
    """next_day's session set-up before issue 29: per active person, a favourite, then one of its topics."""
    choices, topics = [], []
    for person in persons:
        choice = favourites[person][int(rng.integers(favourites.shape[1]))]
        choices.append(int(choice))
        topics.append(int(rng.integers(topic_counts[int(choice)])))
    return choices, topics


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), characters=st.integers(1, 9), data=st.data())
def test_favourites_are_the_per_person_permutations(seed: int, n: int, characters: int, data) -> None:
    k = data.draw(st.integers(1, characters))
    loop, vectorised = np.random.default_rng(seed), np.random.default_rng(seed)
    expected = _favourites_loop(loop, n, characters, k)
    got = vectorised.permuted(np.tile(np.arange(characters), (n, 1)), axis=1)[:, :k].reshape(n, k)
    assert np.array_equal(got, expected)
    assert loop.random() == vectorised.random()  # the generator is left in the same state


def test_build_people_is_unchanged_on_the_default_world(world: World) -> None:
    people = build_people(world, "user", world.seed)
    rng = np.random.default_rng([world.seed, 0, 7919])
    n, k = world.users.size, world.users.favourite_characters
    shares = np.array([s.share for s in world.users.segments])
    segments = rng.choice(len(shares), size=n, p=shares / shares.sum())
    rng.normal(0.0, world.users.preference_noise, size=(n, 5))
    rng.normal(0.0, world.users.preference_noise, size=n)
    assert np.array_equal(people.segments, segments)
    assert np.array_equal(people.favourites, _favourites_loop(rng, n, len(world.characters), k))


@cache
def _default_data() -> dict:
    return yaml.safe_load(DEFAULT_WORLD.read_text())


def _world(topic_counts: list[int]) -> World:
    world_data = copy.deepcopy(_default_data())
    world_data["users"]["size"] = 200
    characters = world_data["characters"][: len(topic_counts)]
    for index, (character, count) in enumerate(zip(characters, topic_counts, strict=True)):
        character["topics"] = [f"topic{chr(97 + index)}{chr(97 + i)}" for i in range(count)]
    world_data["characters"] = characters
    world_data["users"]["favourite_characters"] = min(world_data["users"]["favourite_characters"], len(characters))
    world_data["internal"]["population"]["favourite_characters"] = min(
        world_data["internal"]["population"]["favourite_characters"], len(characters))
    return parse_world(world_data)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), topic_counts=st.lists(st.integers(2, 7), min_size=1, max_size=4),
       active=st.lists(st.booleans(), min_size=0, max_size=120))
def test_session_draws_are_the_per_person_loop(seed: int, topic_counts: list[int], active: list[bool]) -> None:
    """Equal topic counts take the vectorised path, unequal ones the loop: both give the loop's draws."""
    world = _world(topic_counts)
    people = build_people(world, "user", world.seed)
    persons = np.flatnonzero(np.array(active, dtype=bool))
    loop, vectorised = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
    expected = _session_loop(loop, people.favourites, topic_counts, persons)
    choices, topics = _session_draws(vectorised, people, world, persons)
    assert [int(c) for c in choices] == expected[0] and [int(t) for t in topics] == expected[1]
    assert loop.random() == vectorised.random()
