"""The oracle's vectorised paths (issue 29) give bit-identical figures to the per-object code they replaced: the
old formulas are kept here, not in the product code."""

from __future__ import annotations

from functools import cache

import numpy as np
from flywheel_sim import DEFAULT_WORLD, World, load_world, response_utility
from flywheel_sim.features import feature_matrix, response_features
from flywheel_sim.oracle import _expected_session, _one_thread_product
from flywheel_sim.people import People, build_people, continue_bias, react, sigmoid
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


@given(
    x=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=50),
    shape=st.sampled_from([(-1,), (1, -1)]),
)
def test_sigmoid_is_the_plain_expression(x: list[float], shape: tuple[int, ...]) -> None:
    a = np.array(x, dtype=np.float64).reshape(shape)
    before = a.copy()
    with np.errstate(over="ignore"):
        expected = 1.0 / (1.0 + np.exp(-a))
        got = sigmoid(a)
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.array_equal(a, before, equal_nan=True)  # the input is left alone
    with np.errstate(over="ignore"):
        assert np.array_equal(sigmoid(a, overwrite=True), expected, equal_nan=True)


def test_sigmoid_of_a_scalar_is_a_scalar() -> None:
    assert sigmoid(0.25) == 1.0 / (1.0 + np.exp(-np.float64(0.25)))
    assert np.ndim(sigmoid(0.25)) == 0


def _expected_session_loop(world: World, people: People, features: list, source: str) -> dict:
    """_expected_session before issue 29 (plain sigmoid, a temporary per product)."""

    def plain_sigmoid(x):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))

    f = feature_matrix(features, world.trap.emoji_cap)
    words = np.array([x.words for x in features], dtype=np.float64)
    emojis = np.array([x.emojis for x in features], dtype=np.float64)
    ideal = people.ideal_length[:, None]
    appeal = people.weights @ f.T + people.length_weight[:, None] * np.abs(words[None, :] - ideal) / ideal
    lasting = appeal - people.weights[:, 4:5] * f[None, :, 4]
    regen = plain_sigmoid(world.session.regenerate_bias - appeal)
    keep = 1.0 - regen

    def after_regeneration(x: np.ndarray) -> np.ndarray:
        return (keep * x).mean(axis=1) + regen.mean(axis=1) * x.mean(axis=1)

    return {
        "continue": after_regeneration(plain_sigmoid(continue_bias(world, source) + appeal)),
        "lasting": after_regeneration(lasting),
        "emojis": after_regeneration(np.broadcast_to(emojis, appeal.shape)),
        "thumb_up": after_regeneration(plain_sigmoid(world.session.thumb_bias + appeal)),
    }


@settings(max_examples=30, deadline=None)
@given(data=st.data(), source=st.sampled_from(["user", "internal"]))
def test_expected_session_is_the_plain_formula(data, source: str) -> None:
    world = _world()
    people = _users() if source == "user" else build_people(world, "internal", world.seed)
    ci = data.draw(st.integers(0, len(world.characters) - 1))
    topic = data.draw(st.sampled_from(world.characters[ci].topics))
    features = [response_features(t, world.characters[ci], topic) for t in data.draw(_responses(ci, topic))]
    expected = _expected_session_loop(world, people, features, source)
    got = _expected_session(world, people, features, source)
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 12_000),
    m=st.integers(0, 130),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    cap=st.integers(1, 5),
)
def test_one_thread_product_is_the_plain_product(n: int, m: int, seed: int, scale: float, cap: int) -> None:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n, 5)) * scale
    f = np.concatenate([rng.integers(0, 2, size=(m, 4)), rng.integers(0, cap + 1, size=(m, 1))], axis=1).astype(float)
    assert np.array_equal(_one_thread_product(weights, f.T), weights @ f.T)
