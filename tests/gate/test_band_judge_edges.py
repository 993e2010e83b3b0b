"""The judge-gap band and its neighbours at their edges (mutants `make mutation` found surviving in
gate/offline.py after issue 26): a gap exactly on the margin, the words that tell a reader which rule decided and
what to fix, the spec field a disabled check names, and the paired interval's width at perfect agreement and
perfect disagreement."""

from __future__ import annotations

import pytest
from flywheel_operator.api import OfflineGateSpec, OfflineMetrics, StyleStats, WinRateBand
from flywheel_operator.gate import evaluate_offline
from flywheel_operator.gate.offline import paired_difference_interval, wilson_interval
from hypothesis import given
from hypothesis import strategies as st

from tests.gate.arms import NOW

STYLE = StyleStats(emoji_rate=0.2, list_rate=0.0, mean_length=12.0, stock_phrase_rate=0.0)
INSIDE = "progress both see, not gaming"
REACHES = "the gap's interval reaches down to the margin"


def metrics(learned: float, judge: float | None, n: int | None = 200, *, correlation: float | None = None,
            ties: int | None = None, **changes: object) -> OfflineMetrics:
    base: dict[str, object] = {
        "win_rate_user": learned, "reward_win_rate_user": 0.9, "pairwise_win_rate_user": judge,
        "pairwise_win_correlation_user": correlation, "pairwise_ties_user": ties, "win_rate_user_n": n,
        "instruction_following": 0.9, "violation_rate": 0.1, "false_refusal_rate": 0.0, "style": STYLE,
        "parent_style": STYLE,
    }
    base.update(changes)
    return OfflineMetrics.model_validate(base)


def checks(m: OfflineMetrics, gate: OfflineGateSpec | None = None):
    return {c.name: c for c in evaluate_offline(gate or OfflineGateSpec(), m, now=NOW).checks}


def band(m: OfflineMetrics, gate: OfflineGateSpec | None = None):
    return checks(m, gate)["win-rate-band"]


# ----------------------------------------------------------------------------------------------- the margin
@pytest.mark.parametrize(
    ("learned", "judge", "n", "correlation", "margin"),
    [
        (0.75, 0.5, None, None, 0.25),  # an eval result without n: the gap is a point, exactly the margin
        (0.6, 0.6, None, None, 0.0),  # no margin at all, and the judge agrees exactly
        (0.5, 0.5, 200, 1.0, 0.0),  # paired outcomes that agree on every prompt: the interval is the point 0
    ],
)
def test_a_gap_whose_interval_ends_exactly_on_the_margin_is_within_it(
    learned: float, judge: float, n: int | None, correlation: float | None, margin: float
) -> None:
    """`maxJudgeGap` is the largest gap allowed, so a gap whose whole interval reaches it and no further is
    within the margin: the message says so (progress both models see), not that the interval merely reaches
    down to the margin."""
    _, high = paired_difference_interval(learned, judge, n, 0.0 if correlation is None else correlation)
    assert high == margin  # the edge case itself, to the last bit
    check = band(metrics(learned, judge, n, correlation=correlation),
                 OfflineGateSpec(win_rate_band=WinRateBand(max=0.99, max_judge_gap=margin)))
    assert check.passed
    assert INSIDE in check.message and REACHES not in check.message


@given(learned=st.floats(0.0, 1.0), judge=st.floats(0.0, 1.0), n=st.one_of(st.none(), st.integers(20, 2000)),
       r=st.one_of(st.none(), st.floats(-1.0, 1.0)), margin=st.floats(0.0, 0.5))
def test_the_message_says_which_side_of_the_margin_the_gaps_interval_lies(
    learned: float, judge: float, n: int | None, r: float | None, margin: float
) -> None:
    """Three verdicts a reader must tell apart: the whole interval at or below the margin (not gaming), straddling
    it (not shown to be gaming), entirely above it (likely gaming)."""
    check = band(metrics(learned, judge, n, correlation=r), OfflineGateSpec(win_rate_band=WinRateBand(
        max=0.99, max_judge_gap=margin)))
    low, high = paired_difference_interval(learned, judge, n, 0.0 if r is None else r)
    assert (INSIDE in check.message) == (high <= margin)
    assert (REACHES in check.message) == (low <= margin < high)
    assert ("likely gaming" in check.message) == (low > margin) == (not check.passed)


