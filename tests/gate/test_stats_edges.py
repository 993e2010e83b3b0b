"""flywheel_operator.gate.stats at its edges and against independent formulas (issue 31: the mutants `make mutation`
found surviving here: a proportion's variance, the degenerate CUPED covariate, the fixed p-value of a certain
lift, the guards on n)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flywheel_operator.gate import stats
from scipy import special
from scipy import stats as scipy_stats


# ----------------------------------------------------------------------------------------------- moments
def test_moments_from_sums_match_numpy_and_guard_n() -> None:
    values = np.array([0.0, 1.0, 4.0, 9.0])
    m = stats.moments(4, values.sum(), (values**2).sum())
    assert (m.n, m.mean) == (4, values.mean()) and m.variance == pytest.approx(values.var(ddof=1))
    assert stats.moments(1, 3.0, 9.0) == stats.Moments(n=1, mean=3.0, variance=0.0)
    assert stats.moments(2, 2.0, 1.999999).variance == 0.0  # rounding below (Σy)²/n is clipped at 0
    with pytest.raises(ValueError, match="moments need at least one user, got n=0"):
        stats.moments(0, 0.0, 0.0)


def test_a_proportion_has_the_bernoulli_variance() -> None:
    assert stats.proportion_moments(4, 1) == stats.Moments(n=4, mean=0.25, variance=0.1875)
    assert stats.proportion_moments(1, 1) == stats.Moments(n=1, mean=1.0, variance=0.0)
    assert stats.proportion_moments(10, 0).variance == 0.0
    with pytest.raises(ValueError, match="a proportion needs at least one user, got n=0"):
        stats.proportion_moments(0, 0)


def test_covariance_is_unbiased_and_zero_below_two_users() -> None:
    x, y = np.array([1.0, 2.0, 4.0]), np.array([2.0, 3.0, 7.0])
    assert stats.covariance(3, x.sum(), y.sum(), (x * y).sum()) == pytest.approx(np.cov(x, y)[0, 1])
    assert stats.covariance(1, 1.0, 2.0, 2.0) == 0.0


# ------------------------------------------------------------------------------------------------- lifts
def test_lifts_by_hand() -> None:
    c, t = stats.Moments(n=100, mean=2.0, variance=4.0), stats.Moments(n=50, mean=3.0, variance=9.0)
    absolute = stats.absolute_lift(c, t)
    assert absolute.estimate == 1.0 and absolute.variance == pytest.approx(4.0 / 100 + 9.0 / 50)
    relative = stats.relative_lift(c, t)
    assert relative is not None and relative.estimate == pytest.approx(0.5)
    assert relative.variance == pytest.approx((4.0 * 1.5**2 / 100 + 9.0 / 50) / 4.0)
    assert relative.standard_error == pytest.approx(math.sqrt(relative.variance))
    assert stats.relative_lift(stats.Moments(n=5, mean=0.0, variance=0.0), t) is None
    assert stats.relative_lift(stats.Moments(n=5, mean=-1.0, variance=1.0), t) is None
    assert stats.relative_lift(stats.Moments(n=5, mean=1e-300, variance=1.0), t) is None  # μC² underflows


def test_welch_of_two_certain_arms_decides_nothing() -> None:
    c = stats.Moments(n=10, mean=1.0, variance=0.0)
    assert stats.welch_test(c, stats.Moments(n=7, mean=5.0, variance=0.0)) == (0.0, 15.0, 1.0)


def test_welch_with_a_single_user_arm_matches_scipy() -> None:
    c, t = stats.Moments(n=1, mean=1.0, variance=2.0), stats.Moments(n=30, mean=2.0, variance=3.0)
    t_stat, df, p = stats.welch_test(c, t)
    se2 = 2.0 / 1 + 3.0 / 30
    assert t_stat == pytest.approx(1.0 / math.sqrt(se2))
    assert df == pytest.approx(se2**2 / ((3.0 / 30) ** 2 / 29))  # the n = 1 arm adds no term
    assert p == pytest.approx(2 * scipy_stats.t.sf(abs(t_stat), df))


@pytest.mark.parametrize(("estimate", "variance", "expected"), [(0.0, 0.0, 1.0), (0.2, 0.0, 0.0), (-0.2, 0.0, 0.0)])
def test_a_certain_lift_has_p_one_or_zero(estimate: float, variance: float, expected: float) -> None:
    assert stats.z_test_p_value(stats.Lift(estimate=estimate, variance=variance)) == expected


@pytest.mark.parametrize("variance", [0.25, 0.5, 4.0])
def test_the_fixed_p_value_is_the_two_sided_normal_tail(variance: float) -> None:
    lift = stats.Lift(estimate=-0.3, variance=variance)
    assert stats.z_test_p_value(lift) == pytest.approx(2 * scipy_stats.norm.sf(0.3 / math.sqrt(variance)))


def test_a_ratio_metric_needs_two_users_and_a_positive_denominator() -> None:
    with pytest.raises(ValueError, match="n >= 2 and a positive denominator sum"):
        stats.ratio_metric(1, 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="ΣD=0"):
        stats.ratio_metric(5, 1.0, 1.0, 0.0, 0.0, 0.0)


# ------------------------------------------------------------------------------------------------- CUPED
def arm(x: np.ndarray, y: np.ndarray) -> stats.CupedArm:
    return stats.CupedArm(n=len(x), sum_y=y.sum(), sum_y2=(y**2).sum(), sum_x=x.sum(), sum_x2=(x**2).sum(),
                          sum_xy=(x * y).sum())


def test_cuped_with_a_constant_covariate_changes_nothing() -> None:
    """A covariate with no spread (every user new: X = 0) carries no information: θ = 0, the means and variances
    are the raw ones, and nothing is divided by its zero variance."""
    y1, y2 = np.array([1.0, 2.0, 6.0]), np.array([2.0, 2.0, 5.0, 9.0])
    result = stats.cuped(arm(np.zeros(3), y1), arm(np.zeros(4), y2))
    assert result.theta == 0.0 and result.variance_reduction == pytest.approx(0.0, abs=1e-12)
    assert result.control.mean == pytest.approx(y1.mean()) and result.control.variance == pytest.approx(y1.var(ddof=1))
    assert result.treatment.variance == pytest.approx(y2.var(ddof=1))


def test_cuped_of_a_metric_without_spread_reports_no_reduction() -> None:
    x = np.array([1.0, 2.0, 3.0])
    result = stats.cuped(arm(x, np.full(3, 2.0)), arm(x + 1, np.full(3, 2.0)))
    assert result.variance_reduction == 0.0 and result.theta == pytest.approx(0.0, abs=1e-12)


def test_cuped_of_a_metric_the_covariate_explains_removes_all_its_variance() -> None:
    x1, x2 = np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 4.0, 7.0])
    result = stats.cuped(arm(x1, 2 * x1 + 1), arm(x2, 2 * x2 + 1.5))
    assert result.theta == pytest.approx(2.0) and result.variance_reduction == pytest.approx(1.0)
    assert result.treatment.mean - result.control.mean == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------- mSPRT
def test_msprt_refuses_a_non_positive_tau_and_decides_nothing_without_variance() -> None:
    with pytest.raises(ValueError, match="tau must be positive, got 0"):
        stats.msprt(stats.Lift(0.1, 0.01), tau=0.0, alpha=0.05)
    degenerate = stats.msprt(stats.Lift(0.5, 0.0), tau=0.1, alpha=0.05)
    assert (degenerate.p_value, degenerate.lower, degenerate.upper) == (1.0, -math.inf, math.inf)
    assert degenerate.likelihood_ratio == 1.0


def test_msprt_by_the_formula() -> None:
    v, tau, alpha, delta = 0.0004, 0.05, 0.01, 0.03
    result = stats.msprt(stats.Lift(delta, v), tau=tau, alpha=alpha)
    log_lr = 0.5 * math.log(v / (v + tau**2)) + delta**2 * tau**2 / (2 * v * (v + tau**2))
    assert result.likelihood_ratio == pytest.approx(math.exp(log_lr))
    assert result.p_value == pytest.approx(min(1.0, math.exp(-log_lr)))
    half = math.sqrt(v * (v + tau**2) / tau**2 * (2 * math.log(1 / alpha) + math.log((v + tau**2) / v)))
    assert (result.lower, result.upper) == pytest.approx((delta - half, delta + half))
    null = stats.msprt(stats.Lift(0.0, v), tau=tau, alpha=alpha)  # no evidence: Λ < 1, p capped at 1
    assert null.p_value == 1.0 and null.likelihood_ratio < 1.0
    shifted = stats.msprt(stats.Lift(0.03, v), tau=tau, alpha=alpha, null=0.03)
    assert shifted.p_value == 1.0


# ----------------------------------------------------------------------------------------------------- SRM
def test_the_fixed_srm_waits_for_five_expected_users_per_arm() -> None:
    assert stats.sample_ratio_mismatch(45, 4, 0.1) is None  # 4.9 expected in treatment
    result = stats.sample_ratio_mismatch(45, 5, 0.1)
    assert result is not None and result.chi2 == pytest.approx(0.0)
    assert result.p_value == pytest.approx(1.0) and result.expected_treatment_share == 0.1
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="expected treatment share must be in"):
            stats.sample_ratio_mismatch(10, 10, share)


def test_the_sequential_srm_by_the_formula_and_its_guards() -> None:
    c, t, share, kappa = 520, 480, 0.5, stats.SRM_CONCENTRATION
    a, b = kappa * share, kappa * (1 - share)
    log_e = special.betaln(t + a, c + b) - special.betaln(a, b) - t * math.log(share) - c * math.log(1 - share)
    result = stats.sequential_srm(c, t, share)
    assert result.log_e_value == pytest.approx(log_e)
    assert result.p_value == (math.exp(-log_e) if log_e > 0 else 1.0)
    assert result.observed_treatment_share == 0.48 and result.expected_treatment_share == 0.5
    assert stats.sequential_srm(0, 0, 0.3).observed_treatment_share == 0.3  # no users: the expected share
    assert stats.sequential_srm(9_000, 8_000, 0.5).p_value < 1e-6
    with pytest.raises(ValueError, match="user counts must be non-negative"):
        stats.sequential_srm(-1, 5, 0.5)
    with pytest.raises(ValueError, match="expected treatment share must be in"):
        stats.sequential_srm(5, 5, 1.0)


def test_welch_with_single_user_arms() -> None:
    c, t = stats.Moments(n=30, mean=1.0, variance=2.0), stats.Moments(n=1, mean=2.0, variance=3.0)
    _, df, _ = stats.welch_test(c, t)
    assert df == pytest.approx((2.0 / 30 + 3.0) ** 2 / ((2.0 / 30) ** 2 / 29))  # the n = 1 arm adds no term
    both = stats.welch_test(stats.Moments(n=1, mean=1.0, variance=2.0), stats.Moments(n=1, mean=2.0, variance=3.0))
    assert both[0] == pytest.approx(1.0 / math.sqrt(5.0)) and both[1] == 0.0  # no degrees of freedom left


def test_a_ratio_metric_of_two_users_is_defined() -> None:
    ratio = stats.ratio_metric(2, 3.0, 5.0, 2.0, 2.0, 3.0)
    assert ratio.n == 2 and ratio.mean == 1.5
