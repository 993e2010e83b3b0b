"""The offline guard's checks as a reader of the status sees them (issue 31: mutants `make mutation` found
surviving): each check's value, limit, n and words, the divergence's n and skip rule, and the intervals against
published values."""

from __future__ import annotations

import math

import pytest
from flywheel_operator.api import OfflineGateSpec, OfflineMetrics, StyleStats
from flywheel_operator.gate import evaluate_offline
from flywheel_operator.gate.offline import absolute_difference_interval, ratio_interval, wilson_interval

from tests.gate.arms import NOW

STYLE = StyleStats(emoji_rate=0.4, list_rate=0.1, mean_length=40.0, stock_phrase_rate=0.05)
GATE = OfflineGateSpec(min_instruction_following=0.85, max_violation_rate=0.05)


def checks(gate: OfflineGateSpec = GATE, **changes: object):
    base: dict[str, object] = {
        "win_rate_user": 0.58,
        "win_rate_internal": 0.55,
        "instruction_following": 0.95,
        "violation_rate": 0.01,
        "false_refusal_rate": 0.01,
        "style": STYLE,
        "parent_style": STYLE,
    }
    base.update(changes)
    result = evaluate_offline(gate, OfflineMetrics.model_validate(base), now=NOW)
    return {c.name: c for c in result.checks}, result


@pytest.mark.parametrize(
    ("name", "field", "n_field", "limit"),
    [
        ("instruction-following", "instruction_following", "instruction_responses", ">= 0.850"),
        ("violation-rate", "violation_rate", "instruction_responses", "<= 0.050"),
        ("false-refusal-rate", "false_refusal_rate", "benign_prompts", "<= 0.050"),
        ("win-rate-band", "win_rate_user", "win_rate_user_n", "in [0.50, 0.65]"),
    ],
)
def test_each_check_reports_its_value_limit_n_and_interval(name: str, field: str, n_field: str, limit: str) -> None:
    check = checks(**{field: 0.6 if name == "win-rate-band" else 0.03, n_field: 300})[0][name]
    assert check.value == (0.6 if name == "win-rate-band" else 0.03) and check.limit == limit and check.n == 300
    assert check.interval == list(wilson_interval(check.value, 300))
    assert f"is {check.value:.3f} (95 % CI [{check.interval[0]:.3f}, {check.interval[1]:.3f}], n=300)" in check.message


def test_without_an_n_the_words_say_the_point_decides() -> None:
    check = checks(violation_rate=0.03)[0]["violation-rate"]
    assert check.n is None and check.interval == [0.03, 0.03]
    assert check.message == (
        "share of responses that break a character instruction is 0.030 (n unknown: point estimate)."
    )


def test_a_failed_check_says_why_in_its_reason() -> None:
    named, result = checks(violation_rate=0.2, instruction_responses=400, instruction_following=0.5, benign_prompts=400,
                           false_refusal_rate=0.3)
    assert named["violation-rate"].message.endswith(", surely above the maximum 0.050.")
    assert named["instruction-following"].message.endswith(", surely below the minimum 0.850.")
    assert any(r.startswith("violation-rate: share of responses that break a character instruction is 0.200")
               for r in result.reasons)
    assert any(r.startswith("false-refusal-rate: share of benign prompts refused is 0.300") for r in result.reasons)
    assert any(r.startswith("instruction-following: share of responses that follow every character instruction")
               for r in result.reasons)
    assert not result.passed


def test_a_disabled_limit_keeps_the_measurement() -> None:
    """A maximum of 1 (the default for violations) lets everything pass, but the check still shows what was
    measured, on how many responses, and which setting disabled it."""
    named, _ = checks(OfflineGateSpec(), violation_rate=0.4, instruction_responses=250, instruction_following=0.2)
    violation = named["violation-rate"]
    assert violation.passed and violation.limit == "disabled" and violation.value == 0.4 and violation.n == 250
    assert violation.message == "disabled (maxViolationRate 1 lets every value pass); measured 0.400."
    following = named["instruction-following"]
    assert following.passed
    assert following.message == "disabled (minInstructionFollowing 0 lets every value pass); measured 0.200."


