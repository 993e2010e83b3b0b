"""The conversation-log contract (docs/data.md): its JSON Schema, validation, loading, and chat rendering.

One conversation per record, JSON Lines or Parquet, written by production logging and by the simulator and
read by `curate`. The schema is the contract; `docs/conversation.schema.json` is generated from it
(`python -m flywheel_trainer.conversation > docs/conversation.schema.json`, a test keeps them identical).
Loading validates every record and names the file and line of the first bad one, so bad logs fail loudly.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flywheel_operator import storage
from jsonschema import Draft202012Validator

from flywheel_trainer.verifiers import INSTRUCTION_KINDS, VALUE_TYPES, describe

if TYPE_CHECKING:
    from datasets import Dataset, Features

__all__ = [
    "CONVERSATION_SCHEMA",
    "LOG_SUFFIXES",
    "ContractCheck",
    "ConversationLoadError",
    "RowError",
    "contract_holds",
    "conversation_features",
    "label_response",
    "load_conversations",
    "load_conversations_lenient",
    "normalize_record",
    "preference_pairs",
    "system_prompt",
    "to_chat",
    "validate_record",
    "write_conversations",
]

SCHEMA_ID = "https://characterflywheel.io/schemas/conversation/v1.json"
LOG_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet")
"""File endings load_conversations reads (`.json` files are read as JSON Lines, as `datasets` does)."""

_MIN_INT = {"max_words": 1, "min_words": 0, "max_sentences": 1}


def _value_schema(kind: str) -> dict[str, Any]:
    expected = VALUE_TYPES[kind]
    if expected is int:
        return {"type": "integer", "minimum": _MIN_INT[kind]}
    if expected is str:
        return {"type": "string", "minLength": 1, "pattern": r"\S"}
    return {"type": "null"}


def _nullable(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """`schema` that also accepts null (a type list, not anyOf, so errors point inside the value)."""
    return {**schema, "type": [schema["type"], "null"], "description": description}


def _build_schema() -> dict[str, Any]:
    instruction = {
        "type": "object",
        "description": "A character instruction, checkable by flywheel_trainer.verifiers.",
        "required": ["kind"],
        "additionalProperties": False,
        "properties": {
            "kind": {"enum": list(INSTRUCTION_KINDS)},
            "value": {
                "type": ["integer", "string", "null"],
                "description": "A limit (integer), a word or prefix (string), or null for kinds without one.",
            },
        },
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"properties": {"value": _value_schema(kind)}},
            }
            for kind in INSTRUCTION_KINDS
        ],
    }
    signals = {
        "type": "object",
        "description": "What the user did with this response. Null or absent fields take their defaults.",
        "additionalProperties": False,
        "properties": {
            "continued": _nullable({"type": "boolean"}, "The user sent another message after it (default false)."),
            "thumb": {"enum": ["up", "down", None], "description": "Explicit rating, if any (default null)."},
            "regenerated": _nullable(
                {"type": "boolean"}, "The user regenerated this turn at least once (default false)."
            ),
        },
    }
    message = {
        "type": "object",
        "required": ["role", "content"],
        "additionalProperties": False,
        "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {"type": "string"},
            "signals": _nullable(signals, "Assistant messages only: the user's reaction."),
            "rejected": _nullable(
                {"type": "array", "items": {"type": "string"}},
                "Assistant messages only: earlier candidates of this turn that the user regenerated away.",
            ),
            "flagged": _nullable({"type": "boolean"}, "Set by production safety or privacy filters; never trained on."),
        },
        "if": {"properties": {"role": {"const": "assistant"}}, "required": ["role"]},
        "else": {
            "properties": {
                "signals": {"type": "null"},
                "rejected": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]},
            }
        },
    }
    character = {
        "type": "object",
        "required": ["id", "name", "persona", "instructions"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "name": {"type": "string", "minLength": 1},
            "persona": {"type": "string"},
            "instructions": {"type": "array", "items": {"$ref": "#/$defs/instruction"}},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "CharacterFlywheel conversation log record",
        "description": "One conversation between a user and an AI character (docs/data.md).",
        "type": "object",
        "required": ["conversation_id", "character", "user_id", "source", "generation", "day", "session", "messages"],
        "additionalProperties": False,
        "properties": {
            "conversation_id": {"type": "string", "minLength": 1},
            "character": {"$ref": "#/$defs/character"},
            "user_id": {"type": "string", "minLength": 1},
            "source": {"enum": ["user", "internal"], "description": "Real users or internal testers."},
            "arm": {
                "enum": ["control", "treatment", None],
                "description": "A/B arm of the user, null outside an experiment (default null).",
            },
            "generation": {"type": "string", "minLength": 1, "description": "Policy generation serving it."},
            "day": {"type": "integer", "minimum": 0, "description": "Day index of the conversation."},
            "session": {"type": "integer", "minimum": 0, "description": "The user's session index that day."},
            "messages": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/message"}},
            "metadata": _nullable(
                {"type": "object"}, "Free-form extras a writer wants to keep (stored as JSON; default {})."
            ),
        },
        "$defs": {"character": character, "instruction": instruction, "message": message, "signals": signals},
    }


CONVERSATION_SCHEMA: dict[str, Any] = _build_schema()
"""JSON Schema (draft 2020-12) of one conversation record; docs/conversation.schema.json is this, dumped."""

_VALIDATOR = Draft202012Validator(CONVERSATION_SCHEMA)


def _json_path(parts: Iterator[str | int] | Any) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def validate_record(record: object) -> list[str]:
    """Every way `record` breaks the schema, as '<JSON path>: <problem>' (empty when valid)."""
    errors = sorted(_VALIDATOR.iter_errors(record), key=lambda e: ([str(p) for p in e.absolute_path], e.message))
    return [f"{_json_path(error.absolute_path)}: {error.message}" for error in errors]


def _split_validators() -> tuple[Draft202012Validator, Draft202012Validator, Draft202012Validator] | None:
    """The schema split into three validators: the record without its character and messages, the character,
    and one message. A record is valid exactly when its envelope, its character and each of its messages are:
    `properties` and `items` check each value on its own (JSON Schema 2020-12). None (check whole records) if
    the schema ever holds a keyword that looks across them (unevaluated*) or changes the places it splits at."""
    schema = CONVERSATION_SCHEMA
    properties = schema.get("properties", {})
    messages = properties.get("messages", {})
    if ("unevaluated" in json.dumps(schema) or properties.get("character") is None
            or not isinstance(messages, dict) or set(messages) != {"type", "minItems", "items"}):
        return None
    envelope = copy.deepcopy(schema)
    envelope["properties"]["character"] = True
    envelope["properties"]["messages"]["items"] = True

    def part(subschema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"], **subschema})

    return Draft202012Validator(envelope), part(properties["character"]), part(messages["items"])


_SPLIT = _split_validators()


def _reads_text_as_type_only() -> bool:
    """Whether the contract reads a message's `content` and its `rejected` candidates only as "a string" (no
    length, pattern or condition on them): then a message's verdict is that of the same message with every such
    string empty, and the few shapes a log's messages take (role × signals × how many rejected) are checked once."""
    message = CONVERSATION_SCHEMA["$defs"]["message"]
    properties = message.get("properties", {})
    rejected = {k: v for k, v in properties.get("rejected", {}).items() if k != "description"}
    around = json.dumps({k: v for k, v in message.items() if k not in ("properties", "required")})  # keys stay
    return (
        properties.get("content") == {"type": "string"}
        and rejected == {"type": ["array", "null"], "items": {"type": "string"}}
        and '"content"' not in around
        and not any(key in around for key in ('"pattern"', 'Length"', '"format"', '"items"', '"enum"'))
    )


