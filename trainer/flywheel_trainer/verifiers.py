"""Programmatic verifiers of character instructions (IFEval-style: every instruction is checkable by a rule).

An instruction is a mapping `{"kind": str, "value": int | str | None}` (docs/data.md). The eval stage scores
instruction following and violations with `follows_all`, the RL stage uses it as a verifiable reward, the
simulator uses it to judge its own responses, and `describe` renders the same instruction into the system
prompt — one definition for all of them. The report does not say how it scores instruction following; these
are strict checks (no "loose" variants) and their rules are written in each checker's docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import regex

from flywheel_trainer.style import emoji_count, is_list, word_count

__all__ = [
    "INSTRUCTION_KINDS",
    "VALUE_TYPES",
    "check",
    "describe",
    "following_by_kind",
    "follows_all",
    "sentence_count",
    "validate_instruction",
    "violations",
]

VALUE_TYPES: dict[str, type | None] = {
    "max_words": int,
    "min_words": int,
    "max_sentences": int,
    "include_word": str,
    "forbid_word": str,
    "ends_with_question": None,
    "no_emoji": None,
    "no_list": None,
    "lowercase": None,
    "stay_in_character": None,
    "start_with": str,
}
"""The type of each kind's `value`: int (a limit), str (a word or prefix) or None (no value)."""

INSTRUCTION_KINDS: tuple[str, ...] = tuple(VALUE_TYPES)
"""Every instruction kind the verifiers understand (the conversation schema's enum)."""

_MIN_INT = {"max_words": 1, "min_words": 0, "max_sentences": 1}
_SENTENCE_END = regex.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n+")
_HAS_WORD = regex.compile(r"[\p{L}\p{N}]")
_CLOSERS = "\"'”’)]*_ \t\r\n"
_AI_DISCLAIMER = regex.compile(
    r"\b(?:as an? (?:AI|artificial intelligence|language model|chatbot|virtual assistant|bot)"
    r"|(?:an?|the) (?:AI )?language model|large language model|\bLLM\b"
    r"|I(?:'m| am) (?:just |only |merely )?(?:an? )?"
    r"(?:AI|artificial intelligence|chatbot|bot|computer program)\b"
    r"|I(?:'m| am) not (?:a )?(?:real|human|a real person))",
    flags=regex.IGNORECASE,
)
# Self-introductions: "my name is X", "call me X", "X here", "Hi, I'm X" — X must be the character's name.
_INTRODUCTION = regex.compile(
    r"(?i:\bmy name(?:'s| is)|\b(?:you can |just )?call me|\bname's"
    r"|(?:^|[.!?]\s+)(?:hi|hello|hey|greetings|howdy)(?: there)?[,!.]?\s+(?:I am|I'm|it's|this is))"
    r"\s+(?P<name>\p{Lu}[\p{L}'-]*)"
)


def _ensure_known(kind: object) -> str:
    if not isinstance(kind, str) or kind not in VALUE_TYPES:
        raise ValueError(f"unknown instruction kind {kind!r}: use one of {', '.join(INSTRUCTION_KINDS)}")
    return kind


def validate_instruction(instruction: Mapping[str, Any]) -> tuple[str, int | str | None]:
    """(kind, value) of a well-formed instruction; ValueError naming the kind and what it accepts if not."""
    if not isinstance(instruction, Mapping) or "kind" not in instruction:
        raise ValueError(f"an instruction is a mapping with 'kind' and 'value'; got {instruction!r}")
    kind = _ensure_known(instruction["kind"])
    value = instruction.get("value")
    expected = VALUE_TYPES[kind]
    if expected is None:
        if value is not None:
            raise ValueError(f"instruction {kind!r} takes no value; set 'value' to null (got {value!r})")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"instruction {kind!r} needs an integer 'value'; got {value!r}")
        if value < _MIN_INT[kind]:
            raise ValueError(f"instruction {kind!r} needs 'value' >= {_MIN_INT[kind]}; got {value}")
    elif not isinstance(value, str) or not value.strip():
        raise ValueError(f"instruction {kind!r} needs a non-empty string 'value'; got {value!r}")
    return kind, value


def sentence_count(text: str) -> int:
    """Sentences: pieces with a letter or digit, split after . ! ? … (and closing quotes) or at line breaks.
    Abbreviations such as "Dr." split too; a rule, not a parser."""
    return sum(1 for piece in _SENTENCE_END.split(text.strip()) if _HAS_WORD.search(piece))


def _word_pattern(word: str) -> regex.Pattern[str]:
    return regex.compile(
        r"(?<![\p{L}\p{N}])" + regex.escape(word.strip()) + r"(?![\p{L}\p{N}])", flags=regex.IGNORECASE
    )


def _contains_word(response: str, word: str) -> bool:
    """Whole-word (or whole-phrase), case-insensitive: "cat" is in "Cat!" but not in "catalog"."""
    return bool(_word_pattern(word).search(response.replace("’", "'")))


def _ends_with_question(response: str) -> bool:
    """The last character, after trailing spaces, quotes, brackets and markdown emphasis, is "?"."""
    return response.rstrip(_CLOSERS).endswith("?")


