"""Breadth, measured and oracle (issue 26, problem 7): the canary's breadth lift is read over the days the A/B ran
(often 2, after a pre-period day on the parent), where breadth — active on at least 2 distinct days — is a far
smaller share than over 7 days, so the same change in coming back reads as a several times larger relative lift.
Neither side was biased; the comparison set a 2-day figure beside a 7-day one. The oracle over the A/B's window
(`ab_window`) is what a measured lift estimates; it reads the simulated truth to within a third, where the 7-day
figure missed it several times over (bench/breadth.py has the table)."""

from __future__ import annotations

import pytest
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.store import EngagementStore
from flywheel_sim import ResponseStyle, ScriptedPolicy, TrafficSimulation, World
from flywheel_sim.oracle import ab_window, expected_engagement, paired_lift, summarise

PEOPLE = 2000
DAYS = 2
SEEDS = range(3)
DRAWS = 4


def _everyone_on(world: World, control, policy, seed: int) -> tuple[int, int]:
    """(engaged, exposed) after DAYS days with everyone on `policy`, after one pre-period day on `control`."""
    import json

    pre = TrafficSimulation(world, {"control": control, "treatment": control}, seed=seed, pre_days=1,
                            experiment="b", max_people=PEOPLE)
    pre.next_day()
    sim = TrafficSimulation(world, {"control": policy, "treatment": policy}, seed=seed, pre_days=1,
                            experiment="b", max_people=PEOPLE, state=pre.state)
    store = EngagementStore()
    for _ in range(DAYS):
        for event in sim.next_day().events:
            store.apply(parse_event(json.dumps(event)))
    arms = [a for a in store.arm_stats("b") if a is not None]
    return sum(a.engaged_users for a in arms), sum(a.users for a in arms)


@pytest.fixture(scope="module")
def policies(world: World) -> tuple[ScriptedPolicy, ScriptedPolicy]:
    return (ScriptedPolicy(world, name="control", style=ResponseStyle(), compliance=0.5),
            ScriptedPolicy(world, name="better", style=ResponseStyle(question=0.6), compliance=0.7))


def test_the_same_policy_on_both_arms_reads_exactly_zero(world: World, policies) -> None:
    control = expected_engagement(world, policies[0], draws=2)
    for draw in ab_window(world, control, control, days=DAYS, max_people=PEOPLE):
        assert draw["control"] == draw["treatment"]


@pytest.mark.slow
def test_the_oracle_over_the_ab_window_reads_the_simulated_truth_and_the_7_day_oracle_does_not(
    world: World, policies
) -> None:
    control, better = policies
    counts = {name: [_everyone_on(world, control, p, s) for s in SEEDS] for name, p in (("c", control),
                                                                                         ("t", better))}
    share = {k: sum(e for e, _ in v) / sum(n for _, n in v) for k, v in counts.items()}
    truth = share["t"] / share["c"] - 1
    ec, et = expected_engagement(world, control, draws=DRAWS), expected_engagement(world, better, draws=DRAWS)
    window = ab_window(world, ec, et, days=DAYS, pre_days=1, max_people=PEOPLE)
    oracle_window = paired_lift([w["control"]["breadth"] for w in window], [w["treatment"]["breadth"] for w in window])
    seven = paired_lift([summarise(world, e, seed=world.seed, draw=d)["breadth"] for d, e in enumerate(ec)],
                        [summarise(world, e, seed=world.seed, draw=d)["breadth"] for d, e in enumerate(et)])
    assert truth > 0.10  # a real change in coming back, several times the 7-day figure
    # the oracle over the window reads about 2/3 of the simulated truth (bench/breadth.py: +12.1 % against +18.1 %
    # at 2 days, +4.0 % against +5.2 % at 7): a residual the oracle's expected-value dynamics leave, far smaller
    # than the window's factor
    assert 0.5 * truth < oracle_window.estimate < 1.5 * truth
    assert seven.estimate < 0.5 * truth  # the old comparison: a 7-day lift beside a 2-day one
