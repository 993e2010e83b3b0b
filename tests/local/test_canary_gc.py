"""The canary simulates its days with the runner's heap out of the garbage collector's full passes, and only then."""

from __future__ import annotations

import gc
from datetime import timedelta
from pathlib import Path

import pytest
from flywheel_local.canary import SimulatedCanary
from flywheel_operator.planner.actions import DeployCanary


def _canary(directory: Path) -> SimulatedCanary:
    canary = SimulatedCanary(directory, directory / "world.yaml")
    action = DeployCanary(
        inference_service="chat",
        mode="standard",
        traffic_percent=50,
        candidate_policy="candidate",
        control_policy="parent",
    )
    canary.deploy(action, experiment="gen1", days=3, seed=1, people=None)
    return canary


def test_days_are_revealed_with_the_heap_frozen_and_it_thaws_after(tmp_path: Path, monkeypatch) -> None:
    canary = _canary(tmp_path)
    frozen_while_simulating: list[int] = []

    def day_events(index: int) -> list[dict]:
        frozen_while_simulating.append(gc.get_freeze_count())
        return []

    monkeypatch.setattr(canary, "_day_events", day_events)
    assert gc.get_freeze_count() == 0
    assert canary.reveal(timedelta(days=2)) == 2
    assert len(frozen_while_simulating) == 2 and all(count > 0 for count in frozen_while_simulating)
    assert gc.get_freeze_count() == 0


def test_a_failing_day_thaws_the_heap_too(tmp_path: Path, monkeypatch) -> None:
    canary = _canary(tmp_path)

    def day_events(index: int) -> list[dict]:
        raise RuntimeError("the policy process ended")

    monkeypatch.setattr(canary, "_day_events", day_events)
    with pytest.raises(RuntimeError, match="policy process"):
        canary.reveal(timedelta(days=1))
    assert gc.get_freeze_count() == 0
    assert canary.state is not None and canary.state.revealed_days == 0