_TEXT_BLIND = _SPLIT is not None and _reads_text_as_type_only()


def _envelope_stand_ins() -> dict[str, tuple[Callable[[object], bool], object]]:
    """Per envelope property, (passes, stand-in): `passes(value)` only for values its subschema surely accepts,
    all of which the stand-in can replace without changing the envelope's verdict. Every log record has its own
    conversation and user ids, so envelopes are checked as shapes, with the ids, the character and the messages
    (split off, checked on their own) replaced. Empty (nothing replaced) when the envelope holds a keyword other
    than these, which might look at several properties at once."""
    if _SPLIT is None:
        return {}
    envelope = _SPLIT[0].schema
    annotations = {"$schema", "$id", "title", "description", "$defs"}
    if set(envelope) - annotations - {"type", "required", "additionalProperties", "properties"}:
        return {}
    known: list[tuple[object, Callable[[object], bool], object]] = [
        (True, lambda value: True, None),
        ({"type": "string", "minLength": 1}, lambda value: type(value) is str and value != "", "x"),
        ({"type": "integer", "minimum": 0}, lambda value: type(value) is int and value >= 0, 0),
        ({"type": "array", "minItems": 1, "items": True}, lambda value: type(value) is list and value != [], [None]),
    ]
    stand_ins = {}
    for name, subschema in envelope["properties"].items():
        plain = {k: v for k, v in subschema.items() if k != "description"} if isinstance(subschema, dict) else subschema
        for schema, passes, stand_in in known:
            if plain == schema:
                stand_ins[name] = (passes, stand_in)
    return stand_ins


