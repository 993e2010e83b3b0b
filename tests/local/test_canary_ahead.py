"""The A/B test's first day may be simulated while eval runs, before the deployment (issue 29): the deployment that
is the plan takes it, and every day's logs and the state are those of a canary that simulated them when due; a
deployment that is not the plan, or none, leaves nothing of it behind."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from flywheel_local.canary import AHEAD, CanaryState, SimulatedCanary
from flywheel_operator.planner import DeployCanary
from flywheel_sim import DEFAULT_WORLD

PEOPLE = 30
SEED = 5
SETTINGS = {"experiment": "tiny1", "days": 2, "seed": SEED, "people": PEOPLE}


@pytest.fixture(scope="module")
def user_traffic(user_traffic_of: Callable[[int, int], Path]) -> Path:
    return user_traffic_of(PEOPLE, SEED)


def _action(gen0: Path, traffic_percent: int = 50) -> DeployCanary:
    return DeployCanary(inference_service="chat", mode="standard", traffic_percent=traffic_percent,
                        candidate_policy=str(gen0), control_policy=str(gen0))


def _plan(gen0: Path) -> CanaryState:
    return CanaryState(control_policy=str(gen0), candidate_policy=str(gen0), traffic_percent=50, **SETTINGS)


def _files(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _when_due(directory: Path, gen0: Path, user_traffic: Path) -> dict[str, str]:
    canary = SimulatedCanary(directory, DEFAULT_WORLD, user_traffic=user_traffic)
    canary.deploy(_action(gen0), **SETTINGS)
    try:
        canary._day_events(1)
    finally:
        canary.close()
    return _files(directory / "traffic")


def test_the_planned_deployment_takes_the_day_simulated_ahead(gen0: Path, user_traffic: Path, tmp_path: Path):
    expected = _when_due(tmp_path / "due", gen0, user_traffic)
    notes: list[str] = []
    canary = SimulatedCanary(tmp_path / "ahead", DEFAULT_WORLD, notes.append, user_traffic=user_traffic)
    canary.simulate_ahead(_plan(gen0))
    canary.simulate_ahead(_plan(gen0))  # once only
    assert not (canary.directory / "traffic").exists()  # nothing is revealed before the deployment
    canary.deploy(_action(gen0), **SETTINGS)
    try:
        assert (canary.directory / "traffic" / "day-0.events.jsonl").is_file()
        assert not (canary.directory / AHEAD).exists()
        assert canary._worker is not None  # the simulation goes on with the policies it loaded
        canary._day_events(1)
    finally:
        canary.close()
    assert _files(canary.directory / "traffic") == expected
    assert any("simulated ahead" in note for note in notes)


def test_another_deployment_drops_the_day_simulated_ahead(gen0: Path, user_traffic: Path, tmp_path: Path):
    canary = SimulatedCanary(tmp_path / "other", DEFAULT_WORLD, user_traffic=user_traffic)
    canary.simulate_ahead(_plan(gen0))
    canary.deploy(_action(gen0, traffic_percent=30), **SETTINGS)
    try:
        assert not (canary.directory / "traffic").exists() and not (canary.directory / AHEAD).exists()
    finally:
        canary.close()


def test_no_deployment_leaves_nothing_behind(gen0: Path, user_traffic: Path, tmp_path: Path):
    canary = SimulatedCanary(tmp_path / "gate-failed", DEFAULT_WORLD, user_traffic=user_traffic)
    canary.simulate_ahead(_plan(gen0))
    canary.close()  # the offline gate failed: the generation ends
    assert not (canary.directory / AHEAD).exists() and not (canary.directory / "traffic").exists()


def test_a_day_that_fails_ahead_is_left_to_the_deployment(gen0: Path, user_traffic: Path, tmp_path: Path):
    notes: list[str] = []
    canary = SimulatedCanary(tmp_path / "failing", DEFAULT_WORLD, notes.append, user_traffic=user_traffic)
    missing = CanaryState(control_policy=str(gen0), candidate_policy=str(tmp_path / "missing"), traffic_percent=50,
                          **SETTINGS)
    canary.simulate_ahead(missing)
    canary.deploy(DeployCanary(inference_service="chat", mode="standard", traffic_percent=50,
                               candidate_policy=str(tmp_path / "missing"), control_policy=str(gen0)), **SETTINGS)
    try:
        assert not (canary.directory / "traffic").exists() and not (canary.directory / AHEAD).exists()
    finally:
        canary.close()
    assert any("could not be simulated ahead" in note for note in notes)
