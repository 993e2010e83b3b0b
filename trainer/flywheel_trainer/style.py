"""Style artifacts of chat responses: emojis, lists, length, stock phrases, questions, refusals.

The report tracks these for chosen vs rejected pairs and across SFT → DPO → RL because reward models learn
surface shortcuts (V12: emoji use +238.5 % while engagement fell). Every measure here is a rule, so the
curate filters, the offline gate and the simulator count the same thing. Pure functions, no model.
"""

from __future__ import annotations

from collections.abc import Iterable

import regex
from flywheel_operator.api import StyleStats

__all__ = [
    "REFUSAL_PATTERNS",
    "STOCK_PHRASES",
    "asks_question",
    "emoji_count",
    "has_stock_phrase",
    "is_list",
    "is_refusal",
    "style_stats",
    "word_count",
    "words",
]

# One user-perceived character (grapheme cluster): a ZWJ family, a flag or a skin-toned hand is one emoji.
_GRAPHEME = regex.compile(r"\X")
_PRESENTED = regex.compile(r"\p{Emoji_Presentation}")
# Text-default pictographs ("❤", "☺", "✔", "☀") count when they sit in the Miscellaneous Symbols and Dingbats
# blocks (U+2600–U+27BF), where chat users type them as emojis; "©", "™" or "↔" count only with U+FE0F.
_CHAT_PICTOGRAPH = regex.compile(r"[\u2600-\u27BF&&\p{Extended_Pictographic}]", flags=regex.V1)
_EMOJI_VARIATION = regex.compile(r"[^\x00-\x7F&&\p{Emoji}]\uFE0F|\u20E3", flags=regex.V1)

# A word: letters or digits, inner apostrophes kept ("don't" is one word). Emojis and punctuation are none.
_WORD = regex.compile(r"[\p{L}\p{N}]+(?:['’][\p{L}\p{N}]+)*")

_LIST_ITEM = regex.compile(r"^[ \t]*(?:[-*+•●▪–]|\d{1,3}[.)]|[a-zA-Z][.)])[ \t]+\S", flags=regex.MULTILINE)
_QUESTION = regex.compile(r"[\p{L}\p{N}][^.!?\n]*\?")

STOCK_PHRASES: tuple[str, ...] = (
    "I feel",
    "As an AI",
    "as a language model",
    "I'm just an AI",
    "I'm here for you",
    "I am here for you",
    "I'm here to help",
    "I understand how you feel",
    "I hear you",
    "That sounds really tough",
    "I'm sorry to hear that",
    "It's important to remember",
    "It's okay to feel",
    "Great question",
    "I hope this helps",
    "Let me know if there's anything else",
    "Feel free to",
    "How can I assist you",
)
"""Phrases that read as canned assistant talk rather than a character's voice (matched case-insensitively on
whole words; curly apostrophes count as straight ones). Their rate is a style artifact the offline gate
bounds."""

REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI (?:can(?:'t|not)|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r" (?:help|assist|answer|provide|discuss|talk about|engage|do that|comply|continue|go there)",
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'t|not)|won't|am unable|'m unable)",
    r"\bI (?:must|have to|need to) (?:decline|refuse)",
    r"\bI(?:'m| am) not (?:comfortable|allowed|permitted) (?:to |with |discussing|talking|helping)",
    r"\b(?:that's|that is) not something I (?:can|will|am able to)",
    r"\bas an AI,? I (?:can(?:'t|not)|don't|do not|am not able|'m not able)",
    r"\bI(?:'d| would) rather not (?:discuss|talk about|answer|help|go)",
)
"""Regular expressions (case-insensitive) of refusals: "I can't help with that", "I'm sorry, but I can't",
"I must decline", "I'm not comfortable discussing…", "That's not something I can…", "As an AI, I cannot…".
A refusal of a benign prompt is a false refusal (the report brought them below 5 %)."""

_STOCK = [
    regex.compile(r"(?<![\p{L}\p{N}])" + regex.escape(phrase.lower()) + r"(?![\p{L}\p{N}])") for phrase in STOCK_PHRASES
]
_REFUSALS = [regex.compile(pattern, flags=regex.IGNORECASE) for pattern in REFUSAL_PATTERNS]


def _normalise_apostrophes(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'")


def _is_emoji(grapheme: str) -> bool:
    return bool(_PRESENTED.search(grapheme) or _EMOJI_VARIATION.search(grapheme) or _CHAT_PICTOGRAPH.search(grapheme))


def emoji_count(text: str) -> int:
    """Emojis in `text`, one per grapheme cluster (👨‍👩‍👧, 🇫🇷 and 👍🏽 are one each). Every emoji pattern
    needs a non-ASCII character, so ASCII text and ASCII graphemes skip the three searches (most of eval's and
    RL's style accounting)."""
    if text.isascii():
        return 0
    return sum(1 for grapheme in _GRAPHEME.findall(text) if not grapheme.isascii() and _is_emoji(grapheme))


def words(text: str) -> list[str]:
    """The words of `text` as word_count counts them."""
    return _WORD.findall(text)


def word_count(text: str) -> int:
    """Words in `text`: runs of letters or digits ("don't" is one word; emojis and punctuation are none)."""
    return len(_WORD.findall(text))


def is_list(text: str) -> bool:
    """Whether `text` is formatted as a list: two or more lines starting with a bullet (-, *, +, •) or an
    enumerator (1. 2) a.). One bulleted line is a dash, not a list."""
    return len(_LIST_ITEM.findall(text)) >= 2


def has_stock_phrase(text: str) -> bool:
    """Whether `text` contains one of STOCK_PHRASES."""
    folded = _normalise_apostrophes(text).lower()
    return any(pattern.search(folded) for pattern in _STOCK)


def asks_question(text: str) -> bool:
    """Whether `text` asks the user something: a sentence with words that ends in a question mark."""
    return bool(_QUESTION.search(text))


def is_refusal(text: str) -> bool:
    """Whether `text` refuses the request (one of REFUSAL_PATTERNS matches)."""
    normalised = _normalise_apostrophes(text)
    return any(pattern.search(normalised) for pattern in _REFUSALS)


def style_values(text: str) -> dict[str, float]:
    """One response's contribution to each StyleStats field (their means over responses are the stats)."""
    return {
        "emoji_rate": float(emoji_count(text)),
        "list_rate": float(is_list(text)),
        "mean_length": float(word_count(text)),
        "stock_phrase_rate": float(has_stock_phrase(text)),
    }


def style_difference_sd(candidate: Iterable[str], parent: Iterable[str]) -> dict[str, float]:
    """Per style statistic, the standard deviation over prompts of candidate − parent (same prompts, same order)."""
    import numpy as np

    pairs = [(style_values(c), style_values(p)) for c, p in zip(candidate, parent, strict=True)]
    if len(pairs) < 2:
        return {}
    return {k: float(np.std([c[k] - p[k] for c, p in pairs], ddof=1)) for k in pairs[0][0]}


def style_sd(responses: Iterable[str]) -> dict[str, float]:
    """Per style statistic, the standard deviation over responses (empty below two responses)."""
    import numpy as np

    values = [style_values(text) for text in responses]
    if len(values) < 2:
        return {}
    return {k: float(np.std([v[k] for v in values], ddof=1)) for k in values[0]}


def style_stats(responses: Iterable[str]) -> StyleStats:
    """Style artifacts of a set of responses. ValueError on an empty set: a rate of nothing is no rate."""
    texts = list(responses)
    if not texts:
        raise ValueError("style_stats needs at least one response; got none (check the prompt set)")
    n = len(texts)
    return StyleStats(
        emoji_rate=sum(emoji_count(t) for t in texts) / n,
        list_rate=sum(is_list(t) for t in texts) / n,
        mean_length=sum(word_count(t) for t in texts) / n,
        stock_phrase_rate=sum(has_stock_phrase(t) for t in texts) / n,
    )
