"""Rules that recognise personal data in chat text, so curate drops it before anything trains on it.

Conservative on purpose: a dropped conversation costs little, a leaked e-mail address costs a lot.
"""

from __future__ import annotations

import re

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # +44 20 7946 0958, (555) 123-4567, 555.123.4567: 7+ digits joined by spaces, dots, dashes or brackets.
    "phone": re.compile(r"(?<![\w])\+?\(?\d{1,4}\)?(?:[\s.-]?\(?\d{2,4}\)?){2,5}(?![\w])"),
    # Card, account and ID numbers: 9 or more digits in a row.
    "digit_run": re.compile(r"\d{9,}"),
}
"""Kinds of personal data and the pattern of each (docs/stages.md lists them)."""

_MIN_PHONE_DIGITS = 7


def pii_kinds(text: str) -> list[str]:
    """The kinds of personal data found in `text` (empty when none)."""
    found = []
    for kind, pattern in PII_PATTERNS.items():
        for match in pattern.finditer(text):
            if kind != "phone" or sum(ch.isdigit() for ch in match.group()) >= _MIN_PHONE_DIGITS:
                found.append(kind)
                break
    return found
