"""Crossover (users seen in both arms) is judged like an SRM: above the tolerance the experiment is broken."""

from __future__ import annotations

import pytest
from flywheel_operator.gate.crossover import crossover_check
from hypothesis import given
from hypothesis import strategies as st


@given(exposed=st.integers(1, 10**7), data=st.data(), tolerance=st.floats(0, 0.5))
def test_fails_exactly_above_the_tolerance(exposed: int, data: st.DataObject, tolerance: float) -> None:
    crossed = data.draw(st.integers(0, exposed))
    check = crossover_check(crossed, exposed, tolerance)
    assert check.passed == (crossed / exposed <= tolerance)
    assert check.value == pytest.approx(crossed / exposed)
    if not check.passed:
        assert "not sticky" in check.message and "status.canary.routing" in check.message


def test_no_users_passes_and_bad_counts_are_refused() -> None:
    assert crossover_check(0, 0).passed
    with pytest.raises(ValueError, match="crossed"):
        crossover_check(5, 3)
    with pytest.raises(ValueError, match="tolerance"):
        crossover_check(0, 3, tolerance=1.5)
