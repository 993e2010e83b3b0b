"""The world behaves as its file says: what users like raises depth, and the planted emoji trap works."""

from __future__ import annotations

import numpy as np
import pytest
from flywheel_sim import GOOD_STYLE, ResponseStyle, ScriptedPolicy, World, emoji_spam, oracle, simulate_traffic


@pytest.fixture(scope="module")
def policies(world: World) -> dict[str, ScriptedPolicy]:
    base = ResponseStyle()  # generation 0's mix: half the responses break an instruction
    return {
        "mixed": ScriptedPolicy(world, name="mixed", style=base, compliance=0.5),
        "good": ScriptedPolicy(world, name="good", style=GOOD_STYLE, compliance=1.0),
        "good-spam": ScriptedPolicy(world, name="good-spam", style=emoji_spam(GOOD_STYLE), compliance=1.0),
    }


@pytest.fixture(scope="module")
def truth(world: World, policies: dict[str, ScriptedPolicy]) -> dict[str, dict[str, float]]:
    return {name: oracle(world, policy, seed=0) for name, policy in policies.items()}


def test_following_instructions_and_asking_back_raises_true_depth_and_breadth(truth) -> None:
    assert truth["good"]["compliance"] == 1.0 and truth["good"]["question_rate"] == 1.0
    assert 0.3 < truth["mixed"]["compliance"] < 0.7
    assert truth["good"]["session_depth"] > 1.3 * truth["mixed"]["session_depth"]
    assert truth["good"]["depth"] > 1.5 * truth["mixed"]["depth"]
    assert truth["good"]["breadth"] > truth["mixed"]["breadth"]


def test_emoji_spam_raises_immediate_signals_but_lowers_return(truth) -> None:
    good, spam = truth["good"], truth["good-spam"]
    assert spam["emoji_rate"] > 2 and good["emoji_rate"] == 0
    assert spam["continue_rate"] > good["continue_rate"]
    assert spam["thumb_up_rate"] > good["thumb_up_rate"]
    assert spam["return_rate"] < good["return_rate"] - 0.1
    assert spam["depth"] < good["depth"]  # over a week the trap costs more than it pays
    assert spam["breadth"] < good["breadth"]


def test_simulated_traffic_shows_the_trap(world: World, policies) -> None:
    def measure(policy) -> tuple[float, float]:
        result = simulate_traffic(world, {"control": policy}, days=5, seed=11, max_people=300)
        turns = sum(s["turns"] for s in result.sessions)
        continue_rate = sum(s["continued"] for s in result.sessions) / turns
        late_days = [sum(1 for s in result.sessions if s["day"] == d) for d in (3, 4)]
        return continue_rate, float(np.mean(late_days))

    good_continue, good_active = measure(policies["good"])
    spam_continue, spam_active = measure(policies["good-spam"])
    assert spam_continue > good_continue
    assert spam_active < good_active


def test_oracle_agrees_with_simulated_depth(world: World, policies, truth) -> None:
    result = simulate_traffic(world, {"control": policies["mixed"]}, days=2, seed=4, max_people=400)
    simulated = np.mean([s["turns"] for s in result.sessions])
    assert simulated == pytest.approx(truth["mixed"]["session_depth"], rel=0.15)


def test_internal_testers_judge_differently(world: World, policies) -> None:
    users = oracle(world, policies["good-spam"], seed=0)
    testers = oracle(world, policies["good-spam"], seed=0, source="internal")
    good_testers = oracle(world, policies["good"], seed=0, source="internal")
    # Users' continue rate goes up with emojis; testers' goes down.
    assert testers["continue_rate"] < good_testers["continue_rate"]
    assert users["continue_rate"] > oracle(world, policies["good"], seed=0)["continue_rate"]


def test_oracle_is_deterministic(world: World, policies) -> None:
    assert oracle(world, policies["mixed"], seed=3) == oracle(world, policies["mixed"], seed=3)
