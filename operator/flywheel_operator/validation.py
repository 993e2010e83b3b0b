"""`flywheel validate`: every problem in a manifest, each with its field path and what to do about it."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from flywheel_operator.api import API_VERSION, KIND, FlywheelGeneration
from flywheel_operator.api.names import DNS_1035


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest."""

    path: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + (f" — {self.hint}" if self.hint else "")


def _all_field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every camelCase field name in the API, for 'did you mean' hints on misspelt keys."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        for arg in _model_types(info.annotation):
            names |= _all_field_names(arg, seen)
    return names


def _model_types(annotation: Any) -> Iterable[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _model_types(arg)


_KNOWN_FIELDS = sorted(_all_field_names(FlywheelGeneration))


def _hint(error: dict[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    if "hint" in error.get("ctx", {}):  # custom errors of the API models carry their own fix
        return str(error["ctx"]["hint"])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _KNOWN_FIELDS, n=1)
        return f"did you mean {close[0]!r}?" if close else "remove it: the API has no such field (see docs/api.md)"
    if kind == "missing":
        return "add this field (see docs/api.md for its meaning)"
    if kind == "literal_error":
        return f"use one of {error.get('ctx', {}).get('expected', 'the listed values')}"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        if "(s|m|h|d)" in pattern:
            return "write a whole number with s, m, h or d, e.g. '30m' or '7d'"
        if "_." in pattern:
            return "use a label value: letters, digits, '-', '_' and '.', a letter or digit at both ends"
        if pattern == DNS_1035:
            return "start with a lowercase letter, then lowercase letters, digits and '-' (Service names need it)"
        return "use lowercase letters, digits and '-' (a DNS label)"
    if kind.startswith(("greater_than", "less_than")):
        return "change the value to fit the range"
    if kind in (
        "int_parsing",
        "float_parsing",
        "bool_parsing",
        "int_type",
        "float_type",
        "string_type",
        "bool_type",
        "dict_type",
        "list_type",
        "model_type",
        "model_attributes_type",
    ):
        return "fix the value's type"
    return ""


def problems_of(document: Any) -> list[Problem]:
    """All problems of one YAML document (empty when it is a valid FlywheelGeneration)."""
    if not isinstance(document, dict):
        return [Problem("(document)", f"expected a mapping, got {type(document).__name__}", "write a YAML object")]
    if document.get("kind") == "Flywheel" and document.get("apiVersion") == API_VERSION:
        return _flywheel_problems(document)
    head = []
    if document.get("apiVersion") != API_VERSION:
        head.append(Problem("apiVersion", f"is {document.get('apiVersion')!r}", f"set it to {API_VERSION}"))
    if document.get("kind") != KIND:
        head.append(Problem("kind", f"is {document.get('kind')!r}", f"set it to {KIND}"))
    if head:
        return head
    try:
        FlywheelGeneration.model_validate(document)
    except ValidationError as exc:
        return problems_of_error(exc)
    return []


def _flywheel_problems(document: dict[str, Any]) -> list[Problem]:
    """A Flywheel (api/flywheel.py): its template, schedule, stop rules and the names it will create."""
    from flywheel_operator.api.flywheel import Flywheel

    try:
        Flywheel.model_validate(document)
    except ValidationError as exc:
        return problems_of_error(exc)
    return []


def _verdict(document: dict[str, Any]) -> str:
    if document.get("kind") == "Flywheel":
        first = document["spec"].get("firstGeneration", 1)
        return f"OK (Flywheel {document['metadata']['name']}, from generation {first})"
    return f"OK ({KIND} {document['metadata']['name']}, generation {document['spec']['generation']})"


def problems_of_error(exc: ValidationError) -> list[Problem]:
    """A pydantic error of the API models as problems with field paths and hints (also what the operator
    writes into an invalid generation's status)."""
    out = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(document)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] not in ("missing", "extra_forbidden", "value_error") and "hint" not in error.get("ctx", {}):
            message += f" (got {error.get('input')!r})"
        out.append(Problem(path, message, _hint(error)))
    return out


def load_documents(path: Path) -> list[Any]:
    """YAML documents of a file, empty ones skipped."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def validate_files(paths: Sequence[str], out=None) -> int:
    """Print a verdict per document; exit code 1 when anything is wrong (a missing file or bad YAML too)."""
    out = out or sys.stdout
    failed = False
    for name in paths:
        path = Path(name)
        try:
            documents = load_documents(path)
        except (OSError, yaml.YAMLError) as exc:
            print(f"{name}: cannot read: {exc}", file=out)
            failed = True
            continue
        if not documents:
            print(f"{name}: no YAML document found", file=out)
            failed = True
        for index, document in enumerate(documents):
            where = name if len(documents) == 1 else f"{name}[{index}]"
            problems = problems_of(document)
            warnings: list[Problem] = []
            if not problems and document.get("kind") == KIND:  # issue 24: will its models load and fit (review)
                problems, warnings = cluster_review(document)
            if problems:
                failed = True
                print(f"{where}: {len(problems)} problem(s)", file=out)
                for problem in problems:
                    print(f"  {problem}", file=out)
            else:
                print(f"{where}: {_verdict(document)}", file=out)
            for warning in warnings:
                print(f"  warning: {warning}", file=out)
    return 1 if failed else 0


def cluster_review(document: Any) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of a valid generation on its cluster: Hub models without a cache, GPU fit."""
    from flywheel_operator.review import review

    problems, warnings = review(FlywheelGeneration.model_validate(document))
    return [Problem(*p) for p in problems], [Problem(*w) for w in warnings]
