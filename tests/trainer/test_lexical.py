"""flywheel_trainer.lexical: the reward models' lexical head learns persona and topic from noisy preferences.

The data are the simulated world's own language (flywheel_sim.grammar): responses that do or do not stay on the
user's topic and use the character's persona words, labelled by a hidden utility through Bradley–Terry noise (pairs)
or Bernoulli draws with a per-character base rate (user signals), as the simulated users label them. The head
must order fresh pairs that differ only in persona or only in topic as the utility does.
"""

from __future__ import annotations

import numpy as np
import pytest
from flywheel_sim import DEFAULT_WORLD, World, load_world, system_message
from flywheel_sim.features import response_features
from flywheel_sim.grammar import OPENERS, ResponseStyle, compose_response
from flywheel_trainer.lexical import LexicalModel, Vocabulary, features, fit_labels, fit_pairs, tokens
from hypothesis import given, settings
from hypothesis import strategies as st

WEIGHTS = {"on_topic": 1.0, "persona": 1.0, "question": 0.6}
STYLE = ResponseStyle(on_topic=0.5, persona=0.5, question=0.3, emoji=0.0, slip=0.0)


@pytest.fixture(scope="module")
def world() -> World:
    return load_world(DEFAULT_WORLD)


def _utility(world, ci: int, topic: str, text: str) -> float:
    f = response_features(text, world.characters[ci], topic)
    return sum(w * float(getattr(f, name)) for name, w in WEIGHTS.items())


def _contexts(world, rng: np.random.Generator, n: int) -> list[tuple[int, str, list[dict[str, str]]]]:
    out = []
    for _ in range(n):
        ci = int(rng.integers(len(world.characters)))
        c = world.characters[ci]
        topic = c.topics[int(rng.integers(len(c.topics)))]
        opener = OPENERS[int(rng.integers(len(OPENERS)))]
        out.append((ci, topic, [{"role": "system", "content": system_message(c)},
                                {"role": "user", "content": opener.format(topic=topic)}]))
    return out


def _pairs(world, rng: np.random.Generator, n: int) -> list[tuple]:
    """(prompt, a, b, utility a − utility b, ci, topic) for n contexts, two responses each."""
    rows = []
    for ci, topic, prompt in _contexts(world, rng, n):
        a, b = (compose_response(rng, world.characters[ci], topic, STYLE) for _ in range(2))
        rows.append((prompt, a, b, _utility(world, ci, topic, a) - _utility(world, ci, topic, b), ci, topic))
    return rows


def _differs_only_in(world, row: tuple, trait: str) -> bool:
    _, a, b, _, ci, topic = row
    fa, fb = (response_features(t, world.characters[ci], topic) for t in (a, b))
    return all((getattr(fa, t) != getattr(fb, t)) == (t == trait) for t in WEIGHTS)


