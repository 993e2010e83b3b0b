"""flywheel_operator.arms: the one definition of who is in which arm, and which endpoint answers them (issue 31:
pinned edge by edge, so a mutated comparison or default changes a test's outcome)."""

from __future__ import annotations

import hashlib

import pytest
from flywheel_operator.arms import ARMS, assign, bucket, endpoint_for
from hypothesis import given
from hypothesis import strategies as st

ROUTING = {"salt": "ns/gen2/uid", "trafficPercent": 10, "endpoints": {"control": "http://c", "treatment": "http://t"}}


def users_in(low: float, high: float, salt: str = "ns/gen2/uid") -> str:
    """The first user id `u<k>` whose bucket under `salt` lies in [low, high)."""
    return next(f"u{k}" for k in range(100_000) if low <= bucket(f"u{k}", salt) < high)


def test_the_bucket_is_the_first_eight_bytes_of_the_salted_hash_scaled_to_100() -> None:
    digest = hashlib.sha256(b"salt:user").digest()
    assert bucket("user", "salt") == int.from_bytes(digest[:8], "big") / 2**64 * 100.0
    assert bucket("user", "salt") != bucket("salt", "user")  # salt first, then the user


@given(user=st.text(min_size=1, max_size=20), salt=st.text(max_size=20))
def test_buckets_lie_in_0_to_100(user: str, salt: str) -> None:
    assert 0.0 <= bucket(user, salt) < 100.0


def test_treatment_below_the_percent_control_below_twice_it_the_rest_outside() -> None:
    assert assign(users_in(0, 10), "ns/gen2/uid", 10) == "treatment"
    assert assign(users_in(10, 20), "ns/gen2/uid", 10) == "control"
    assert assign(users_in(20, 100), "ns/gen2/uid", 10) is None
    assert assign(users_in(49, 50), "ns/gen2/uid", 50) == "treatment"
    assert assign(users_in(50, 100), "ns/gen2/uid", 50) == "control"  # 50 %: everybody is in an arm


@given(user=st.text(min_size=1, max_size=12), percent=st.floats(min_value=0.01, max_value=50))
def test_the_arm_follows_the_bucket(user: str, percent: float) -> None:
    b = bucket(user, "s")
    expected = "treatment" if b < percent else "control" if b < 2 * percent else None
    assert assign(user, "s", percent) == expected
    assert expected is None or expected in ARMS


@pytest.mark.parametrize("percent", [0, -1, 50.01, 100])
def test_a_percent_outside_0_to_50_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match=r"traffic_percent must be in \(0, 50\]"):
        assign("u", "s", percent)


def test_50_percent_is_allowed() -> None:
    assert assign("u", "s", 50) in ARMS


def test_each_arm_is_answered_by_its_endpoint_and_outsiders_by_the_control() -> None:
    assert endpoint_for(users_in(0, 10), ROUTING, default="http://isvc") == "http://t"
    assert endpoint_for(users_in(10, 20), ROUTING, default="http://isvc") == "http://c"
    assert endpoint_for(users_in(20, 100), ROUTING, default="http://isvc") == "http://c"


@pytest.mark.parametrize("routing", [None, {}, {"salt": "s", "trafficPercent": 10, "endpoints": {}}])
def test_without_endpoints_everybody_gets_the_default(routing) -> None:
    assert endpoint_for(users_in(0, 10, "s"), routing, default="http://isvc") == "http://isvc"


def test_routing_values_from_json_are_read_as_text_and_numbers() -> None:
    """The status is JSON: the percent may arrive as a string or an int, the endpoint and salt as other types."""
    routing = {"salt": 7, "trafficPercent": "10", "endpoints": {"control": 1, "treatment": 2}}
    user = users_in(0, 10, "7")
    assert endpoint_for(user, routing, default="d") == "2"