_ENVELOPE_STAND_INS = _envelope_stand_ins()


def _envelope_shape(record: object) -> object:
    """`record` with every value _ENVELOPE_STAND_INS can replace replaced (a dict; anything else as is)."""
    if type(record) is not dict:
        return record
    shape = dict(record)
    for name, (passes, stand_in) in _ENVELOPE_STAND_INS.items():
        if name in shape and passes(shape[name]):
            shape[name] = stand_in
    return shape


def _without_text(message: object) -> object:
    """`message` with its content and rejected candidates emptied (a dict of exactly str ones; anything else as is)."""
    if not _TEXT_BLIND or type(message) is not dict:
        return message
    shape = dict(message)
    if type(shape.get("content")) is str:
        shape["content"] = ""
    rejected = shape.get("rejected")
    if type(rejected) is list and all(type(text) is str for text in rejected):
        shape["rejected"] = [""] * len(rejected)
    return shape


class ContractCheck:
    """Whether records follow the contract: validate_record's verdict in about a quarter of its time. A log's
    records share a few characters, system prompts and user messages, so each distinct one (by its repr, which
    tells a tuple from a list and True from 1, as the contract does) is checked once per ContractCheck, and so is
    each shape of a message without its text (_without_text: the responses are all different texts of a few
    shapes), and so is each shape of an envelope (_envelope_shape: the ids differ in every record). Only the
    verdict: validate_record names the problems."""

    def __init__(self) -> None:
        self._verdicts: dict[tuple[int, str], bool] = {}

    def holds(self, record: object) -> bool:
        if _SPLIT is None:
            return _VALIDATOR.is_valid(record)
        envelope, character, message = _SPLIT
        if not self._once(envelope, _envelope_shape(record)):
            return False
        assert isinstance(record, Mapping)  # the envelope says it is an object with these keys
        if not self._once(character, record["character"]):
            return False
        return all(self._once(message, _without_text(item)) for item in record["messages"])

    def _once(self, validator: Draft202012Validator, value: object) -> bool:
        key = _plain_repr(value)
        if key is None:  # not plain JSON data: checked every time
            return validator.is_valid(value)
        slot = (id(validator), key)
        if slot not in self._verdicts:
            self._verdicts[slot] = validator.is_valid(value)
        return self._verdicts[slot]


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain_repr(value: object) -> str | None:
    """repr of JSON data built of exactly dict (string keys), list, str, int, float, bool and None, else None."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is dict:
            if not _SCALARS.issuperset(map(type, item.values())):  # type: ignore[union-attr]
                stack.extend(item.values())  # type: ignore[union-attr]
            for key in item:  # type: ignore[union-attr]
                if type(key) is not str:
                    return None
        elif kind is list:
            stack.extend(item)  # type: ignore[arg-type]
        else:
            return None
    return repr(value)


def contract_holds(records: Iterable[object]) -> bool:
    """Whether every record follows the contract (validate_record finds no problem in any), checked fast."""
    check = ContractCheck()
    return all(check.holds(record) for record in records)


def normalize_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A valid record with every optional key set to its default (the shape load_conversations yields)."""
    messages = []
    for message in record["messages"]:
        is_assistant = message["role"] == "assistant"
        signals = message.get("signals") or {}
        messages.append(
            {
                "role": message["role"],
                "content": message["content"],
                "signals": {
                    "continued": bool(signals.get("continued") or False),
                    "thumb": signals.get("thumb"),
                    "regenerated": bool(signals.get("regenerated") or False),
                }
                if is_assistant
                else None,
                "rejected": list(message.get("rejected") or []),
                "flagged": bool(message.get("flagged") or False),
            }
        )
    character = record["character"]
    return {
        "conversation_id": record["conversation_id"],
        "character": {
            "id": character["id"],
            "name": character["name"],
            "persona": character["persona"],
            "instructions": [{"kind": i["kind"], "value": i.get("value")} for i in character["instructions"]],
        },
        "user_id": record["user_id"],
        "source": record["source"],
        "arm": record.get("arm"),
        "generation": record["generation"],
        "day": record["day"],
        "session": record["session"],
        "messages": messages,
        "metadata": dict(record.get("metadata") or {}),
    }