# ----------------------------------------------------------------------------------------------- no judge
def test_a_judge_that_learned_nothing_is_named_and_the_absolute_max_is_said_to_decide() -> None:
    """A pairwise RM that ties on most prompts: the message tells the reader why it was set aside (it learned
    nothing: look at the pairwise model's training) and which rule decided instead (the absolute max), whether
    the band passes or fails."""
    stopped = band(metrics(0.80, 0.5, 200, correlation=0.0, ties=150))
    assert not stopped.passed
    assert stopped.message.endswith(
        "the pairwise RM could not order candidate and parent on 150 of 200 prompts (a model that learned "
        "nothing), so it is no judge and the absolute max decides.")
    passed = band(metrics(0.58, 0.5, 200, correlation=0.0, ties=200))
    assert passed.passed
    assert passed.message.endswith(
        "(the pairwise RM could not order candidate and parent on 200 of 200 prompts (a model that learned "
        "nothing), so it is no judge and the absolute max decides).")
    assert passed.limit == "in [0.50, 0.65]"


def test_without_a_pairwise_model_the_message_says_none_was_trained_and_the_absolute_max_decides() -> None:
    stopped = band(metrics(0.80, None, 200))
    assert not stopped.passed and stopped.message.endswith(
        "; no independent judge was trained (no pairwise reward model), so the absolute max decides.")
    passed = band(metrics(0.58, None, 200))
    assert passed.passed and passed.message.endswith(
        "(no independent judge was trained (no pairwise reward model), so the absolute max decides).")


# ----------------------------------------------------------------------------------------------- disabled limits
@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("instruction-following", "min_instruction_following", 0.0),
        ("violation-rate", "max_violation_rate", 1.0),
        ("false-refusal-rate", "max_false_refusal_rate", 1.0),
        ("win-rate-divergence", "max_win_rate_divergence", 1.0),
    ],
)
def test_a_disabled_check_names_the_spec_field_that_disabled_it_as_users_write_it(
    name: str, field: str, value: float
) -> None:
    """The reader must find the setting in their Flywheel YAML: the message names it by its camelCase key."""
    key = OfflineGateSpec.model_fields[field].alias
    assert key is not None and key != field  # the YAML spelling, not the Python one
    gate = OfflineGateSpec.model_validate({key: value})
    check = checks(metrics(0.58, None, 200, win_rate_internal=0.2, win_rate_internal_n=200), gate)[name]
    assert check.passed and check.limit == "disabled"
    assert check.message.startswith(f"disabled ({key} {value:g} lets every value pass); measured ")


# ----------------------------------------------------------------------------------------------- the interval
def _half_widths(p1: float, p2: float, n: int) -> tuple[float, float, float, float]:
    """Each rate's Wilson half-widths on the side of the difference each limit needs."""
    l1, u1 = wilson_interval(p1, n)
    l2, u2 = wilson_interval(p2, n)
    return p1 - l1, u2 - p2, u1 - p1, p2 - l2


@given(p1=st.floats(0.2, 0.8), p2=st.floats(0.2, 0.8), n=st.integers(30, 2000))
def test_the_gaps_interval_spans_the_difference_of_the_widths_at_full_agreement_and_their_sum_at_none(
    p1: float, p2: float, n: int
) -> None:
    """The variance of a difference is v1 + v2 − 2 r s1 s2 (MOVER): outcomes that agree prompt by prompt
    (r = 1) leave only the difference of the two rates' uncertainties, opposite outcomes (r = −1) their sum,
    and any correlation in between lies between the two."""
    down1, up2, up1, down2 = _half_widths(p1, p2, n)
    d = p1 - p2
    low, high = paired_difference_interval(p1, p2, n, 1.0)
    # at r = 1 the width is the square root of a difference that cancels: its rounding error is about
    # sqrt(eps) times a width (1e-9 at p1 = p2), far under the widths (> 1e-3 for n <= 2000) a wrong formula gives
    assert d - low == pytest.approx(abs(down1 - up2), abs=1e-7)
    assert high - d == pytest.approx(abs(up1 - down2), abs=1e-7)
    low, high = paired_difference_interval(p1, p2, n, -1.0)
    assert d - low == pytest.approx(down1 + up2, abs=1e-12)
    assert high - d == pytest.approx(up1 + down2, abs=1e-12)
