"""An A/A test: a 7-day experiment of a policy against itself must not show a significant lift, except by
chance at the test's level. Judged with the gate's own statistics (flywheel_operator.gate.stats)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from flywheel_operator.api import CanarySpec, OnlineDecision, OnlineReading, PromotionSpec
from flywheel_operator.gate import decision_plan, evaluate_online, stats
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.store import EngagementStore
from flywheel_sim import FunctionPolicy, ScriptedPolicy, TrafficSimulation, World, system_message
from flywheel_sim.grammar import topic_of

SEEDS = range(40)
DAYS = 7
PEOPLE = 400
ALPHA = 0.05
START = datetime(2026, 1, 5, tzinfo=UTC)


def pooled_policy(world: World) -> FunctionPolicy:
    """Generation-0-like responses drawn from a fixed pool per character and topic: the same behaviour as a
    scripted policy at a fraction of the cost, so forty week-long experiments fit in the test budget."""
    scripted = ScriptedPolicy(world, name="pool")
    pool: dict[tuple[str, str], list[str]] = {}
    for character in world.characters:
        system = {"role": "system", "content": system_message(character)}
        for topic in character.topics:
            chats = [[system, {"role": "user", "content": f"tell me about {topic}."}]] * 12
            pool[(character.id, topic)] = scripted(chats, seed=len(pool))

    def respond(chats, seed):
        rng = np.random.default_rng(seed)
        answers = []
        for chat in chats:
            character = scripted.character_of(chat)
            options = pool[(character.id, topic_of(chat[-1]["content"], character))]
            answers.append(options[int(rng.integers(len(options)))])
        return answers

    return FunctionPolicy("pool", respond)


def gate_outcome(promotion: PromotionSpec, store: EngagementStore, day: int, previous: OnlineDecision | None):
    control, treatment = store.arm_stats("aa")
    now = START + timedelta(days=day)
    reading = OnlineReading(at=now, control=control, treatment=treatment)
    canary = CanarySpec(inference_service="chat", traffic_percent=50, min_duration="1d", max_duration=f"{DAYS}d")
    plan = decision_plan(promotion, canary, now=START)  # the plan the operator freezes (issue 25)
    return evaluate_online(plan, reading, elapsed=timedelta(days=day), previous=previous, now=now)


@pytest.mark.slow
def test_a_policy_against_itself_shows_no_lift_in_at_least_95_percent_of_seeds(world: World) -> None:
    """Per seed: a 7-day experiment read by the online gate once a day (its always-valid test, so daily looks
    are fine) and, at the end, a fixed-horizon Welch test of each success metric."""
    policy = pooled_policy(world)
    promotion = PromotionSpec(min_users_per_arm=100)
    promoted, welch_lifts = 0, {"breadth": 0, "depth": 0}
    for seed in SEEDS:
        sim = TrafficSimulation(
            world, {"control": policy, "treatment": policy}, seed=seed, max_people=PEOPLE, experiment="aa"
        )
        store, decision, final = EngagementStore(), None, None
        for day in range(1, DAYS + 1):
            for event in sim.next_day().events:
                store.apply(parse_event(json.dumps(event)))
            if final is None:
                decision = gate_outcome(promotion, store, day, decision)
                final = decision.outcome if decision.outcome != "CONTINUE" else None
        promoted += final == "PROMOTE"
        control, treatment = store.arm_stats("aa")
        assert control is not None and treatment is not None
        pairs = {
            "depth": [stats.moments(a.users, a.depth_sum, a.depth_sum_squares) for a in (control, treatment)],
            "breadth": [stats.proportion_moments(a.users, a.engaged_users) for a in (control, treatment)],
        }
        for metric, (c, t) in pairs.items():
            statistic, _, p_value = stats.welch_test(c, t)
            welch_lifts[metric] += p_value < ALPHA and statistic > 0
    assert promoted <= 0.05 * len(SEEDS), f"the gate promoted an identical policy in {promoted} of {len(SEEDS)}"
    for metric, count in welch_lifts.items():
        assert count <= 0.05 * len(SEEDS), f"{metric}: a significant Welch lift in {count} of {len(SEEDS)} seeds"
