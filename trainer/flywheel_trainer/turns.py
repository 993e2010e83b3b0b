"""From conversations to training units: assistant turns with their context, and preference pairs from
engagement (a response the user continued or thumbed up vs one they regenerated away or left).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flywheel_trainer.conversation import label_response, to_chat
from flywheel_trainer.style import emoji_count, word_count

MAX_PAIRS_PER_CONTEXT = 4
"""Default cap on pairs built from one context (settings.curate.maxPairsPerContext), so a popular opening does
not dominate the reward model's data."""


@dataclass(frozen=True)
class Turn:
    """One served assistant response in its context."""

    context: list[dict[str, str]]
    """The chat up to (not including) the response: system prompt, then user/assistant messages."""
    response: str
    continued: bool
    thumb: str | None
    label: str | None
    """How the user judged the response (conversation.label_response): `chosen`, `rejected` or None."""
    rejected: tuple[str, ...]
    """Earlier candidates for this turn that the user regenerated away."""
    character: Mapping[str, Any]
    source: str
    conversation_id: str
    day: int

    @property
    def context_key(self) -> str:
        return context_key(self.context)

    @property
    def liked(self) -> bool:
        return self.label == "chosen"

    @property
    def disliked(self) -> bool:
        return self.label == "rejected"


def context_key(context: list[dict[str, str]]) -> str:
    """A digest of a chat context (roles and whitespace-normalised, case-folded contents)."""
    canonical = [[m["role"], " ".join(m["content"].split()).lower()] for m in context]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


def conversation_text(record: Mapping[str, Any]) -> str:
    """The user and assistant text of a conversation (what near-duplicate detection compares)."""
    return "\n".join(m["content"] for m in record["messages"] if m["role"] != "system")


def _answered(messages: list[Mapping[str, Any]]) -> Iterable[int]:
    """Indices of the assistant messages that answer a user message."""
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and index > 0 and messages[index - 1]["role"] == "user":
            yield index


def opening_key(record: Mapping[str, Any]) -> str | None:
    """The context key of a conversation's first answered prompt (None when nothing was answered), without
    building every turn."""
    first = next(iter(_answered(record["messages"])), None)
    return None if first is None else context_key(to_chat(record, first))


def assistant_turns(record: Mapping[str, Any]) -> list[Turn]:
    """Every assistant turn of a conversation that follows a user message."""
    turns = []
    messages = record["messages"]
    for index in _answered(messages):
        message = messages[index]
        signals = message.get("signals") or {}
        turns.append(
            Turn(
                context=to_chat(record, index),
                response=message["content"],
                continued=bool(signals.get("continued", False)),
                thumb=signals.get("thumb"),
                label=label_response(message),
                rejected=tuple(message.get("rejected") or ()),
                character=record["character"],
                source=record["source"],
                conversation_id=record["conversation_id"],
                day=int(record["day"]),
            )
        )
    return turns


@dataclass(frozen=True)
class Pair:
    turn: Turn
    chosen: str
    rejected: str


def engagement_pairs(turns: Iterable[Turn], max_per_context: int = MAX_PAIRS_PER_CONTEXT) -> list[Pair]:
    """Preference pairs that share a context: a liked response vs a regenerated-away candidate of the same turn,
    and liked vs disliked responses served for the same context in different conversations."""
    pairs: list[Pair] = []
    seen: set[tuple[str, str, str]] = set()
    by_context: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        by_context[turn.context_key].append(turn)
    for key, group in by_context.items():
        candidates: list[tuple[Turn, str, str]] = []
        liked = [t for t in group if t.liked]
        for turn in liked:
            candidates.extend((turn, turn.response, other) for other in turn.rejected)
        for good in liked:
            candidates.extend((good, good.response, bad.response) for bad in group if bad.disliked)
        kept = 0
        for turn, chosen, rejected in candidates:
            if kept == max_per_context:
                break
            if chosen.strip() == rejected.strip() or (key, chosen, rejected) in seen:
                continue
            seen.add((key, chosen, rejected))
            pairs.append(Pair(turn, chosen, rejected))
            kept += 1
    return pairs


def pair_filter_reason(pair: Pair, *, max_length_ratio: float, max_emoji_difference: int) -> str | None:
    """Why a pair is dropped (`length_ratio`, `emoji_difference`), or None to keep it: the report filters pairs
    on length and emoji differences so the reward model cannot learn those shortcuts."""
    lengths = sorted((word_count(pair.chosen), word_count(pair.rejected)))
    if lengths[1] > max_length_ratio * max(lengths[0], 1):
        return "length_ratio"
    if abs(emoji_count(pair.chosen) - emoji_count(pair.rejected)) > max_emoji_difference:
        return "emoji_difference"
    return None
