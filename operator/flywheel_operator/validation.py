"""`flywheel validate`: every problem in a manifest, each with its field path and what to do about it."""

from __future__ import annotations

import copy
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
    return _all_problems(document)


MAX_PASSES = 4
"""Passes of `_all_problems`; each one can only uncover the checks of sections that held field errors."""


def _all_problems(document: dict[str, Any]) -> list[Problem]:
    """Field errors and cross-field problems together.

    Pydantic runs a section's cross-field checks (minDuration < maxDuration, exactly one of pvc and uri, ...) only
    once every field of the section is valid. So each pass removes the fields that had errors (a removed field
    takes its default) and validates again; new problems are kept unless they name a removed field, whose
    default then stood in for what the user wrote.
    """
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    removed: set[tuple[Any, ...]] = set()
    current = copy.deepcopy(document)
    for _ in range(MAX_PASSES):
        try:
            FlywheelGeneration.model_validate(current)
        except ValidationError as exc:
            errors = exc.errors()
        else:
            break
        fresh = []
        for error, problem in zip(errors, problems_of_error_list(errors), strict=True):
            loc = tuple(error["loc"])
            if (problem.path, problem.message) in seen or any(loc[: len(r)] == r for r in removed):
                continue
            if any(_names_removed(loc, r, problem.message) for r in removed):
                continue
            seen.add((problem.path, problem.message))
            fresh.append((loc, problem))
        problems.extend(problem for _, problem in fresh)
        prunable = [loc for loc, _ in fresh if loc and isinstance(loc[-1], str) and _remove(current, loc)]
        if not prunable:
            break
        removed.update(prunable)
    return problems


def _remove(document: Any, loc: tuple[Any, ...]) -> bool:
    """Delete the field at `loc` from `document`; False when there is nothing to delete."""
    node = document
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and loc[-1] in node:
        del node[loc[-1]]
        return True
    return False


def _names_removed(loc: tuple[Any, ...], removed: tuple[Any, ...], message: str) -> bool:
    """A section's check that names a field removed from that section judged the default, not the user's value."""
    return removed[:-1] == loc and str(removed[-1]) in message


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
    return problems_of_error_list(exc.errors())


def problems_of_error_list(errors: Sequence[Any]) -> list[Problem]:
    out = []
    for error in errors:
        path = ".".join(str(part) for part in error["loc"]) or "(document)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] not in ("missing", "extra_forbidden", "value_error") and "hint" not in error.get("ctx", {}):
            message += f" (got {error.get('input')!r})"
        out.append(Problem(path, message, _hint(error)))
    return out


def load_documents(path: Path) -> list[Any]:
    """YAML documents of a file (`-`: standard input), empty ones skipped."""
    if str(path) == "-":
        return [doc for doc in yaml.safe_load_all(sys.stdin) if doc is not None]
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


YAML_SUFFIXES = (".yaml", ".yml")


def expand_inputs(names: Sequence[str]) -> list[str]:
    """Files to read: `-` (standard input) and files as given, a directory as its YAML files (recursively,
    sorted), as `kubectl apply -f DIR -R` reads it."""
    out: list[str] = []
    for name in names:
        path = Path(name)
        if name != "-" and path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
            out.extend(str(p) for p in found) if found else out.append(name)
        else:
            out.append(name)
    return out


def other_kind(document: Any) -> str | None:
    """'ConfigMap (v1)' when `document` is some other Kubernetes object that a manifest file may carry beside
    FlywheelGenerations; None for a FlywheelGeneration, or for something meant to be one (a misspelt kind of
    this API group, a missing kind), whose problems are listed instead."""
    if not isinstance(document, dict):
        return None
    if not {"apiVersion", "kind", "metadata", "spec"} & document.keys():
        return "a YAML document without apiVersion, kind, metadata or spec"
    if not isinstance(document.get("kind"), str):
        return None
    kind, api_version = document["kind"], str(document.get("apiVersion", ""))
    if kind in (KIND, FLYWHEEL_KIND) or difflib.get_close_matches(kind, [KIND, FLYWHEEL_KIND], n=1, cutoff=0.8):
        return None
    if api_version.split("/")[0] == API_VERSION.split("/")[0] and kind not in OTHER_KINDS_OF_THE_GROUP:
        return None
    return f"{kind} ({api_version or 'no apiVersion'})"


FLYWHEEL_KIND = "Flywheel"
OTHER_KINDS_OF_THE_GROUP: tuple[str, ...] = ()
"""Kinds of this API group that `validate` does not check: skipped with a note like any other kind."""


def validate_files(paths: Sequence[str], out=None) -> int:
    """Print a verdict per document; exit code 1 when anything is wrong (a missing file or bad YAML too).

    Other kinds in the same files (a ConfigMap, a Secret, ...) are skipped with a note; a run with no
    FlywheelGeneration at all is an error.
    """
    out = out or sys.stdout
    failed = False
    checked = 0
    for name in expand_inputs(paths):
        label = "(stdin)" if name == "-" else name
        try:
            documents = load_documents(Path(name))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            print(f"{label}: cannot read: {exc}", file=out)
            failed = True
            continue
        if not documents:
            print(f"{label}: no YAML document found", file=out)
            failed = True
        for index, document in enumerate(documents):
            where = label if len(documents) == 1 else f"{label}[{index}]"
            skipped = other_kind(document)
            if skipped is not None:
                print(f"{where}: skipped {skipped}: not a {KIND}", file=out)
                continue
            checked += 1
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
    if checked == 0 and not failed:
        print(f"no {KIND} or {FLYWHEEL_KIND} found in {', '.join(paths)}", file=out)
        failed = True
    return 1 if failed else 0


def cluster_review(document: Any) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of a valid generation on its cluster: Hub models without a cache, GPU fit."""
    from flywheel_operator.review import review

    problems, warnings = review(FlywheelGeneration.model_validate(document))
    return [Problem(*p) for p in problems], [Problem(*w) for w in warnings]
