"""The simulated A/B's events reach the gate through the exporter's store, day by simulated day."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from flywheel_local.canary import PRE_DAYS, simulated_days
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.readers import read_local
from flywheel_operator.gate.store import DurableStore
from flywheel_sim import DEFAULT_WORLD, GOOD_STYLE, ScriptedPolicy, arm_stats, load_world, simulate_traffic

DAYS = 3


@pytest.fixture(scope="module")
def experiment():
    world = load_world(DEFAULT_WORLD)
    control = ScriptedPolicy(world, name="parent")
    treatment = ScriptedPolicy(world, name="candidate", style=GOOD_STYLE, compliance=0.9)
    return simulate_traffic(
        world,
        {"control": control, "treatment": treatment},
        days=DAYS,
        pre_days=PRE_DAYS,
        traffic_percent=50,
        experiment="gen1",
        max_people=150,
    )


def test_days_submitted_one_by_one_give_the_simulators_own_sums(experiment) -> None:
    by_day: dict[int, list[dict]] = {}
    for event in experiment.events:  # exposures precede their user's first engagement, on the same day
        by_day.setdefault(event.get("day", -1), []).append(event)
    durable = DurableStore(None)
    pending: list[dict] = []
    for day in sorted(by_day):
        pending += by_day[day]
        if day >= 0:
            assert durable.submit([parse_event(json.dumps(line)) for line in pending]) == []
            pending = []
    reading = read_local(durable.store, generation="gen1", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert reading.has_data
    assert (reading.control, reading.treatment) == arm_stats(experiment.events, "gen1")
    assert reading.control.engaged_users < reading.control.users  # breadth is not trivially 100 %


@pytest.mark.parametrize(
    ("duration", "days"),
    [(timedelta(hours=1), 1), (timedelta(days=1), 1), (timedelta(days=7), 7), (timedelta(days=7, hours=1), 8)],
)
def test_the_canary_simulates_enough_days_for_max_duration(duration: timedelta, days: int) -> None:
    assert simulated_days(duration) == days
