"""Edges `make mutation` found unpinned in gate/events.py and gate/stats.py (issue 31): every problem of a refused
event is named, joined by "; ", and the SRM's observed share of a single user."""

from __future__ import annotations

import json

import pytest
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.stats import sequential_srm


def test_an_event_with_two_problems_names_both_joined_by_a_semicolon() -> None:
    line = json.dumps({"type": "exposure", "user_id": 5, "arm": "sideways", "ts": "2026-12-01T00:00:00Z"})
    with pytest.raises(ValueError) as refused:
        parse_event(line)
    problems = str(refused.value).split("; ")
    assert len(problems) >= 2, str(refused.value)
    assert all(p.startswith("field ") for p in problems), problems


@pytest.mark.parametrize(("control", "treatment", "share"), [(0, 1, 1.0), (1, 0, 0.0), (3, 1, 0.25)])
def test_the_observed_share_is_the_treatments_share_of_the_users_even_of_one(control, treatment, share) -> None:
    assert sequential_srm(control, treatment, 0.5).observed_treatment_share == share
    assert sequential_srm(0, 0, 0.3).observed_treatment_share == 0.3  # nobody yet: the configured split
