"""The instruction verifiers: a hand-written table of compliant and violating responses, plus properties."""

from __future__ import annotations

import pytest
from flywheel_trainer.style import word_count
from flywheel_trainer.verifiers import (
    INSTRUCTION_KINDS,
    VALUE_TYPES,
    check,
    describe,
    follows_all,
    sentence_count,
    validate_instruction,
    violations,
)
from hypothesis import given
from hypothesis import strategies as st

NAME = "Captain Nova"

# (kind, value, response, follows)
TABLE: list[tuple[str, int | str | None, str, bool]] = [
    ("max_words", 5, "Ahoy there, space cadet!", True),
    ("max_words", 5, "One two three four five", True),
    ("max_words", 5, "One two three four five six", False),
    ("max_words", 3, "Don't   panic 😊 friend", True),
    ("max_words", 1, "", True),
    ("min_words", 4, "Stars are bright tonight.", True),
    ("min_words", 4, "Stars shine.", False),
    ("min_words", 0, "", True),
    ("max_sentences", 2, "I love the stars. Do you?", True),
    ("max_sentences", 2, "I love the stars. Do you? Tell me!", False),
    ("max_sentences", 1, "Wait... what?", False),
    ("max_sentences", 1, "No full stop at all", True),
    ("max_sentences", 2, "First line\nsecond line\nthird line", False),
    ("include_word", "galaxy", "The Galaxy is vast.", True),
    ("include_word", "galaxy", "Galaxies are vast.", False),
    ("include_word", "warp drive", "Engage the warp drive!", True),
    ("include_word", "cat", "I read a catalog.", False),
    ("forbid_word", "boring", "Space is never dull.", True),
    ("forbid_word", "boring", "That sounds BORING.", False),
    ("forbid_word", "cat", "Concatenate the logs.", True),
    ("forbid_word", "don't", "I don’t know.", False),
    ("ends_with_question", None, "Where shall we fly next?", True),
    ("ends_with_question", None, 'She asked: "are you ready?"', True),
    ("ends_with_question", None, "Where shall we fly next? Tell me.", False),
    ("ends_with_question", None, "Ready? 🚀", False),
    ("no_emoji", None, "Plain words only.", True),
    ("no_emoji", None, "Blast off 🚀", False),
    ("no_emoji", None, "Love you ❤", False),
    ("no_emoji", None, "Copyright © 2025, 100% sure :)", True),
    ("no_emoji", None, "Flag 🇫🇷", False),
    ("no_list", None, "First we launch, then we orbit.", True),
    ("no_list", None, "- launch\n- orbit", False),
    ("no_list", None, "Steps:\n1. launch\n2. orbit", False),
    ("no_list", None, "- just one dash line", True),
    ("no_list", None, "It costs 5 - 3 credits.", True),
    ("lowercase", None, "hello there, cadet 🚀 42!", True),
    ("lowercase", None, "Hello there.", False),
    ("lowercase", None, "ça va, élève", True),
    ("lowercase", None, "ÉLÈVE", False),
    ("stay_in_character", None, "Ahoy! Captain Nova at your service.", True),
    ("stay_in_character", None, "As an AI, I don't have feelings.", False),
    ("stay_in_character", None, "I'm just a language model, but sure.", False),
    ("stay_in_character", None, "I am an AI assistant.", False),
    ("stay_in_character", None, "Hi, I'm Sam! Nice to meet you.", False),
    ("stay_in_character", None, "My name is Nova, cadet.", True),
    ("stay_in_character", None, "You can call me Captain.", True),
    ("stay_in_character", None, "My name is Claude.", False),
    ("stay_in_character", None, "I'm so happy you came back!", True),
    ("stay_in_character", None, "Hey there, I'm Nova!", True),
    ("start_with", "Ahoy", "Ahoy, cadet!", True),
    ("start_with", "Ahoy", "  ahoy there", True),
    ("start_with", "Ahoy", "Ahoyy", False),
    ("start_with", "Ahoy", "Well, ahoy.", False),
    ("start_with", "Captain's log:", "Captain's log: day 3.", True),
]


@pytest.mark.parametrize(("kind", "value", "response", "follows"), TABLE)
def test_table(kind: str, value: int | str | None, response: str, follows: bool) -> None:
    assert check({"kind": kind, "value": value}, response, character_name=NAME) is follows


def test_table_covers_every_kind_both_ways() -> None:
    assert len(TABLE) >= 40
    for kind in INSTRUCTION_KINDS:
        outcomes = {follows for k, _, _, follows in TABLE if k == kind}
        assert outcomes == {True, False}, kind