def _agreement(head: LexicalModel, rows: list[tuple]) -> float:
    margin = head.score([r[0] for r in rows], [r[1] for r in rows]) - head.score([r[0] for r in rows],
                                                                                   [r[2] for r in rows])
    gaps = np.array([r[3] for r in rows])
    return float(np.mean(np.sign(margin) == np.sign(gaps)))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_head_learns_persona_and_topic_from_noisy_preference_pairs(world, seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = [r for r in _pairs(world, rng, 2500) if r[3] != 0]
    prefer_a = rng.random(len(train)) < 1.0 / (1.0 + np.exp(-np.array([r[3] for r in train])))
    # the labels are noisy: a quarter or more of them disagree with the utility
    assert np.mean(prefer_a == (np.array([r[3] for r in train]) > 0)) < 0.76
    head = fit_pairs([r[0] for r in train], [r[1] if p else r[2] for r, p in zip(train, prefer_a, strict=True)],
                     [r[2] if p else r[1] for r, p in zip(train, prefer_a, strict=True)])
    fresh = [r for r in _pairs(world, np.random.default_rng(100 + seed), 3000) if r[3] != 0]
    assert _agreement(head, fresh) > 0.85
    for trait in ("persona", "on_topic"):
        only = [r for r in fresh if _differs_only_in(world, r, trait)]
        assert len(only) >= 50, trait
        assert _agreement(head, only) > 0.8, trait


def test_the_head_learns_within_context_from_user_signals_with_base_rates(world) -> None:
    """p(continue) also depends on the character (a base rate per context): the head's context columns absorb
    it, and its response columns order two answers to the same prompt as the utility does."""
    rng = np.random.default_rng(3)
    base = {ci: rng.normal(0.0, 1.0) for ci in range(len(world.characters))}
    prompts, responses, labels = [], [], []
    for ci, topic, prompt in _contexts(world, rng, 5000):
        text = compose_response(rng, world.characters[ci], topic, STYLE)
        p = 1.0 / (1.0 + np.exp(-(base[ci] - 1.0 + _utility(world, ci, topic, text))))
        prompts.append(prompt)
        responses.append(text)
        labels.append(int(rng.random() < p))
    head = fit_labels(prompts, responses, labels)
    fresh = [r for r in _pairs(world, np.random.default_rng(7), 2000) if r[3] != 0]
    assert _agreement(head, fresh) > 0.8
    for trait in ("persona", "on_topic"):
        assert _agreement(head, [r for r in fresh if _differs_only_in(world, r, trait)]) > 0.75, trait


def test_the_columns_read_echoed_rare_words_and_the_characters_own_words() -> None:
    def chat(system: str, *users: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": system}, *({"role": "user", "content": u} for u in users)]

    prompts = [chat("You are Rex.", f"tell me about {t}.") for t in ("maps", "storms", "islands", "treasure")] + [
        chat("You are Luna.", f"tell me about {t}.") for t in ("stars", "comets", "planets", "night")]
    answers = ["Maps and ships, matey!", "the sea and ships", "ships ahoy", "islands are nice",
               "stars and the moon", "moon and stars", "the moon shines", "night is dark"]
    vocabulary = Vocabulary.build(prompts, answers)
    assert vocabulary.common == {"tell", "me", "about"}  # in every user message: not a topic
    rex = chat("You are Rex.", "storms please", "Tell me about MAPS.")
    values = features(rex, "Maps and storms are fun, ships of the sea 🎉?", vocabulary)
    assert values["echo_count"] == 1.0 and values["echo_rare"] == 1.0  # "maps"; "storms" was asked earlier
    assert values["character_words"] == 1.0  # "ships" is Rex's own word ("sea" is not used often enough)
    assert values["question_mark"] == 1.0 and values["words_10"] == pytest.approx(0.9)
    assert values["turn:2"] == 1.0
    luna = chat("You are Luna.", "tell me about the moon")
    assert features(luna, "Maps and storms are fun, ships of the sea 🎉?", vocabulary)["character_words"] == 0.0
    assert features(luna, "tell me about the moon", vocabulary)["character_words"] == 0.0  # the user said "moon"
    assert features(luna, "tell me about", vocabulary)["echo_rare"] == 0.0  # only common words echoed


@given(st.text(max_size=60), st.text(max_size=60))
@settings(max_examples=100)
def test_a_saved_head_scores_as_the_fitted_one(said: str, asked: str) -> None:
    prompt = [{"role": "system", "content": "You are Rex."}, {"role": "user", "content": asked}]
    character = next(k for k in features(prompt, "") if k.startswith("sys:")).removeprefix("sys:")
    vocabulary = Vocabulary(frozenset({"about"}), {character: frozenset({"ship"})})
    head = LexicalModel(["question_mark", "echo_count", "echo_rare", "character_words", "words_10", "turn:1"],
                        [1.0, 0.5, 0.25, 2.0, 0.1, -3.0], bias=-0.25, ridge=0.01, vocabulary=vocabulary)
    again = LexicalModel.from_json(head.to_json())
    values = features(prompt, said, vocabulary)
    expected = -0.25 - 3.0 + sum(w * values[c] for c, w in zip(head.columns[:5], head.weights[:5], strict=True))
    assert again.score([prompt], [said])[0] == pytest.approx(expected)
    assert values["character_words"] == float("ship" in tokens(said) and "ship" not in tokens(asked))
