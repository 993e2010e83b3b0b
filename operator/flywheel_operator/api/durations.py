"""Durations as Kubernetes users write them, kept as strings in the CRD.

The grammar is Go's `time.ParseDuration` (what Kubernetes' `metav1.Duration` reads: `90s`, `1h30m`, `1.5h`,
`300ms`, `0`) plus a leading whole number of days, `d`, which Go lacks (`7d`, `1d12h`). Signs are refused: no
field of the API takes a negative duration. The CRD checks the same grammar with `DURATION_PATTERN` and compares
durations in CEL by rewriting the days to hours (`cel_duration`).
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, Field

_UNIT = r"(ns|us|µs|μs|ms|s|m|h)"
_NUMBER = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"
_GO = rf"({_NUMBER}{_UNIT})"
DURATION_PATTERN = rf"^(0|[0-9]+d{_GO}*|{_GO}+)$"
"""Go's duration grammar without a sign, after an optional leading `<whole number>d`."""
DURATION_MAX_LENGTH = 64
"""Longest duration string the CRD accepts (keeps the CEL rules' cost estimate bounded)."""
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_HINT = (
    "write a number with a unit (ns, us, ms, s, m, h) as Go and Kubernetes do, whole days (d) first: "
    "'90s', '1h30m', '1.5h', '7d', '1d12h'"
)


def parse_duration(text: str) -> timedelta:
    """'1h30m' -> 90 minutes, '1d12h' -> 36 hours. Raises ValueError with the accepted forms otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration: {_HINT}")
    return _parse(text)


@functools.lru_cache(maxsize=1024)
def _parse(value: str) -> timedelta:
    """parse_duration of a string, remembered: every validation of a generation parses its ~16 durations (a
    quarter of the operator's validation time per reconcile), and they are the same few strings."""
    if len(value) > DURATION_MAX_LENGTH or not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration: {_HINT}")
    if value == "0":
        return timedelta()
    days, _, rest = value.rpartition("d") if "d" in value else ("0", "", value)
    seconds = sum(float(number) * _SECONDS[unit] for number, _, unit in re.findall(rf"{_NUMBER}{_UNIT}", rest))
    return timedelta(days=int(days), seconds=seconds)


def cel_duration(field: str) -> str:
    """A CEL expression for `self.<field>` as a CEL duration. Days become hours, because CEL's `duration()` reads
    Go's grammar, which has no `d`. (The API server applies the schema's defaults before it validates, so a
    defaulted field is present.)"""
    value = f"self.{field}"
    return (
        f"({value} == '0' ? duration('0s') : {value}.contains('d') ? "
        f"duration(string(int({value}.split('d')[0]) * 24) + 'h' + {value}.split('d')[1]) : duration({value}))"
    )


def _check(text: str) -> str:
    parse_duration(text)
    return text


def _positive(text: str) -> str:
    if parse_duration(text) <= timedelta():
        raise ValueError(f"{text!r} is zero: give a positive duration, e.g. '10m'")
    return text


Duration = Annotated[
    str,
    AfterValidator(_check),
    Field(json_schema_extra={"pattern": DURATION_PATTERN, "maxLength": DURATION_MAX_LENGTH}),
]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A duration above zero (a check interval of 0 would poll without pause)."""
