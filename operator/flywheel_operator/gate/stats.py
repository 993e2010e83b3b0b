"""A/B statistics from per-arm sufficient statistics (pure functions; no I/O, no clocks).

Prometheus holds sums, not users, so every estimate here is computed from n, ΣY, ΣY² (and ΣX, ΣX², ΣXY for
CUPED). Formulas follow docs/metrics.md: Welch for differences of means, the delta method for relative lifts
and ratio metrics, CUPED (Deng et al. 2013) for variance reduction, the mixture SPRT (Johari et al., "Always
Valid Inference") for tests that stay valid however often they are looked at, and a beta-binomial mixture
e-value (Lindon & Malek's Dirichlet-multinomial test with two arms) for sample-ratio mismatch, valid at any look
cadence. The fixed-horizon χ² is kept for reporting only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

SRM_CONCENTRATION = 1000.0
"""Prior concentration of the beta mixture over the treatment share in the sequential SRM test: its prior
standard deviation around the configured share is about √(p(1−p)/1000) ≈ 1.6 points at 50/50, the size of split
bug (a dropped pod, a sticky-routing leak) the test should catch within a few thousand users."""


@dataclass(frozen=True)
class Moments:
    """Mean and sample variance of one arm's user-level metric, with its sample size."""

    n: int
    mean: float
    variance: float


@dataclass(frozen=True)
class Lift:
    """A treatment-minus-control comparison on one scale (absolute or relative)."""

    estimate: float
    """Point estimate of the difference (absolute) or of μT/μC − 1 (relative)."""
    variance: float
    """Variance of the estimate."""

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.variance)


@dataclass(frozen=True)
class SequentialResult:
    """The mixture SPRT at one look: its likelihood ratio, p-value and confidence sequence at level α."""

    likelihood_ratio: float
    p_value: float
    lower: float
    upper: float


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch test of the observed users per arm against the configured split."""

    chi2: float
    p_value: float
    expected_treatment_share: float


def moments(n: int, total: float, total_squares: float) -> Moments:
    """Mean and unbiased variance from n, ΣY, ΣY² (the variance is clipped at 0 against rounding)."""
    if n < 1:
        raise ValueError(f"moments need at least one user, got n={n}")
    mean = total / n
    if n == 1:
        return Moments(n=1, mean=mean, variance=0.0)
    variance = max((total_squares - total * total / n) / (n - 1), 0.0)
    return Moments(n=n, mean=mean, variance=variance)


def proportion_moments(n: int, successes: float) -> Moments:
    """A proportion as a mean of 0/1 user outcomes: μ = x/n, σ² = μ(1 − μ) (ANCHORS.md)."""
    if n < 1:
        raise ValueError(f"a proportion needs at least one user, got n={n}")
    p = successes / n
    return Moments(n=n, mean=p, variance=p * (1.0 - p))


def covariance(n: int, sum_x: float, sum_y: float, sum_xy: float) -> float:
    """Unbiased covariance from n, ΣX, ΣY, ΣXY."""
    if n < 2:
        return 0.0
    return (sum_xy - sum_x * sum_y / n) / (n - 1)


def absolute_lift(control: Moments, treatment: Moments) -> Lift:
    """Δ = μT − μC with Welch's variance σ²C/nC + σ²T/nT."""
    return Lift(
        estimate=treatment.mean - control.mean,
        variance=control.variance / control.n + treatment.variance / treatment.n,
    )


def relative_lift(control: Moments, treatment: Moments) -> Lift | None:
    """Δr = μT/μC − 1 by the delta method: Var = σ²C μT²/(μC⁴ nC) + σ²T/(μC² nT). None when μC = 0."""
    mc, mt = control.mean, treatment.mean
    if mc <= 0 or mc * mc == 0.0:
        return None
    ratio = mt / mc
    variance = (control.variance * ratio * ratio / control.n + treatment.variance / treatment.n) / (mc * mc)
    if not (math.isfinite(ratio) and math.isfinite(variance)):
        return None
    return Lift(estimate=ratio - 1.0, variance=variance)


def welch_test(control: Moments, treatment: Moments) -> tuple[float, float, float]:
    """Welch's t statistic, its Welch–Satterthwaite degrees of freedom and two-sided p-value (fixed
    horizon)."""
    vc, vt = control.variance / control.n, treatment.variance / treatment.n
    se2 = vc + vt
    if se2 <= 0:
        return 0.0, float(control.n + treatment.n - 2), 1.0
    t = (treatment.mean - control.mean) / math.sqrt(se2)
    denominator = (vc * vc / (control.n - 1) if control.n > 1 else 0.0) + (
        vt * vt / (treatment.n - 1) if treatment.n > 1 else 0.0
    )
    df = se2 * se2 / denominator if denominator > 0 else float(control.n + treatment.n - 2)
    p = 2.0 * float(special.stdtr(df, -abs(t)))
    return t, df, p