def conversation_features() -> Features:
    """Arrow types of a normalised record; instruction values and metadata are JSON (int, str or null)."""
    from datasets import Features, Json, List, Value

    string = Value("string")
    return Features(
        {
            "conversation_id": string,
            "character": {
                "id": string,
                "name": string,
                "persona": string,
                "instructions": List({"kind": string, "value": Json()}),
            },
            "user_id": string,
            "source": string,
            "arm": string,
            "generation": string,
            "day": Value("int64"),
            "session": Value("int64"),
            "messages": List(
                {
                    "role": string,
                    "content": string,
                    "signals": {"continued": Value("bool"), "thumb": string, "regenerated": Value("bool")},
                    "rejected": List(string),
                    "flagged": Value("bool"),
                }
            ),
            "metadata": Json(),
        }
    )


class ConversationLoadError(ValueError):
    """A log file cannot be read or holds a record that breaks the contract; the message names the file."""


@dataclass(frozen=True)
class RowError:
    """One malformed record: where it is and what is wrong with it."""

    file: str
    row: int
    """1-based line (JSON Lines) or row (Parquet) number."""
    errors: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.file}:{self.row}: " + "; ".join(self.errors)


def _log_files(uri: str) -> list[str]:
    """The log files at `uri` (any storage URI): itself, or the JSONL/Parquet shards under it, sorted."""
    try:
        files = storage.list_files(uri, suffixes=LOG_SUFFIXES)
    except storage.MissingObjectError as exc:
        raise FileNotFoundError(
            f"{uri}: no such file or directory (expected a .jsonl or .parquet file, or a directory of them)"
        ) from exc
    except storage.StorageError as exc:
        raise ConversationLoadError(str(exc)) from exc
    if not files:
        raise ConversationLoadError(f"{uri}: no {', '.join(LOG_SUFFIXES)} files in this directory")
    return files


