"""`sim://` URIs: what the local runner accepts and how it says no."""

from __future__ import annotations

import pytest
from flywheel_local.sources import (
    DEFAULT_TRAFFIC_DAYS,
    Generation0Uri,
    SimUriError,
    TrafficUri,
    is_sim,
    parse_sim_uri,
)
from hypothesis import given
from hypothesis import strategies as st


def test_plain_uris_parse_to_their_defaults() -> None:
    assert parse_sim_uri("sim://generation-0") == Generation0Uri()
    assert parse_sim_uri("sim://users") == TrafficUri(source="user", days=DEFAULT_TRAFFIC_DAYS)
    assert parse_sim_uri("sim://internal-testers") == TrafficUri(source="internal", days=DEFAULT_TRAFFIC_DAYS)


@given(days=st.integers(1, 10_000), people=st.integers(1, 10_000))
def test_traffic_parameters_round_trip(days: int, people: int) -> None:
    assert parse_sim_uri(f"sim://users?days={days}&people={people}") == TrafficUri("user", days, people)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("sim://moon", "unknown simulated resource"),
        ("sim://users?weeks=2", "unknown parameter"),
        ("sim://users?days=two", "whole number"),
        ("sim://users?days=0", "at least 1"),
        ("sim://generation-0?days=3", "unknown parameter"),
        ("s3://users", "expected sim://"),
    ],
)
def test_bad_uris_name_the_problem(uri: str, says: str) -> None:
    with pytest.raises(SimUriError, match=says):
        parse_sim_uri(uri)


def test_only_sim_uris_are_simulated() -> None:
    assert is_sim("sim://users")
    assert not is_sim("/data/logs.jsonl")
    assert not is_sim(None)