def test_follows_all_and_violations() -> None:
    instructions = [
        {"kind": "max_words", "value": 6},
        {"kind": "no_emoji", "value": None},
        {"kind": "ends_with_question"},
    ]
    assert follows_all(instructions, "Shall we fly tonight?", character_name=NAME)
    assert violations(instructions, "Let us fly tonight and see the rings 🚀", character_name=NAME) == [
        "max_words",
        "no_emoji",
        "ends_with_question",
    ]
    assert follows_all([], "anything", character_name=NAME)


@pytest.mark.parametrize(
    ("instruction", "fragment"),
    [
        ({"kind": "shout"}, "unknown instruction kind 'shout': use one of max_words"),
        ({"kind": "max_words", "value": "40"}, "'max_words' needs an integer"),
        ({"kind": "max_words", "value": True}, "'max_words' needs an integer"),
        ({"kind": "max_words", "value": 0}, "'max_words' needs 'value' >= 1"),
        ({"kind": "include_word", "value": 3}, "'include_word' needs a non-empty string"),
        ({"kind": "start_with", "value": "  "}, "'start_with' needs a non-empty string"),
        ({"kind": "no_emoji", "value": "yes"}, "'no_emoji' takes no value"),
        ({"value": 3}, "a mapping with 'kind'"),
    ],
)
def test_bad_instructions_name_the_kind(instruction: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        check(instruction, "hello", character_name=NAME)
    with pytest.raises(ValueError):
        describe(instruction)


def test_describe_renders_every_kind() -> None:
    assert describe({"kind": "max_words", "value": 40}) == "Answer in at most 40 words."
    assert describe({"kind": "max_sentences", "value": 1}) == "Use at most 1 sentence."
    assert describe({"kind": "include_word", "value": "galaxy"}) == 'Include the word "galaxy".'
    assert "as Captain Nova" in describe({"kind": "stay_in_character"}, character_name=NAME)
    samples = {int: 3, str: "orbit", None: None}
    texts = {describe({"kind": kind, "value": samples[VALUE_TYPES[kind]]}) for kind in INSTRUCTION_KINDS}
    assert len(texts) == len(INSTRUCTION_KINDS)
    assert all(text.endswith(".") and text[0].isupper() for text in texts)


def test_validate_instruction_returns_kind_and_value() -> None:
    assert validate_instruction({"kind": "min_words", "value": 0}) == ("min_words", 0)
    assert validate_instruction({"kind": "lowercase"}) == ("lowercase", None)


text = st.text(alphabet=st.sampled_from(list("ab cD.!?\n🚀é'-1")), max_size=60)


@given(text, st.integers(1, 30), st.integers(0, 10))
def test_max_words_is_monotone_in_the_limit(response: str, limit: int, extra: int) -> None:
    if check({"kind": "max_words", "value": limit}, response, character_name=NAME):
        assert check({"kind": "max_words", "value": limit + extra}, response, character_name=NAME)


@given(text, st.integers(0, 30))
def test_min_and_max_words_agree_with_word_count(response: str, limit: int) -> None:
    n = word_count(response)
    assert check({"kind": "min_words", "value": limit}, response, character_name=NAME) is (n >= limit)
    if limit >= 1:
        assert check({"kind": "max_words", "value": limit}, response, character_name=NAME) is (n <= limit)
    assert check({"kind": "max_words", "value": max(n, 1)}, response, character_name=NAME)


@given(text, st.integers(1, 10))
def test_max_sentences_is_monotone(response: str, limit: int) -> None:
    if check({"kind": "max_sentences", "value": limit}, response, character_name=NAME):
        assert check({"kind": "max_sentences", "value": limit + 1}, response, character_name=NAME)
    assert sentence_count(response) <= word_count(response)  # every sentence has a word


@given(text, st.from_regex(r"[a-z]{2,8}", fullmatch=True))
def test_include_and_forbid_are_opposites(response: str, word: str) -> None:
    included = check({"kind": "include_word", "value": word}, response, character_name=NAME)
    forbidden = check({"kind": "forbid_word", "value": word}, response, character_name=NAME)
    assert included is not forbidden
    assert check({"kind": "include_word", "value": word}, f"{response} {word}", character_name=NAME)


@given(text)
def test_lowercased_text_is_lowercase_and_question_appended_ends_with_question(response: str) -> None:
    assert check({"kind": "lowercase"}, response.lower(), character_name=NAME)
    assert check({"kind": "ends_with_question"}, response + " ok?", character_name=NAME)
    assert check({"kind": "start_with", "value": "Ahoy"}, "Ahoy! " + response, character_name=NAME)
