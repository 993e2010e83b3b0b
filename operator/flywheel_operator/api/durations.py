"""Durations as Kubernetes users write them ("90s", "30m", "24h", "7d"), kept as strings in the CRD."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, Field

DURATION_PATTERN = r"^[0-9]+(s|m|h|d)$"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'30m' -> 30 minutes. Raises ValueError with the accepted form when the text does not match."""
    match = re.fullmatch(r"([0-9]+)(s|m|h|d)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration: write a whole number with s, m, h or d, e.g. '30m' or '7d'")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _check(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[
    str,
    AfterValidator(_check),
    Field(pattern=DURATION_PATTERN, json_schema_extra={"format": "duration"}),
]