def test_the_divergence_is_measured_from_one_internal_prompt_on_and_reports_the_smaller_n() -> None:
    skipped = checks(win_rate_internal_n=0)[0]["win-rate-divergence"]
    assert skipped.passed and skipped.value is None and skipped.n == 0 and skipped.limit == "<= 0.10"
    assert skipped.message.startswith("skipped: no internal prompts were evaluated")
    one = checks(win_rate_internal_n=1, win_rate_user_n=500)[0]["win-rate-divergence"]
    assert one.value == pytest.approx(0.03) and one.n == 1 and one.limit == "<= 0.10"
    both = checks(win_rate_internal_n=700, win_rate_user_n=500)[0]["win-rate-divergence"]
    assert both.n == 500 and both.interval == list(absolute_difference_interval(0.58, 500, 0.55, 700))
    assert both.message == (
        "win rates on user (0.580) and internal (0.550) prompts differ by 0.030"
        f" (95 % CI [{both.interval[0]:.3f}, {both.interval[1]:.3f}], n=500)."
    )
    far = checks(win_rate_user=0.707, win_rate_internal=0.437, win_rate_internal_n=300, win_rate_user_n=300)
    message = far[0]["win-rate-divergence"].message
    assert message.endswith(", surely more than 0.10: a red flag for reward hacking (V12).")


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "low", "high"),
    [(56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090)],
)
def test_the_difference_interval_is_newcombes(x1, n1, x2, n2, low, high) -> None:
    """Newcombe (1998), Table II, method 10 (hybrid score): the published limits to four places."""
    lower, upper = absolute_difference_interval(x1 / n1, n1, x2 / n2, n2)
    assert (round(lower, 4), round(upper, 4)) == (low, high)
    assert absolute_difference_interval(x2 / n2, n2, x1 / n1, n1) == pytest.approx((lower, upper))  # |p1 − p2|


def test_the_ratio_interval_with_a_correlation_is_mover_r() -> None:
    """Donner & Zou (2012), eq. 6–7 with a correlation r between the paired means."""
    p1, p2, r = 0.3, 0.2, 0.6
    (l1, u1), (l2, u2) = wilson_interval(p1, 100), wilson_interval(p2, 100)
    lower, upper = ratio_interval(p1, p2, (l1, u1), (l2, u2), r)
    b = p1 * p2 - r * (p1 - l1) * (u2 - p2)
    expected_lower = (b - math.sqrt(b * b - l1 * u2 * (2 * p1 - l1) * (2 * p2 - u2))) / (u2 * (2 * p2 - u2))
    b = p1 * p2 - r * (u1 - p1) * (p2 - l2)
    expected_upper = (b + math.sqrt(b * b - u1 * l2 * (2 * p1 - u1) * (2 * p2 - l2))) / (l2 * (2 * p2 - l2))
    assert lower == pytest.approx(expected_lower) and upper == pytest.approx(expected_upper)
    # a positive correlation narrows the interval of a paired ratio
    wide = ratio_interval(p1, p2, (l1, u1), (l2, u2), 0.0)
    assert wide[0] < lower < p1 / p2 < upper < wide[1]


def test_the_ratio_interval_when_the_parents_interval_reaches_past_twice_its_mean() -> None:
    """A rare artifact on few prompts (5 % of 20): the parent's upper limit is more than twice its mean, the
    quadratic's leading term is negative, and the lower limit is still the MOVER-R root (above 1 here)."""
    p1, p2 = 0.3, 0.05
    (l1, u1), (l2, u2) = wilson_interval(p1, 20), wilson_interval(p2, 20)
    lower, _ = ratio_interval(p1, p2, (l1, u1), (l2, u2), 0.0)
    a, b, c = u2 * (2 * p2 - u2), p1 * p2, l1 * (2 * p1 - l1)
    assert a < 0 and lower == pytest.approx((b - math.sqrt(b * b - a * c)) / a) and lower > 1.0


def test_a_mean_style_drift_uses_both_models_spreads() -> None:
    """Emojis per response (a mean, not a share) with both models' spreads: the MOVER-R interval of the ratio,
    not the older interval of the paired difference."""
    named, _ = checks(style=STYLE.model_copy(update={"emoji_rate": 0.6}), style_responses=200,
                      style_sd={"emoji_rate": 0.9}, parent_style_sd={"emoji_rate": 0.8},
                      style_difference_sd={"emoji_rate": 0.7})
    drift = named["style-drift.emoji_rate"]
    own, base = (m - 1.959963984540054 * sd / math.sqrt(200) for m, sd in ((0.6, 0.9), (0.4, 0.8)))
    r = (0.9**2 + 0.8**2 - 0.7**2) / (2 * 0.9 * 0.8)
    low, high = ratio_interval(0.6, 0.4, (own, 1.2 - own), (base, 0.8 - base), r)
    assert drift.interval == pytest.approx([low - 1, high - 1]) and drift.n == 200


def test_the_band_check_says_what_it_measured() -> None:
    band = checks(win_rate_user=0.58, win_rate_user_n=400)[0]["win-rate-band"]
    assert band.message.startswith("pointwise-RM win rate on user prompts is 0.580 (95 % CI [")
