"""The oracle's vectorised paths (issue 29) give bit-identical figures to the per-object code they replaced: the
old formulas are kept here, not in the product code."""

from __future__ import annotations

from functools import cache

import numpy as np
from flywheel_sim import DEFAULT_WORLD, World, load_world, response_utility
from flywheel_sim.features import response_features
from flywheel_sim.people import People, build_people, react
from hypothesis import given, settings
from hypothesis import strategies as st


@cache
def _world() -> World:
    return load_world(DEFAULT_WORLD)


@cache
def _users() -> People:
    world = _world()
    return build_people(world, "user", world.seed)


def _utility_loop(world: World, character_index: int, topic: str, responses: list[str]) -> np.ndarray:
    """response_utility before issue 29: one ResponseFeatures object per (fan, response) through `react`."""
    people = build_people(world, "user", world.seed)
    fans = np.flatnonzero((people.favourites == character_index).any(axis=1))
    character = world.characters[character_index]
    features = [response_features(text, character, topic) for text in responses]
    reaction = react(world, people, np.repeat(fans, len(features)), features * len(fans))
    appeal = reaction.appeal.reshape(len(fans), len(features)).mean(axis=0)
    overuse = np.maximum(0.0, np.array([f.emojis for f in features], dtype=float) - world.trap.threshold)
    return appeal - world.trap.return_penalty * overuse


def _responses(character_index: int, topic: str) -> st.SearchStrategy[list[str]]:
    character = _world().characters[character_index]
    words = st.sampled_from([topic, *character.persona_words, character.name, "sorry", "the", "you", "I", "can't"])
    marks = st.sampled_from(["", "?", "!", ".", " 😀", " 🎉🎉", " 😀😀😀😀"])
    sentence = st.builds(lambda ws, m: " ".join(ws) + m, st.lists(words, min_size=0, max_size=40), marks)
    return st.lists(st.builds(" ".join, st.lists(sentence, min_size=1, max_size=4)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_response_utility_is_the_per_object_formula(data) -> None:
    world = _world()
    ci = data.draw(st.integers(0, len(world.characters) - 1))
    topic = data.draw(st.sampled_from(world.characters[ci].topics))
    responses = data.draw(_responses(ci, topic))
    expected = _utility_loop(world, ci, topic, responses)
    assert np.array_equal(response_utility(world, ci, topic, responses), expected)
    assert np.array_equal(response_utility(world, ci, topic, responses, people=_users()), expected)
