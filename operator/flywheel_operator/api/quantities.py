"""Kubernetes resource quantities (`500m`, `16`, `200Gi`, `1e3`), read as the API server reads them.

The grammar is apimachinery's `resource.Quantity`:

    <quantity> ::= <number><suffix>          (no sign: a request or limit is never negative)
    <number>   ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>   ::= Ki | Mi | Gi | Ti | Pi | Ei | n | u | m | "" | k | M | G | T | P | E | e<int> | E<int>

`900GB`, `lots` or `2 cores` are refused with the nearest valid spelling.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field

QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
"""apimachinery's quantity grammar without the sign."""
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}
_NUMBER = re.compile(r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))")


def parse_quantity(text: str) -> Decimal:
    """'500m' -> 0.5, '2Gi' -> 2147483648. Raises ValueError naming the accepted forms."""
    if not isinstance(text, str) or not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity: {_hint(text)}")
    number = _NUMBER.match(text)
    assert number is not None
    value, suffix = Decimal(number.group(0)), text[number.end():]
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix[:1] in ("e", "E") and suffix[1:]:
        return value.scaleb(int(suffix[1:]))
    return value * _DECIMAL[suffix]


def _hint(text: object) -> str:
    if isinstance(text, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGTPE])i?B\s*", text, flags=re.IGNORECASE)
        if match:
            unit = match.group(2).upper()
            number = match.group(1)
            return f"write {number}{unit}i (powers of 2) or {number}{unit} (powers of 10): 'B' is not a unit"
    return (
        "write a number with an optional suffix: m (thousandths, '500m' CPU), k/M/G/T (powers of 10), Ki/Mi/Gi/Ti "
        "(powers of 2, '32Gi' memory), or an exponent ('1e3')"
    )


def _check(text: str) -> str:
    parse_quantity(text)
    return text


Quantity = Annotated[
    str,
    AfterValidator(_check),
    Field(json_schema_extra={"pattern": QUANTITY_PATTERN}),
]
"""A Kubernetes resource quantity such as `16`, `500m` or `200Gi`."""
