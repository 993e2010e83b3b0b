"""Sticky A/B assignment by user hash."""

from __future__ import annotations

import pytest
from flywheel_sim import assign, bucket
from hypothesis import given
from hypothesis import strategies as st


@given(user=st.text(min_size=1, max_size=30), salt=st.text(max_size=10), percent=st.floats(0.5, 50))
def test_assignment_is_a_pure_function_of_salt_and_user(user: str, salt: str, percent: float) -> None:
    arm = assign(user, salt, percent)
    assert arm == assign(user, salt, percent)
    b = bucket(user, salt)
    assert 0 <= b < 100
    assert arm == ("treatment" if b < percent else "control" if b < 2 * percent else None)


@pytest.mark.parametrize("percent", [5, 10, 50])
def test_arm_shares_match_the_traffic_percent(percent: int) -> None:
    users = [f"user-{i}" for i in range(20_000)]
    arms = [assign(u, "exp", percent) for u in users]
    for arm in ("treatment", "control"):
        share = arms.count(arm) / len(users)
        tolerance = 4 * (percent / 100 * (1 - percent / 100) / len(users)) ** 0.5
        assert abs(share - percent / 100) < tolerance


def test_a_new_salt_reshuffles_users() -> None:
    users = [f"user-{i}" for i in range(4000)]
    same = sum(assign(u, "a", 50) == assign(u, "b", 50) for u in users) / len(users)
    assert 0.45 < same < 0.55


@pytest.mark.parametrize("percent", [0, -1, 50.5])
def test_traffic_percent_out_of_range_is_rejected(percent: float) -> None:
    with pytest.raises(ValueError, match="traffic_percent"):
        assign("u", "s", percent)