def z_test_p_value(lift: Lift) -> float:
    """Two-sided fixed-horizon p-value of a lift under the normal approximation (reported, never
    decided on)."""
    if lift.variance <= 0:
        return 1.0 if lift.estimate == 0 else 0.0
    return math.erfc(abs(lift.estimate) / lift.standard_error / math.sqrt(2.0))


def ratio_metric(n: int, sum_m: float, sum_m2: float, sum_d: float, sum_d2: float, sum_md: float) -> Moments:
    """A ratio of sums over users (e.g. turns per session) by the delta method (Deng et al. 2018).

    μ = ΣM/ΣD and Var(μ) = (σ²M − 2(μM/μD)σMD + σ²D μM²/μD²)/(n μD²). The returned `variance` is n·Var(μ)
    so that `absolute_lift`/`relative_lift`, which divide by n, treat a ratio metric like a plain mean.
    """
    if n < 2 or sum_d <= 0:
        raise ValueError(f"a ratio metric needs n >= 2 and a positive denominator sum, got n={n}, ΣD={sum_d}")
    m = moments(n, sum_m, sum_m2)
    d = moments(n, sum_d, sum_d2)
    cov_md = covariance(n, sum_m, sum_d, sum_md)
    ratio = m.mean / d.mean
    per_user = (m.variance - 2.0 * ratio * cov_md + d.variance * ratio * ratio) / (d.mean * d.mean)
    return Moments(n=n, mean=sum_m / sum_d, variance=max(per_user, 0.0))


@dataclass(frozen=True)
class CupedArm:
    """One arm's sums for CUPED: the metric Y and its pre-period covariate X."""

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float


@dataclass(frozen=True)
class CupedResult:
    """CUPED-adjusted moments of both arms, the pooled θ and the share of variance removed."""

    control: Moments
    treatment: Moments
    theta: float
    variance_reduction: float


def cuped(control: CupedArm, treatment: CupedArm) -> CupedResult:
    """CUPED: θ = cov(Y, X)/var(X) pooled within arms; each arm's mean is Ȳ − θ(X̄ − X̄pooled) and its
    per-user variance σ²Y + θ²σ²X − 2θσXY. Centring on the pooled X̄ keeps the control mean on the metric's
    scale, so relative lifts stay meaningful; the difference of adjusted means is the CUPED Δ of ANCHORS.md.
    """
    within_xy = 0.0
    within_xx = 0.0
    for arm in (control, treatment):
        if arm.n >= 2:
            within_xy += covariance(arm.n, arm.sum_x, arm.sum_y, arm.sum_xy) * (arm.n - 1)
            within_xx += moments(arm.n, arm.sum_x, arm.sum_x2).variance * (arm.n - 1)
    theta = within_xy / within_xx if within_xx > 0 else 0.0
    pooled_x = (control.sum_x + treatment.sum_x) / (control.n + treatment.n)

    def adjust(arm: CupedArm) -> tuple[Moments, float]:
        y = moments(arm.n, arm.sum_y, arm.sum_y2)
        x = moments(arm.n, arm.sum_x, arm.sum_x2)
        cov = covariance(arm.n, arm.sum_x, arm.sum_y, arm.sum_xy)
        variance = max(y.variance + theta * theta * x.variance - 2.0 * theta * cov, 0.0)
        return Moments(n=arm.n, mean=y.mean - theta * (x.mean - pooled_x), variance=variance), y.variance

    adjusted_c, raw_c = adjust(control)
    adjusted_t, raw_t = adjust(treatment)
    raw = raw_c / control.n + raw_t / treatment.n
    kept = adjusted_c.variance / control.n + adjusted_t.variance / treatment.n
    reduction = 1.0 - kept / raw if raw > 0 else 0.0
    return CupedResult(control=adjusted_c, treatment=adjusted_t, theta=theta, variance_reduction=reduction)


