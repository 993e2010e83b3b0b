"""Style measures: emojis by grapheme, words, lists, stock phrases, questions, refusals, and their rates."""

from __future__ import annotations

import pytest
from flywheel_operator.api import StyleStats
from flywheel_trainer.style import (
    STOCK_PHRASES,
    asks_question,
    emoji_count,
    has_stock_phrase,
    is_list,
    is_refusal,
    style_stats,
    word_count,
)
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("no emojis here :) <3", 0),
        ("😊", 1),
        ("😊😊 ✨", 3),
        ("👍🏽", 1),  # skin tone modifier joins its base
        ("👨‍👩‍👧", 1),  # zero-width-joiner family
        ("🇫🇷🇯🇵", 2),  # regional-indicator pairs are flags
        ("1️⃣ #️⃣", 2),  # keycaps
        ("❤ and ❤️", 2),  # text-default hearts count in chat
        ("© ™ ↔ 2025", 0),  # text symbols without the emoji variation selector
        ("©️", 1),
        ("⭐🚀🦄🫠", 4),
        ("café naïve 日本語", 0),
    ],
)
def test_emoji_count(text: str, count: int) -> None:
    assert emoji_count(text) == count


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("hello", 1),
        ("Don't stop — it's 3 o'clock!", 5),
        ("well-known facts", 3),
        ("🚀 🚀 go", 1),
        ("naïve café, 日本", 3),
        ("  spaced   out\n\nwords ", 3),
    ],
)
def test_word_count(text: str, count: int) -> None:
    assert word_count(text) == count


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- one\n- two", True),
        ("* one\n* two\n* three", True),
        ("Here:\n1. first\n2. second", True),
        ("1) first\n2) second", True),
        ("• a\n• b", True),
        ("  - nested\n  - items", True),
        ("- only one bullet", False),
        ("a - b - c", False),
        ("I scored 10. Then 20.", False),
        ("Just prose.\nMore prose.", False),
    ],
)
def test_is_list(text: str, expected: bool) -> None:
    assert is_list(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I feel like dancing!", True),
        ("As an AI, I have no body.", True),
        ("I’m here for you, always.", True),
        ("Great question! Let's see.", True),
        ("i feel great", True),
        ("I feeling fine", False),
        ("Ahoy, cadet! Where to?", False),
        ("The AI feels odd.", False),
    ],
)
def test_has_stock_phrase(text: str, expected: bool) -> None:
    assert has_stock_phrase(text) is expected


def test_every_stock_phrase_is_detected() -> None:
    for phrase in STOCK_PHRASES:
        assert has_stock_phrase(f"Well, {phrase.lower()} indeed."), phrase


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How are you?", True),
        ("I'm fine. And you? Great.", True),
        ("???", False),
        ("No questions here.", False),
    ],
)
def test_asks_question(text: str, expected: bool) -> None:
    assert asks_question(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I can't help with that.", True),
        ("I’m sorry, but I can’t do that.", True),
        ("I cannot provide that information.", True),
        ("I must decline this request.", True),
        ("I'm not comfortable discussing that.", True),
        ("That's not something I can talk about.", True),
        ("As an AI, I cannot have opinions.", True),
        ("I'm afraid I can't go there.", True),
        ("I can't wait to hear more!", False),
        ("I can help with that!", False),
        ("Sorry I'm late, where were we?", False),
        ("I won't forget this night.", False),
    ],
)
def test_is_refusal(text: str, expected: bool) -> None:
    assert is_refusal(text) is expected


def test_style_stats() -> None:
    stats = style_stats(["Hi 😊😊", "- a\n- b", "I feel fine", "ok"])
    assert isinstance(stats, StyleStats)
    assert stats.emoji_rate == pytest.approx(0.5)
    assert stats.list_rate == pytest.approx(0.25)
    assert stats.mean_length == pytest.approx((1 + 2 + 3 + 1) / 4)
    assert stats.stock_phrase_rate == pytest.approx(0.25)


def test_style_stats_refuses_an_empty_set() -> None:
    with pytest.raises(ValueError, match="at least one response"):
        style_stats([])


@given(st.lists(st.text(max_size=40), min_size=1, max_size=8))
def test_style_stats_rates_are_bounded(responses: list[str]) -> None:
    stats = style_stats(responses)
    assert 0 <= stats.list_rate <= 1 and 0 <= stats.stock_phrase_rate <= 1
    assert stats.emoji_rate <= max(len(r) for r in responses)


@given(st.text(max_size=40), st.text(max_size=40))
def test_counts_add_over_words_separated_text(left: str, right: str) -> None:
    assert word_count(f"{left} \n {right}") == word_count(left) + word_count(right)
    assert emoji_count(left + " " + right) == emoji_count(left) + emoji_count(right)
