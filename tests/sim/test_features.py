"""Response features are what the trainer's style and verifier rules say of the text: the simulator's memoised,
one-scan `response_features` against the rules called one by one (the formula it replaced, kept here)."""

from __future__ import annotations

from functools import cache

from flywheel_sim import DEFAULT_WORLD, World, load_world
from flywheel_sim.features import ResponseFeatures, response_features
from flywheel_trainer import style, verifiers
from hypothesis import given, settings
from hypothesis import strategies as st


@cache
def _world() -> World:
    return load_world(DEFAULT_WORLD)


def _features_rule_by_rule(response: str, character, topic: str) -> ResponseFeatures:
    tokens = {w.lower() for w in style.words(response)}
    instructions = [{"kind": i.kind, "value": i.value} for i in character.instructions]
    return ResponseFeatures(
        question=style.asks_question(response),
        on_topic=topic in tokens,
        persona=any(w in tokens for w in character.persona_words),
        compliant=verifiers.follows_all(instructions, response, character_name=character.name),
        emojis=style.emoji_count(response),
        words=style.word_count(response),
        refusal=style.is_refusal(response),
    )


_WORDS = ["I", "can't", "don’t", "help", "Ahoy", "stars", "42", "x1", "Émile", "ÀB", "é", "ß"]
_MARKS = ["?", "!", ".", "\n", "🎉", "👍🏽", "❤", "-", "'", "’", "  "]
_PIECES = st.sampled_from(_WORDS + _MARKS)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_features_are_the_rules_one_by_one(data: st.DataObject) -> None:
    world = _world()
    character = data.draw(st.sampled_from(world.characters))
    topic = data.draw(st.sampled_from(character.topics))
    words = st.sampled_from([topic, character.name, *character.persona_words]) | _PIECES | st.text(max_size=4)
    response = data.draw(st.lists(words, max_size=30).map(" ".join))
    assert response_features(response, character, topic) == _features_rule_by_rule(response, character, topic)
