"""The simulated clock only moves forward and survives a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flywheel_local.clock import SimulatedClock
from hypothesis import given
from hypothesis import strategies as st

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)


@given(jumps=st.lists(st.integers(-10_000, 100_000), max_size=8))
def test_the_clock_never_goes_back(tmp_path_factory, jumps: list[int]) -> None:
    clock = SimulatedClock(tmp_path_factory.mktemp("clock") / "clock.json", wall=lambda: T0)
    latest = clock.now()
    for seconds in jumps:
        clock.jump_to(T0 + timedelta(seconds=seconds))
        assert clock.now() >= latest
        latest = clock.now()
    assert latest == T0 + timedelta(seconds=max([0, *jumps]))


def test_a_restarted_clock_keeps_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    SimulatedClock(path, wall=lambda: T0).jump_to(T0 + timedelta(days=3))
    assert SimulatedClock(path, wall=lambda: T0 + timedelta(seconds=5)).now() == T0 + timedelta(days=3, seconds=5)