def _jsonl_rows(file: str) -> Iterator[tuple[int, object]]:
    """Rows of one JSONL shard, streamed line by line (an object-store shard is never downloaded whole)."""
    try:
        with storage.open_uri(file, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, ConversationLoadError(f"not valid JSON ({exc.msg} at column {exc.colno})")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversationLoadError(f"{file}: cannot read the file ({exc})") from exc


PARQUET_BATCH_ROWS = 1024
"""Rows decoded at a time from a Parquet shard (row groups are read as needed, not the whole file)."""


def _parquet_rows(file: str) -> Iterator[tuple[int, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    number = 0
    try:
        with storage.open_uri(file, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                # Dataset decodes the JSON-typed columns (instruction values, metadata) using the features that
                # the file's schema metadata carries.
                table = pa.Table.from_batches([batch], schema=parquet.schema_arrow)
                for row in Dataset(table):
                    number += 1
                    yield number, row
    except (OSError, pa.ArrowException) as exc:
        raise ConversationLoadError(f"{file}: cannot read the Parquet file ({exc})") from exc


def _rows(file: str) -> Iterator[tuple[int, object]]:
    return _parquet_rows(file) if file.endswith(".parquet") else _jsonl_rows(file)


def _read(path: str | Path, *, lenient: bool) -> tuple[list[dict[str, Any]], list[RowError]]:
    records: list[dict[str, Any]] = []
    bad: list[RowError] = []
    check = ContractCheck()
    for file in _log_files(str(path)):
        for row, record in _rows(file):
            if isinstance(record, ConversationLoadError):
                errors = [str(record)]
            else:
                errors = [] if check.holds(record) else validate_record(record)
            if errors:
                error = RowError(file, row, tuple(errors))
                if not lenient:
                    raise ConversationLoadError(f"{error} (see docs/data.md for the record format)")
                bad.append(error)
            else:
                records.append(normalize_record(record))  # type: ignore[arg-type]
    return records, bad


def _dataset(records: list[dict[str, Any]]) -> Dataset:
    from datasets import Dataset

    return Dataset.from_list(records, features=conversation_features())


def load_conversations(path: str | Path) -> Dataset:
    """Every record of a JSONL/Parquet file or a directory of them (recursively, sorted), normalised.

    Raises ConversationLoadError naming the file (and line) of the first unreadable file or invalid record,
    FileNotFoundError when `path` does not exist.
    """
    records, _ = _read(path, lenient=False)
    return _dataset(records)


def load_conversations_lenient(path: str | Path) -> tuple[Dataset, list[RowError]]:
    """Like load_conversations, but invalid records are skipped and returned as RowErrors (curate's error
    budget decides whether that many are acceptable). Unreadable files still raise."""
    records, bad = _read(path, lenient=True)
    return _dataset(records), bad


def write_conversations(records: list[Mapping[str, Any]], path: str | Path) -> Path:
    """Write records as JSON Lines or Parquet (by the file ending), validated and normalised first."""
    target = Path(path)
    if target.suffix not in LOG_SUFFIXES:
        raise ValueError(f"{target}: write to a file ending in {', '.join(LOG_SUFFIXES)}")
    check = ContractCheck()
    for row, record in enumerate(records, start=1):
        if not check.holds(record) and (errors := validate_record(record)):
            raise ValueError(f"record {row} breaks the conversation contract: " + "; ".join(errors))
    normalised = [normalize_record(record) for record in records]
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".parquet":
        import pyarrow.parquet as pq

        # The table carries the datasets features in its schema metadata, so readers decode the JSON columns.
        pq.write_table(_dataset(normalised).data.table, target)
    else:
        with target.open("w", encoding="utf-8") as handle:
            for record in normalised:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return target


def system_prompt(character: Mapping[str, Any]) -> str:
    """The system prompt of a character: who it is, its persona, and its instructions in words."""
    name = character["name"]
    lines = [f"You are {name}. {character['persona']}".rstrip()]
    instructions = character.get("instructions") or []
    if instructions:
        lines.append("")
        lines.append("Follow these instructions in every reply:")
        lines.extend(f"- {describe(i, character_name=name)}" for i in instructions)
    return "\n".join(lines)


def to_chat(record: Mapping[str, Any], upto_turn: int | None = None) -> list[dict[str, str]]:
    """The chat a model sees before message `upto_turn` (an index into record["messages"]; None = all),
    as [{"role", "content"}]. It opens with the logged system message when the log has one, otherwise with
    system_prompt(character). `to_chat(record, i)` for an assistant message i is the prompt that produced
    it.
    """
    messages = list(record["messages"])
    if upto_turn is not None and not 0 <= upto_turn <= len(messages):
        raise IndexError(f"upto_turn={upto_turn} is outside the {len(messages)} messages of the conversation")
    context = messages if upto_turn is None else messages[:upto_turn]
    chat = [{"role": m["role"], "content": m["content"]} for m in context]
    if not messages or messages[0]["role"] != "system":
        chat.insert(0, {"role": "system", "content": system_prompt(record["character"])})
    return chat


def label_response(message: Mapping[str, Any]) -> Literal["chosen", "rejected"] | None:
    """How the user judged an assistant response (docs/data.md): thumbs decide; otherwise a continued
    response is chosen and a response the user left is rejected. Flagged and non-assistant messages: None."""
    if message.get("role") != "assistant" or message.get("flagged"):
        return None
    signals = message.get("signals") or {}
    if signals.get("thumb") == "down":
        return "rejected"
    if signals.get("thumb") == "up" or signals.get("continued"):
        return "chosen"
    return "rejected"


def preference_pairs(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Pairs within one conversation: each chosen response against every candidate the user regenerated away
    at the same turn. Each pair: {"prompt": chat before the turn, "chosen": str, "rejected": str,
    "turn": int}.
    (Responses the user left pair with chosen responses to the same context across conversations; that
    matching is curate's job, see docs/data.md.)"""
    pairs = []
    for turn, message in enumerate(record["messages"]):
        if label_response(message) != "chosen":
            continue
        for candidate in message.get("rejected") or []:
            if candidate != message["content"]:
                pairs.append(
                    {"prompt": to_chat(record, turn), "chosen": message["content"], "rejected": candidate, "turn": turn}
                )
    return pairs


def schema_json() -> str:
    """The schema as docs/conversation.schema.json holds it."""
    return json.dumps(CONVERSATION_SCHEMA, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_json())