def _is_lowercase(response: str) -> bool:
    """No uppercase letter anywhere (digits, emojis and punctuation are fine)."""
    return not any(ch.isupper() for ch in response)


def _starts_with(response: str, prefix: str) -> bool:
    """Case-insensitive prefix after leading whitespace; a prefix ending in a letter must end a word there
    ("Hey" is not the start of "Heya")."""
    text = response.lstrip().replace("’", "'")
    prefix = prefix.strip().replace("’", "'")
    if not text.lower().startswith(prefix.lower()):
        return False
    rest = text[len(prefix) :]
    return not (prefix[-1].isalnum() and rest[:1].isalnum())


def _stays_in_character(response: str, character_name: str) -> bool:
    """No AI/language-model disclaimer and no self-introduction under another name than the character's
    (any word of the character's name counts: "Captain Nova" may say "call me Nova")."""
    text = response.replace("’", "'")
    if _AI_DISCLAIMER.search(text):
        return False
    own = {part.lower() for part in regex.findall(r"[\p{L}'-]+", character_name)}
    return all(match.group("name").lower() in own for match in _INTRODUCTION.finditer(text))


_CHECKS: dict[str, Callable[[str, Any, str], bool]] = {
    "max_words": lambda r, v, _: word_count(r) <= v,
    "min_words": lambda r, v, _: word_count(r) >= v,
    "max_sentences": lambda r, v, _: sentence_count(r) <= v,
    "include_word": lambda r, v, _: _contains_word(r, v),
    "forbid_word": lambda r, v, _: not _contains_word(r, v),
    "ends_with_question": lambda r, _v, _n: _ends_with_question(r),
    "no_emoji": lambda r, _v, _n: emoji_count(r) == 0,
    "no_list": lambda r, _v, _n: not is_list(r),
    "lowercase": lambda r, _v, _n: _is_lowercase(r),
    "stay_in_character": lambda r, _v, name: _stays_in_character(r, name),
    "start_with": lambda r, v, _: _starts_with(r, v),
}


def check(instruction: Mapping[str, Any], response: str, *, character_name: str) -> bool:
    """Whether `response` follows `instruction` (words counted as style.word_count counts them)."""
    kind, value = validate_instruction(instruction)
    return _CHECKS[kind](response, value, character_name)


def violations(instructions: Iterable[Mapping[str, Any]], response: str, *, character_name: str) -> list[str]:
    """Kinds of the instructions `response` breaks, in order (empty when it follows all)."""
    return [
        str(instruction["kind"])
        for instruction in instructions
        if not check(instruction, response, character_name=character_name)
    ]


def follows_all(instructions: Iterable[Mapping[str, Any]], response: str, *, character_name: str) -> bool:
    """Whether `response` follows every instruction (vacuously true without instructions)."""
    return not violations(instructions, response, character_name=character_name)


def instruction_share(character: Mapping[str, Any], response: str) -> float:
    """Share of a character's instructions (a log record's `character`) that `response` follows; 1.0 without
    instructions. The graded reward of RL and the steerability score of rejection sampling."""
    instructions = character.get("instructions") or []
    if not instructions:
        return 1.0
    name = character.get("name", "")
    return sum(check(i, response, character_name=name) for i in instructions) / len(instructions)


def following_by_kind(
    characters: Iterable[Mapping[str, Any]], responses: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """Per instruction kind: (responses that keep it, responses whose character carries it), over paired
    `characters` (log records' `character`: name and instructions) and `responses`. Issue 26: the share of
    responses following every instruction hides which instruction a policy breaks (a world's `lowercase`
    character kept its compliance near 0.75 while its other instructions were near 0.95)."""
    counts: dict[str, list[int]] = {}
    for character, response in zip(characters, responses, strict=True):
        name = character.get("name", "")
        for instruction in character.get("instructions") or []:
            kept = check(instruction, response, character_name=name)
            tally = counts.setdefault(str(instruction["kind"]), [0, 0])
            tally[0] += kept
            tally[1] += 1
    return {kind: (kept, n) for kind, (kept, n) in sorted(counts.items())}


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe(instruction: Mapping[str, Any], *, character_name: str | None = None) -> str:
    """The instruction in words for a system prompt, e.g. "Answer in at most 40 words."."""
    kind, value = validate_instruction(instruction)
    match kind:
        case "max_words":
            return f"Answer in at most {_plural(value, 'word')}."
        case "min_words":
            return f"Answer in at least {_plural(value, 'word')}."
        case "max_sentences":
            return f"Use at most {_plural(value, 'sentence')}."
        case "include_word":
            return f'Include the word "{value}".'
        case "forbid_word":
            return f'Never use the word "{value}".'
        case "ends_with_question":
            return "End your reply with a question."
        case "no_emoji":
            return "Do not use emojis."
        case "no_list":
            return "Do not format your reply as a list."
        case "lowercase":
            return "Write only in lowercase letters."
        case "stay_in_character":
            role = f" as {character_name}" if character_name else ""
            return (
                f"Stay in character{role}: never say you are an AI or a language model, "
                "and never introduce yourself by another name."
            )
        case "start_with":
            return f'Start your reply with "{value}".'
    raise AssertionError(f"describe has no wording for {kind!r}")  # unreachable: validate_instruction checked
