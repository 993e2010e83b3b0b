"""The online gate: from one reading of both arms' sufficient statistics to PROMOTE / ROLL_BACK / CONTINUE /
INCONCLUSIVE, with every number and reason (pure; the caller passes `now` and the previous decision).

Decision rule (docs/metrics.md, after Spotify's): promote only when at least one success metric (breadth
or depth) is significantly better by its minimum lift, no success metric is significantly worse, every
guardrail is significantly non-inferior within its margin, the split matches the configuration, and the canary
has run for `min_duration`. Harm (a sample-ratio mismatch, a guardrail significantly worse than its margin, a
success metric significantly worse) rolls back at any time. Significance comes from the always-valid mSPRT,
so looking every few minutes does not inflate the false-positive rate: the two success metrics share α
(Bonferroni), guardrails each use α (all of them must pass, an intersection-union test needs no correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from flywheel_operator.api import (
    ArmStats,
    GateCheck,
    OnlineDecision,
    OnlineReading,
    PromotionSpec,
)
from flywheel_operator.gate import stats

SUCCESS_METRICS = ("breadth", "depth")


@dataclass(frozen=True)
class MetricVerdict:
    """One success metric at one look: its relative lift and always-valid interval (running intersection)."""

    name: str
    lift: float
    lower: float
    upper: float
    p_value: float
    minimum_lift: float

    @property
    def better(self) -> bool:
        return self.lower > self.minimum_lift

    @property
    def worse(self) -> bool:
        return self.upper < 0.0


@dataclass(frozen=True)
class GuardrailVerdict:
    """One guardrail: the rate difference (treatment − control) and its always-valid interval."""

    name: str
    margin: float
    difference: float
    lower: float
    upper: float

    @property
    def non_inferior(self) -> bool:
        return self.upper < self.margin

    @property
    def breached(self) -> bool:
        return self.lower > self.margin


def evaluate_online(
    promotion: PromotionSpec,
    reading: OnlineReading,
    *,
    traffic_percent: int,
    elapsed: timedelta,
    min_duration: timedelta,
    max_duration: timedelta,
    previous: OnlineDecision | None,
    now: datetime,
) -> OnlineDecision:
    """Decide on one reading. Never PROMOTE without data, on an SRM, or before `min_duration`; a CONTINUE at
    or past `max_duration` becomes INCONCLUSIVE. `previous` carries the running p-values and intervals that
    keep the sequential test always-valid across looks."""
    numbers: dict[str, float] = {
        "elapsed_hours": elapsed.total_seconds() / 3600.0,
        "alpha": promotion.alpha,
        "traffic_percent": float(traffic_percent),
    }
    carried = _running_state(previous)
    numbers.update(carried)  # kept through outages and early looks; this look's values overwrite them
    out_of_time = elapsed >= max_duration

    if not reading.has_data or not _both_arms_have_users(reading):
        why = reading.error or "an arm has no exposed users yet"
        check = GateCheck(name="data", passed=False, message=f"No data: {why}.")
        return _finish(
            "INCONCLUSIVE" if out_of_time else "CONTINUE",
            [f"no data: {why}", *(_out_of_time_reason(max_duration) if out_of_time else [])],
            numbers,
            [check],
            now,
        )
    control, treatment = reading.control, reading.treatment
    assert control is not None and treatment is not None  # has_data guarantees both
    checks: list[GateCheck] = [GateCheck(name="data", passed=True, message="Both arms reported data.")]
    numbers["users.control"] = float(control.users)
    numbers["users.treatment"] = float(treatment.users)

    harm: list[str] = []
    srm_check = _srm(promotion, control, treatment, traffic_percent, numbers)
    checks.append(srm_check)
    if not srm_check.passed:
        harm.append(srm_check.message)

    enough = min(control.users, treatment.users) >= promotion.min_users_per_arm
    success_alpha = promotion.alpha / len(SUCCESS_METRICS)
    verdicts: list[MetricVerdict] = []
    guardrails: list[GuardrailVerdict] = []
    waiting: list[str] = []
    if not enough:
        waiting.append(
            f"each arm needs {promotion.min_users_per_arm} users before lifts are judged "
            f"(control {control.users}, treatment {treatment.users})"
        )
    else:
        verdicts = [
            _breadth(promotion, control, treatment, success_alpha, carried, numbers),
            _depth(promotion, control, treatment, success_alpha, carried, numbers),
        ]
        _depth_per_engaged(control, treatment, numbers)
        guardrails, unmeasured = _guardrails(promotion, control, treatment, carried, numbers)
        waiting.extend(unmeasured)
    for verdict in verdicts:
        checks.append(_metric_check(verdict))
        if verdict.worse:
            harm.append(
                f"{verdict.name} is significantly worse: relative lift {verdict.lift:+.2%}, "
                f"always-valid interval [{verdict.lower:+.2%}, {verdict.upper:+.2%}]"
            )
    for guardrail in guardrails:
        checks.append(_guardrail_check(guardrail))
        if guardrail.breached:
            harm.append(
                f"guardrail {guardrail.name} is breached: rate difference {guardrail.difference:+.4f} "
                f"with interval [{guardrail.lower:+.4f}, {guardrail.upper:+.4f}] "
                f"above the margin {guardrail.margin}"
            )
    if harm:
        return _finish("ROLL_BACK", harm, numbers, checks, now)

    winners = [v for v in verdicts if v.better]
    unproven = [g for g in guardrails if not g.non_inferior]
    if winners and not unproven and not waiting:
        wins = "; ".join(
            f"{v.name} lift {v.lift:+.2%} in [{v.lower:+.2%}, {v.upper:+.2%}] > {v.minimum_lift:.2%}" for v in winners
        )
        if elapsed >= min_duration:
            checks.append(GateCheck(name="min-duration", passed=True, message="The canary ran long enough."))
            return _finish(
                "PROMOTE",
                [f"significantly better: {wins}", "every guardrail is non-inferior"],
                numbers,
                checks,
                now,
            )
        checks.append(
            GateCheck(
                name="min-duration",
                passed=False,
                value=numbers["elapsed_hours"],
                limit=f">= {min_duration.total_seconds() / 3600:g}h",
                message="The candidate wins but has not run for the minimum duration yet.",
            )
        )
        reasons = [f"significantly better ({wins}) but minDuration is not reached yet"]
    else:
        reasons = list(waiting)
        if not winners and verdicts:
            reasons.append("no success metric is significantly better yet")
        reasons.extend(
            f"guardrail {g.name} is not yet shown non-inferior (upper bound {g.upper:+.4f} vs margin {g.margin})"
            for g in unproven
        )
    if out_of_time:
        return _finish("INCONCLUSIVE", [*reasons, *_out_of_time_reason(max_duration)], numbers, checks, now)
    return _finish("CONTINUE", reasons, numbers, checks, now)


# ----------------------------------------------------------------------------------------------- pieces
def _both_arms_have_users(reading: OnlineReading) -> bool:
    return (
        reading.control is not None
        and reading.treatment is not None
        and min(reading.control.users, reading.treatment.users) > 0
    )


def _out_of_time_reason(max_duration: timedelta) -> list[str]:
    return [f"maxDuration ({max_duration.total_seconds() / 3600:g}h) reached without a decision"]


def _running_state(previous: OnlineDecision | None) -> dict[str, float]:
    """The numbers that make the sequential test always-valid across looks: running p-values and intervals."""
    if previous is None:
        return {}
    suffixes = (".p_value", ".lower", ".upper")
    return {k: v for k, v in previous.numbers.items() if k.endswith(suffixes) and not k.startswith("srm.")}


def _intersect(name: str, result: stats.SequentialResult, carried: dict[str, float]) -> tuple[float, float, float]:
    """Running intersection of the confidence sequence and running minimum of the p-value."""
    lower = max(result.lower, carried.get(f"{name}.lower", -math.inf))
    upper = min(result.upper, carried.get(f"{name}.upper", math.inf))
    if lower > upper:  # the plug-in variance moved enough to empty the intersection: trust the present look
        lower, upper = result.lower, result.upper
    p_value = min(result.p_value, carried.get(f"{name}.p_value", 1.0))
    return lower, upper, p_value


def _put_interval(numbers: dict[str, float], name: str, lower: float, upper: float, p_value: float) -> None:
    """Store finite bounds only: a status holds JSON numbers, and an infinite bound carries no information."""
    numbers[f"{name}.p_value"] = p_value
    if math.isfinite(lower):
        numbers[f"{name}.lower"] = lower
    if math.isfinite(upper):
        numbers[f"{name}.upper"] = upper


def _srm(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    traffic_percent: int,
    numbers: dict[str, float],
) -> GateCheck:
    control_percent = promotion.control_percent or (100 - traffic_percent)
    share = traffic_percent / (traffic_percent + control_percent)
    result = stats.sample_ratio_mismatch(control.users, treatment.users, share)
    limit = f"p >= {promotion.srm_p_value}"
    if result is None:
        return GateCheck(name="srm", passed=True, limit=limit, message="Too few users to test the split yet.")
    numbers["srm.chi2"] = result.chi2
    numbers["srm.p_value"] = result.p_value
    numbers["srm.expected_treatment_share"] = share
    observed = treatment.users / (control.users + treatment.users)
    if result.p_value < promotion.srm_p_value:
        return GateCheck(
            name="srm",
            passed=False,
            value=result.p_value,
            limit=limit,
            message=(
                f"sample ratio mismatch: treatment share {observed:.4f} vs expected {share:.4f} "
                f"(χ² = {result.chi2:.1f}, p = {result.p_value:.2e}); the experiment is broken, "
                "fix the assignment"
            ),
        )
    return GateCheck(name="srm", passed=True, value=result.p_value, limit=limit, message="The split matches.")


def _breadth(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    alpha: float,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> MetricVerdict:
    c = stats.proportion_moments(control.users, control.engaged_users)
    t = stats.proportion_moments(treatment.users, treatment.engaged_users)
    return _judge("breadth", c, t, promotion.min_breadth_lift, promotion.sequential_tau, alpha, carried, numbers)


def _depth(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    alpha: float,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> MetricVerdict:
    c = stats.moments(control.users, control.depth_sum, control.depth_sum_squares)
    t = stats.moments(treatment.users, treatment.depth_sum, treatment.depth_sum_squares)
    numbers["depth.raw_control"] = c.mean
    numbers["depth.raw_treatment"] = t.mean
    welch_t, _, welch_p = stats.welch_test(c, t)
    numbers["depth.welch_t"] = welch_t
    numbers["depth.welch_p_value"] = welch_p
    if promotion.cuped and _has_covariate(control) and _has_covariate(treatment):
        result = stats.cuped(_cuped_arm(control), _cuped_arm(treatment))
        numbers["depth.cuped_theta"] = result.theta
        numbers["depth.cuped_variance_reduction"] = result.variance_reduction
        c, t = result.control, result.treatment
    return _judge("depth", c, t, promotion.min_depth_lift, promotion.sequential_tau, alpha, carried, numbers)


def _judge(
    name: str,
    control: stats.Moments,
    treatment: stats.Moments,
    minimum_lift: float,
    tau: float,
    alpha: float,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> MetricVerdict:
    numbers[f"{name}.control"] = control.mean
    numbers[f"{name}.treatment"] = treatment.mean
    absolute = stats.absolute_lift(control, treatment)
    numbers[f"{name}.lift_absolute"] = absolute.estimate
    relative = stats.relative_lift(control, treatment)
    if relative is None:  # the control never engaged: no relative lift exists yet
        return MetricVerdict(name, 0.0, -math.inf, math.inf, 1.0, minimum_lift)
    numbers[f"{name}.lift"] = relative.estimate
    numbers[f"{name}.lift_se"] = relative.standard_error
    numbers[f"{name}.fixed_p_value"] = stats.z_test_p_value(relative)
    sequential = stats.msprt(relative, tau=tau, alpha=alpha)
    lower, upper, p_value = _intersect(name, sequential, carried)
    _put_interval(numbers, name, lower, upper, p_value)
    return MetricVerdict(name, relative.estimate, lower, upper, p_value, minimum_lift)


def _depth_per_engaged(control: ArmStats, treatment: ArmStats, numbers: dict[str, float]) -> None:
    """Turns per engaged user, a ratio metric (delta method), reported to explain a depth lift, never decided on:
    it compares different users in each arm once breadth moves. Its sums are the exporter's own: M = depth,
    D = engaged (0/1), so ΣD = ΣD² = engaged users and ΣMD = Σdepth."""
    if min(control.engaged_users, treatment.engaged_users) < 2:
        return
    c, t = (
        stats.ratio_metric(a.users, a.depth_sum, a.depth_sum_squares, a.engaged_users, a.engaged_users, a.depth_sum)
        for a in (control, treatment)
    )
    numbers["depth_per_engaged.control"] = c.mean
    numbers["depth_per_engaged.treatment"] = t.mean
    relative = stats.relative_lift(c, t)
    if relative is not None:
        numbers["depth_per_engaged.lift"] = relative.estimate
        numbers["depth_per_engaged.lift_se"] = relative.standard_error


def _has_covariate(arm: ArmStats) -> bool:
    return arm.pre_sum is not None and arm.pre_sum_squares is not None and arm.pre_cross_sum is not None


def _cuped_arm(arm: ArmStats) -> stats.CupedArm:
    return stats.CupedArm(
        n=arm.users,
        sum_y=arm.depth_sum,
        sum_y2=arm.depth_sum_squares,
        sum_x=arm.pre_sum or 0.0,
        sum_x2=arm.pre_sum_squares or 0.0,
        sum_xy=arm.pre_cross_sum or 0.0,
    )


def _guardrails(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> tuple[list[GuardrailVerdict], list[str]]:
    """Rates per response; the mixing scale is the margin, the effect size that matters for that guardrail."""
    verdicts: list[GuardrailVerdict] = []
    unmeasured: list[str] = []
    for guardrail in promotion.guardrails:
        name = guardrail.name
        if control.responses == 0 or treatment.responses == 0:
            unmeasured.append(f"guardrail {name} cannot be measured: an arm has served no responses yet")
            continue
        if name not in control.guardrails or name not in treatment.guardrails:
            unmeasured.append(f"guardrail {name} has no data: the exporter reports no `{name}` counts")
            continue
        c = stats.proportion_moments(control.responses, min(control.guardrails[name], control.responses))
        t = stats.proportion_moments(treatment.responses, min(treatment.guardrails[name], treatment.responses))
        difference = stats.absolute_lift(c, t)
        key = f"guardrail.{name}"
        numbers[f"{key}.control_rate"] = c.mean
        numbers[f"{key}.treatment_rate"] = t.mean
        numbers[f"{key}.difference"] = difference.estimate
        numbers[f"{key}.margin"] = guardrail.margin
        if difference.variance <= 0:
            # Both rates are exactly 0 or 1: use the rule of three bound so "no events at all" can pass.
            spread = 3.0 / min(control.responses, treatment.responses)
            lower, upper = difference.estimate - spread, difference.estimate + spread
            p_value = 1.0
        else:
            result = stats.msprt(difference, tau=guardrail.margin, alpha=promotion.alpha)
            lower, upper, p_value = _intersect(key, result, carried)
        _put_interval(numbers, key, lower, upper, p_value)
        verdicts.append(GuardrailVerdict(name, guardrail.margin, difference.estimate, lower, upper))
    return verdicts, unmeasured


def _metric_check(verdict: MetricVerdict) -> GateCheck:
    if verdict.worse:
        message = f"{verdict.name} is significantly worse."
    elif verdict.better:
        message = f"{verdict.name} is significantly better than the minimum lift."
    else:
        message = f"{verdict.name} is not significantly different yet."
    return GateCheck(
        name=verdict.name,
        passed=not verdict.worse,
        value=verdict.lift,
        limit=f"always-valid lower bound > {verdict.minimum_lift:.2%} to win, upper bound >= 0 to stay",
        message=message,
    )


def _guardrail_check(verdict: GuardrailVerdict) -> GateCheck:
    if verdict.breached:
        message = f"{verdict.name} is worse than its margin."
    elif verdict.non_inferior:
        message = f"{verdict.name} is non-inferior within its margin."
    else:
        message = f"{verdict.name} is not yet shown non-inferior."
    return GateCheck(
        name=f"guardrail.{verdict.name}",
        passed=verdict.non_inferior,
        value=verdict.difference,
        limit=f"upper bound < {verdict.margin}",
        message=message,
    )


def _finish(
    outcome: str, reasons: list[str], numbers: dict[str, float], checks: list[GateCheck], now: datetime
) -> OnlineDecision:
    finite = {k: float(v) for k, v in numbers.items() if math.isfinite(v)}
    return OnlineDecision(outcome=outcome, reasons=reasons, numbers=finite, checks=checks, at=now)
