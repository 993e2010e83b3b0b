"""Response features that simulated people react to, computed from the response text alone.

The same rules the trainer uses (flywheel_trainer.style and .verifiers) measure them, so anything training
changes in the text (asking back, staying on topic, compliance, emojis, length) really moves engagement.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flywheel_trainer import style, verifiers

from flywheel_sim.world import Character


@dataclass(frozen=True)
class ResponseFeatures:
    """What a response shows, before any person's preferences weigh it."""

    question: bool
    """Asks the user something back."""
    on_topic: bool
    """Mentions the topic of the user's last message."""
    persona: bool
    """Uses one of the character's persona words."""
    compliant: bool
    """Follows every character instruction (flywheel_trainer.verifiers.follows_all)."""
    emojis: int
    """Emoji count (flywheel_trainer.style.emoji_count)."""
    words: int
    """Word count (flywheel_trainer.style.word_count)."""
    refusal: bool
    """Refuses the request (flywheel_trainer.style.is_refusal); every simulated prompt is benign."""


def response_features(response: str, character: Character, topic: str) -> ResponseFeatures:
    """Features of one response of `character` to a user message about `topic`."""
    return _features(response, character.name, tuple(character.persona_words), instruction_key(character), topic)


def instruction_key(character: Character) -> tuple[tuple[str, int | str | None], ...]:
    """The character's instructions as a hashable value (for memoised checks)."""
    return tuple((i.kind, i.value) for i in character.instructions)


@lru_cache(maxsize=262_144)
def follows_instructions(response: str, name: str, instructions: tuple[tuple[str, int | str | None], ...]) -> bool:
    """flywheel_trainer.verifiers.follows_all, memoised: a small language repeats its sentences a lot."""
    return verifiers.follows_all(
        [{"kind": kind, "value": value} for kind, value in instructions], response, character_name=name
    )


@lru_cache(maxsize=262_144)
def _features(
    response: str,
    name: str,
    persona_words: tuple[str, ...],
    instructions: tuple[tuple[str, int | str | None], ...],
    topic: str,
) -> ResponseFeatures:
    found = style.words(response)  # style.word_count counts these: one scan of the text for both
    tokens = {w.lower() for w in found}
    return ResponseFeatures(
        question=style.asks_question(response),
        on_topic=topic in tokens,
        persona=any(w in tokens for w in persona_words),
        compliant=follows_instructions(response, name, instructions),
        emojis=style.emoji_count(response),
        words=len(found),
        refusal=style.is_refusal(response),
    )


def feature_matrix(features: list[ResponseFeatures], emoji_cap: int) -> np.ndarray:
    """Rows of (question, on_topic, persona, compliance, capped emojis) for vectorised appeal."""
    return np.array(
        [[f.question, f.on_topic, f.persona, f.compliant, min(f.emojis, emoji_cap)] for f in features],
        dtype=np.float64,
    ).reshape(len(features), 5)
