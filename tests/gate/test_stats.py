"""The pure statistics against reference values (scipy's and R's) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flywheel_operator.gate import stats
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats


def sums(values: tuple[float, ...]) -> stats.Moments:
    array = np.asarray(values, dtype=float)
    return stats.moments(len(array), float(array.sum()), float((array**2).sum()))


# ------------------------------------------------------------------------------------- reference values
@pytest.mark.parametrize(
    ("a", "b", "t_ref", "p_ref"),
    [
        # scipy.stats tests, test_ttest_ind_with_uneq_var ("check vs. R")
        ((1, 2, 3), (1.1, 2.9, 4.2), -0.68649512735572582, 0.53619490753126731),
        ((1, 2, 3, 4), (1.1, 2.9, 4.2), -0.2108663315950719, 0.84354139131608286),
    ],
)
def test_welch_matches_scipy_reference_values(a, b, t_ref, p_ref) -> None:
    # scipy's t is mean(a) − mean(b); ours is treatment − control, so a is the treatment
    t, _, p = stats.welch_test(sums(b), sums(a))
    assert t == pytest.approx(t_ref, rel=1e-10)
    assert p == pytest.approx(p_ref, rel=1e-9)


def test_welch_degrees_of_freedom_match_scipy_from_stats() -> None:
    a, b = (1.0, 4.0, 2.5, 7.0, 3.0), (2.0, 9.0, 11.0, 4.0)
    t, df, p = stats.welch_test(sums(b), sums(a))
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert (t, p) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-10)
    assert df == pytest.approx(reference.df, rel=1e-10)


def test_srm_chi_square_by_hand() -> None:
    # 550 vs 450 users against a 50/50 split: χ² = 50²/500 + 50²/500 = 10, p = P(χ²₁ > 10) = erfc(√5)
    result = stats.sample_ratio_mismatch(550, 450, 0.5)
    assert result is not None
    assert result.chi2 == pytest.approx(10.0)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(5.0)), rel=1e-12)


def test_srm_with_an_uneven_split() -> None:
    # 90/10 split, 1000 users: expected 900/100; observed 880/120 -> χ² = 400/900 + 400/100
    result = stats.sample_ratio_mismatch(880, 120, 0.1)
    assert result is not None
    assert result.chi2 == pytest.approx(400 / 900 + 4.0)
    assert result.p_value == pytest.approx(float(scipy_stats.chi2.sf(400 / 900 + 4.0, 1)), rel=1e-12)


@pytest.mark.parametrize(("control", "treatment", "share"), [(5000, 5200, 0.5), (9100, 870, 0.1), (120, 80, 0.3)])
def test_srm_matches_scipy_chisquare(control: int, treatment: int, share: float) -> None:
    total = control + treatment
    reference = scipy_stats.chisquare([control, treatment], f_exp=[total * (1 - share), total * share])
    result = stats.sample_ratio_mismatch(control, treatment, share)
    assert result is not None
    assert (result.chi2, result.p_value) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-10)


def test_srm_waits_for_enough_users() -> None:
    assert stats.sample_ratio_mismatch(30, 3, 0.1) is None


def test_cuped_hand_computed_case() -> None:
    # Control: X = (1, 2, 3), Y = (2, 4, 7); treatment: X = (2, 4), Y = (5, 8).
    # Within-arm centred sums: control Sxy = (-1)(-2.333)+0+(1)(2.667) = 5, Sxx = 2; treatment Sxy = 3, Sxx = 2.
    # θ = (5 + 3) / (2 + 2) = 2. Pooled X̄ = 12/5 = 2.4.
    # Adjusted means: control 13/3 − 2(2 − 2.4) = 13/3 + 0.8; treatment 6.5 − 2(3 − 2.4) = 5.3.
    # Variances: control σ²Y = 7/1... = 6.3333, σ²X = 1, σXY = 2.5 -> 6.3333 + 4 − 10 = 0.3333;
    #            treatment σ²Y = 4.5, σ²X = 2, σXY = 3 -> 4.5 + 8 − 12 = 0.5.
    control = stats.CupedArm(n=3, sum_y=13, sum_y2=4 + 16 + 49, sum_x=6, sum_x2=14, sum_xy=2 + 8 + 21)
    treatment = stats.CupedArm(n=2, sum_y=13, sum_y2=25 + 64, sum_x=6, sum_x2=20, sum_xy=10 + 32)
    result = stats.cuped(control, treatment)
    assert result.theta == pytest.approx(2.0)
    assert result.control.mean == pytest.approx(13 / 3 + 0.8)
    assert result.treatment.mean == pytest.approx(5.3)
    assert result.control.variance == pytest.approx(1 / 3)
    assert result.treatment.variance == pytest.approx(0.5)
    # The CUPED Δ of the anchors: (ȲT − θX̄T) − (ȲC − θX̄C) = (6.5 − 6) − (13/3 − 4)
    assert result.treatment.mean - result.control.mean == pytest.approx(0.5 - 1 / 3)
    raw = 19 / 3 / 3 + 4.5 / 2
    assert result.variance_reduction == pytest.approx(1 - (1 / 9 + 0.25) / raw)


def test_cuped_matches_the_regression_on_raw_users() -> None:
    rng = np.random.default_rng(7)
    x = rng.gamma(2.0, 2.0, size=4000)
    y = 0.8 * x + rng.normal(0, 1, size=4000)
    arm = rng.integers(0, 2, size=4000).astype(bool)
    y[arm] += 0.3

    def summarise(mask: np.ndarray) -> stats.CupedArm:
        return stats.CupedArm(
            n=int(mask.sum()),
            sum_y=float(y[mask].sum()),
            sum_y2=float((y[mask] ** 2).sum()),
            sum_x=float(x[mask].sum()),
            sum_x2=float((x[mask] ** 2).sum()),
            sum_xy=float((x[mask] * y[mask]).sum()),
        )

    result = stats.cuped(summarise(~arm), summarise(arm))
    centred = [(x[m] - x[m].mean(), y[m] - y[m].mean()) for m in (~arm, arm)]
    theta = sum(float(cx @ cy) for cx, cy in centred) / sum(float(cx @ cx) for cx, _ in centred)
    adjusted = y - theta * (x - x.mean())
    assert result.theta == pytest.approx(theta, rel=1e-9)
    assert result.treatment.mean - result.control.mean == pytest.approx(
        adjusted[arm].mean() - adjusted[~arm].mean(), rel=1e-9
    )
    assert result.treatment.variance == pytest.approx(adjusted[arm].var(ddof=1), rel=1e-6)
    assert result.variance_reduction > 0.5


def test_relative_lift_delta_method_against_simulation() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    estimates = []
    for _ in range(400):
        c = rng.exponential(2.0, size=n)
        t = rng.exponential(2.2, size=n)
        estimates.append(t.mean() / c.mean() - 1)
    c = rng.exponential(2.0, size=n)
    t = rng.exponential(2.2, size=n)
    lift = stats.relative_lift(sums(tuple(c)), sums(tuple(t)))
    assert lift is not None
    assert lift.standard_error == pytest.approx(float(np.std(estimates)), rel=0.15)


def test_ratio_metric_delta_method_against_simulation() -> None:
    rng = np.random.default_rng(5)
    n = 1500

    def draw() -> tuple[np.ndarray, np.ndarray]:
        sessions = rng.poisson(3.0, size=n) + 1
        turns = rng.poisson(2.5 * sessions)
        return turns.astype(float), sessions.astype(float)

    ratios = [m.sum() / d.sum() for m, d in (draw() for _ in range(400))]
    m, d = draw()
    ratio = stats.ratio_metric(
        n, float(m.sum()), float((m**2).sum()), float(d.sum()), float((d**2).sum()), float((m * d).sum())
    )
    assert ratio.mean == pytest.approx(m.sum() / d.sum())
    assert math.sqrt(ratio.variance / n) == pytest.approx(float(np.std(ratios)), rel=0.15)


def test_msprt_matches_the_anchor_formula_for_equal_arms() -> None:
    # ANCHORS.md: Λn = √(2σ²/(2σ²+nτ²)) · exp(n²τ²(ȲT−ȲC)² / (4σ²(2σ²+nτ²)))
    sigma2, n, tau, diff = 4.0, 500, 0.3, 0.35
    lift = stats.Lift(estimate=diff, variance=2 * sigma2 / n)
    expected = math.sqrt(2 * sigma2 / (2 * sigma2 + n * tau**2)) * math.exp(
        n**2 * tau**2 * diff**2 / (4 * sigma2 * (2 * sigma2 + n * tau**2))
    )
    result = stats.msprt(lift, tau=tau, alpha=0.05)
    assert result.likelihood_ratio == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(min(1.0, 1 / expected), rel=1e-12)


def test_msprt_interval_excludes_zero_exactly_when_p_is_below_alpha() -> None:
    for diff in np.linspace(0.0, 0.6, 61):
        result = stats.msprt(stats.Lift(estimate=float(diff), variance=0.01), tau=0.2, alpha=0.05)
        assert (result.lower > 0) == (result.p_value < 0.05)


# ------------------------------------------------------------------------------------------- invariants
counts = st.integers(min_value=2, max_value=10_000)


@st.composite
def arm_sums(draw: st.DrawFn) -> tuple[int, float, float]:
    n = draw(counts)
    mean = draw(st.floats(min_value=0.1, max_value=20.0))
    variance = draw(st.floats(min_value=0.01, max_value=100.0))
    total = n * mean
    return n, total, variance * (n - 1) + total * total / n


@given(arm_sums(), arm_sums())
def test_swapping_arms_flips_the_absolute_lift(c, t) -> None:
    a, b = stats.moments(*c), stats.moments(*t)
    forward, backward = stats.absolute_lift(a, b), stats.absolute_lift(b, a)
    assert forward.estimate == pytest.approx(-backward.estimate, abs=1e-9)
    assert forward.variance == pytest.approx(backward.variance)
    t_forward, _, p_forward = stats.welch_test(a, b)
    t_backward, _, p_backward = stats.welch_test(b, a)
    assert t_forward == pytest.approx(-t_backward, abs=1e-9)
    assert p_forward == pytest.approx(p_backward)


@given(arm_sums(), arm_sums(), st.integers(min_value=2, max_value=50))
def test_scaling_all_counts_keeps_the_point_estimate(c, t, k) -> None:
    a, b = stats.moments(*c), stats.moments(*t)
    scaled_a = stats.moments(c[0] * k, c[1] * k, c[2] * k)
    scaled_b = stats.moments(t[0] * k, t[1] * k, t[2] * k)
    assert stats.absolute_lift(scaled_a, scaled_b).estimate == pytest.approx(
        stats.absolute_lift(a, b).estimate, rel=1e-9, abs=1e-9
    )
    relative, scaled = stats.relative_lift(a, b), stats.relative_lift(scaled_a, scaled_b)
    assert relative is not None and scaled is not None
    assert scaled.estimate == pytest.approx(relative.estimate, rel=1e-9, abs=1e-12)
    assert scaled.variance <= relative.variance * 1.0001  # more users never widen the interval


@given(
    st.integers(min_value=10, max_value=100_000),
    st.integers(min_value=10, max_value=100_000),
    st.floats(min_value=0.01, max_value=0.99),
)
def test_srm_p_value_is_a_probability(control, treatment, share) -> None:
    result = stats.sample_ratio_mismatch(control, treatment, share)
    if result is not None:
        assert 0.0 <= result.p_value <= 1.0
        assert result.chi2 >= 0.0
