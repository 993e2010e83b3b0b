"""The oracle with error bars (issue 26, problem 3): several draws of a policy's responses, lifts paired draw by
draw with a 95 % interval, and a verdict that says "tie" unless the interval excludes 0."""

from __future__ import annotations

import numpy as np
import pytest
from flywheel_sim import GOOD_STYLE, ResponseStyle, ScriptedPolicy, World, oracle
from flywheel_sim.oracle import Lift, oracle_draws, paired_lift, unpaired_lift, verdict
from hypothesis import given, settings
from hypothesis import strategies as st

DRAWS = 4


@pytest.fixture(scope="module")
def mixed(world: World) -> ScriptedPolicy:
    return ScriptedPolicy(world, name="mixed", style=ResponseStyle(), compliance=0.5)


@pytest.fixture(scope="module")
def mixed_draws(world: World, mixed: ScriptedPolicy) -> list[dict[str, float]]:
    return oracle_draws(world, mixed, draws=DRAWS, seed=0)


def test_draw_zero_is_the_single_draw_oracle_and_the_others_resample(world, mixed, mixed_draws) -> None:
    assert mixed_draws[0] == oracle(world, mixed, seed=0)
    assert len({round(d["compliance"], 6) for d in mixed_draws}) > 1  # new responses in every draw
    assert all(d["responses"] == mixed_draws[0]["responses"] for d in mixed_draws)


def test_a_policy_against_itself_is_a_tie_with_a_zero_lift(world, mixed, mixed_draws) -> None:
    again = oracle_draws(world, mixed, draws=DRAWS, seed=0)
    depth = paired_lift([d["depth"] for d in mixed_draws], [d["depth"] for d in again])
    breadth = paired_lift([d["breadth"] for d in mixed_draws], [d["breadth"] for d in again])
    assert depth.estimate == 0 and depth.interval == (0.0, 0.0)
    assert verdict(depth, breadth) == "tie"


def test_a_clearly_better_policy_is_truly_better_and_its_interval_is_paired(world, mixed_draws) -> None:
    good = oracle_draws(world, ScriptedPolicy(world, style=GOOD_STYLE, compliance=1.0), draws=DRAWS, seed=0)
    depth = paired_lift([d["depth"] for d in mixed_draws], [d["depth"] for d in good])
    breadth = paired_lift([d["breadth"] for d in mixed_draws], [d["breadth"] for d in good])
    assert depth.lower is not None and depth.lower > 0.3
    assert verdict(depth, breadth) == "truly better"
    # the same day draws on both sides: pairing removes their noise from the breadth lift
    unpaired = unpaired_lift([d["breadth"] for d in mixed_draws], [d["breadth"] for d in good])
    assert breadth.half_width is not None and unpaired.half_width is not None
    assert breadth.half_width < unpaired.half_width


@pytest.mark.parametrize(
    ("depth", "breadth", "expected"),
    [
        ((0.05, 0.01, 0.09), (0.01, -0.01, 0.03), "truly better"),
        ((0.05, -0.01, 0.11), (0.01, -0.01, 0.03), "tie"),
        ((0.05, 0.01, 0.09), (-0.03, -0.05, -0.01), "truly worse"),  # the trap: deeper, fewer come back
        ((-0.04, -0.07, -0.01), (0.02, -0.01, 0.05), "truly worse"),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), "tie"),
        ((0.05, None, None), (0.0, None, None), "truly better"),  # one draw: the point rule of earlier versions
        ((0.05, None, None), (-0.01, None, None), "truly worse"),
    ],
)
def test_the_verdict_reads_the_intervals(depth: tuple, breadth: tuple, expected: str) -> None:
    assert verdict(Lift(*depth, draws=8), Lift(*breadth, draws=8)) == expected


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(st.floats(1.0, 10.0), min_size=2, max_size=12),
    lift=st.floats(-0.5, 0.5),
    noise=st.floats(0.0, 0.2),
    seed=st.integers(0, 2**16),
)
def test_paired_lift_holds_the_ratio_of_means_inside_its_interval(base, lift, noise, seed) -> None:
    rng = np.random.default_rng(seed)
    parent = np.array(base)
    candidate = parent * (1 + lift) * (1 + noise * rng.standard_normal(len(parent)))
    found = paired_lift(parent, candidate)
    assert found.draws == len(base)
    assert found.estimate == pytest.approx(candidate.mean() / parent.mean() - 1)
    assert found.lower is not None and found.upper is not None
    assert found.lower <= found.estimate <= found.upper
    if noise == 0:  # an exact ratio draw by draw: nothing is uncertain
        assert found.half_width == pytest.approx(0, abs=1e-9)


def test_paired_lift_refuses_what_it_cannot_compare() -> None:
    with pytest.raises(ValueError, match="same number"):
        paired_lift([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="mean is 0"):
        paired_lift([0.0, 0.0], [1.0, 1.0])
    assert paired_lift([2.0], [3.0]).interval is None  # one draw: no interval