def msprt(lift: Lift, *, tau: float, alpha: float, null: float = 0.0) -> SequentialResult:
    """Mixture SPRT with a N(null, τ²) mixing distribution over the effect, for an estimate with variance V.

    Λ = √(V/(V+τ²)) · exp((Δ−null)²τ² / (2V(V+τ²))); with V = 2σ²/n this is the formula of ANCHORS.md.
    The p-value 1/Λ and the confidence sequence Δ ± √(V(V+τ²)/τ² · (2 log(1/α) + log((V+τ²)/V))) hold at
    every look; callers keep them always-valid across looks by taking the running minimum of p and the running
    intersection of the intervals.
    """
    if tau <= 0:
        raise ValueError(f"the mixing scale tau must be positive, got {tau}")
    v = lift.variance
    t2 = tau * tau
    if v <= 0:
        # A degenerate variance (all users identical): no evidence can be weighed; nothing is decided.
        return SequentialResult(likelihood_ratio=1.0, p_value=1.0, lower=-math.inf, upper=math.inf)
    delta = lift.estimate - null
    log_lr = 0.5 * math.log(v / (v + t2)) + delta * delta * t2 / (2.0 * v * (v + t2))
    p_value = math.exp(-log_lr) if log_lr > 0 else 1.0
    half_width = math.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((v + t2) / v)))
    return SequentialResult(
        likelihood_ratio=math.exp(min(log_lr, 700.0)),
        p_value=min(p_value, 1.0),
        lower=lift.estimate - half_width,
        upper=lift.estimate + half_width,
    )


def sample_ratio_mismatch(control_users: int, treatment_users: int, treatment_share: float) -> SrmResult | None:
    """χ² of the observed users per arm against the expected split; None while an expected count
    is below 5."""
    if not 0.0 < treatment_share < 1.0:
        raise ValueError(f"the expected treatment share must be in (0, 1), got {treatment_share}")
    total = control_users + treatment_users
    expected = [total * (1.0 - treatment_share), total * treatment_share]
    if min(expected) < 5:
        return None
    observed = (control_users, treatment_users)
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    return SrmResult(chi2=chi2, p_value=float(special.chdtrc(1, chi2)), expected_treatment_share=treatment_share)


@dataclass(frozen=True)
class SequentialSrm:
    """The anytime-valid sample-ratio test at one look: the mixture e-value and its p-value 1/E."""

    log_e_value: float
    p_value: float
    expected_treatment_share: float
    observed_treatment_share: float


def sequential_srm(
    control_users: int, treatment_users: int, treatment_share: float, *, concentration: float = SRM_CONCENTRATION
) -> SequentialSrm:
    """Beta-binomial mixture likelihood ratio of the users per arm against the configured split.

    Each exposed user is an independent draw of the arm with P(treatment) = p₀ under a correct split, so
    E = B(t + a, c + b) / B(a, b) / (p₀ᵗ (1 − p₀)ᶜ) with a = κp₀, b = κ(1 − p₀) is a non-negative martingale
    over users (Lindon & Malek 2022, two arms). By Ville's inequality P(supₙ E ≥ 1/α) ≤ α, and E depends only
    on the current counts: the test holds at any look cadence (every minute, every user) with no state to carry.
    """
    if not 0.0 < treatment_share < 1.0:
        raise ValueError(f"the expected treatment share must be in (0, 1), got {treatment_share}")
    if control_users < 0 or treatment_users < 0:
        raise ValueError(f"user counts must be non-negative, got {control_users}, {treatment_users}")
    a, b = concentration * treatment_share, concentration * (1.0 - treatment_share)
    c, t = float(control_users), float(treatment_users)
    log_e = (
        float(special.betaln(t + a, c + b) - special.betaln(a, b))
        - t * math.log(treatment_share)
        - c * math.log1p(-treatment_share)
    )
    total = c + t
    return SequentialSrm(
        log_e_value=log_e,
        p_value=math.exp(-log_e) if log_e > 0 else 1.0,
        expected_treatment_share=treatment_share,
        observed_treatment_share=t / total if total > 0 else treatment_share,
    )


def clustered_rate(
    users: int, events: float, events_squares: float, responses: float, responses_squares: float, cross: float
) -> Moments:
    """A rate per response (guardrail events / responses) with its user-clustered variance.

    Responses of one user are correlated (one user hitting the same refusal again and again), so the rate is a
    ratio of per-user sums, ΣG/ΣR, and its variance comes from the delta method over users (Deng et al. 2018,
    `ratio_metric`) with the exporter's per-user sums ΣG², ΣR², ΣGR. `n` is the users, so `absolute_lift`
    divides by the number of independent units, not by the responses.
    """
    return ratio_metric(users, events, events_squares, responses, responses_squares, cross)


def normal_quantile(probability: float) -> float:
    """Φ⁻¹(p), the critical value of a fixed-horizon z-test."""
    return float(special.ndtri(probability))
