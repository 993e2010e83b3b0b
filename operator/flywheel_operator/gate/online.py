"""The online gate: from one reading of both arms' sufficient statistics to PROMOTE / ROLL_BACK / CONTINUE /
INCONCLUSIVE, with every number and reason (pure; the caller passes `now` and the previous decision).

Decision rule (docs/metrics.md, after Spotify's): promote only when at least one success metric (breadth
or depth) is significantly better by its minimum lift, no success metric is significantly worse, every
guardrail is significantly non-inferior within its margin, the split matches the configuration, and the canary
has run for `min_duration`. Harm (a sample-ratio mismatch, more crossover users than `crossoverTolerance` allows,
a guardrail significantly worse than its margin, a success metric significantly worse) rolls back at any time.

Every test holds uniformly in time, so the check interval does not matter: the SRM test is a mixture e-value
over users (a function of the counts), the metrics use mSPRT confidence sequences whose running intersection
is carried in the decision's numbers. `alpha` is the family-wise rate of the whole gate: `srmPValue` is spent on
the SRM test, the rest is halved between the success metrics and the guardrails (`alpha_split`). A metric
decides only once it has the minimum information (`minUsersPerArm` users, `minEventsPerArm` engaged users);
a running interval that becomes empty means the data contradict the model, and the gate stops as INCONCLUSIVE.
Exporter counter resets are detected from the carried sums and stitched (the sums before the reset are kept as
an offset), never read as harm.
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
    parse_duration,
)
from flywheel_operator.gate import stats
from flywheel_operator.gate.crossover import crossover_check

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
    final_lower: float = -math.inf
    """Lower bound of the fixed-horizon interval at the final test's level (only read at `maxDuration`)."""

    @property
    def better(self) -> bool:
        return self.lower > self.minimum_lift

    @property
    def better_at_the_end(self) -> bool:
        return self.final_lower > self.minimum_lift

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


@dataclass(frozen=True)
class AlphaSplit:
    """The family-wise α of the gate, spent across its tests (Bonferroni: the false-decision rates add up)."""

    srm: float
    success: float
    """Each success metric's (two-sided) level of its always-valid test."""
    final: float
    """Each success metric's (two-sided) level of its one fixed-horizon test at `maxDuration`."""
    guardrail: float
    """Each guardrail's (two-sided) level."""


GUARDRAIL_ALPHA_SHARE = 0.2
"""Share of `alpha − srmPValue` spent on the guardrails (the rest on the success metrics). Guardrails are
non-inferiority tests with margins chosen to be provable; none of them broke an A/A stream in bench/gate.py at
a half share, and moving α to the success metrics raised power at +5 % depth from 0.74 to 0.82 (section 8)."""


def alpha_split(promotion: PromotionSpec) -> AlphaSplit:
    """SRM gets `srmPValue`; of the rest, `GUARDRAIL_ALPHA_SHARE` goes to the guardrails (split equally) and the
    remainder to breadth and depth (half each); each success metric's part is shared between its always-valid
    test and one fixed test at `maxDuration` (`finalTestShare`). A wrong decision needs at least one of these
    tests to be wrong at some look, so the chance of any wrong PROMOTE or ROLL_BACK stays ≤ alpha whatever the
    check interval."""
    rest = promotion.alpha - promotion.srm_p_value
    to_guardrails = GUARDRAIL_ALPHA_SHARE * rest
    share = rest - to_guardrails if promotion.guardrails else rest
    guardrail = to_guardrails / len(promotion.guardrails) if promotion.guardrails else 0.0
    metric = share / len(SUCCESS_METRICS)
    final = metric * promotion.final_test_share
    return AlphaSplit(srm=promotion.srm_p_value, success=metric - final, final=final, guardrail=guardrail)


class Inconsistent(Exception):
    """A running confidence interval became empty: the data are inconsistent with the model (drift, a broken
    pipeline); no metric can be trusted any more."""


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
    keep the sequential tests always-valid across looks, and the sums that reveal an exporter counter reset."""
    alphas = alpha_split(promotion)
    numbers: dict[str, float] = {
        "elapsed_hours": elapsed.total_seconds() / 3600.0,
        "alpha": promotion.alpha,
        "alpha.srm": alphas.srm,
        "alpha.success_metric": alphas.success,
        "alpha.final_test": alphas.final,
        "alpha.guardrail": alphas.guardrail,
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
    assert reading.control is not None and reading.treatment is not None  # has_data guarantees both
    control, treatment, reset = _stitch(reading.control, reading.treatment, carried, numbers)
    restarted = numbers.get("counter_resets", 0.0) > 0
    if restarted:
        control, treatment = _after_reset(control), _after_reset(treatment)
    checks: list[GateCheck] = [GateCheck(name="data", passed=True, message="Both arms reported data.")]
    numbers["users.control"] = float(control.users)
    numbers["users.treatment"] = float(treatment.users)
    if reset:
        message = (
            "counter reset: the exporter's sums went down (a restart that lost its state); the sums before it are "
            "kept and added to the new ones, and this look decides nothing"
        )
        checks.append(GateCheck(name="counter-reset", passed=True, message=message))
        reasons = [message, *(_out_of_time_reason(max_duration) if out_of_time else [])]
        return _finish("INCONCLUSIVE" if out_of_time else "CONTINUE", reasons, numbers, checks, now)

    harm: list[str] = []
    srm_check = _srm(promotion, control, treatment, traffic_percent, numbers)
    checks.append(srm_check)
    if not srm_check.passed:
        harm.append(srm_check.message)
    waiting: list[str] = []
    enough = min(control.users, treatment.users) >= promotion.min_users_per_arm
    crossover = _crossover(promotion, reading, numbers)
    checks.append(crossover)
    if not crossover.passed:
        # A share of a handful of users (one crossed among the first 50) is a deploy's stray request more often than
        # broken routing: it rolls back from `minUsersPerArm` on; before that it only waits (it can never promote).
        (harm if enough else waiting).append(crossover.message)

    verdicts: list[MetricVerdict] = []
    guardrails: list[GuardrailVerdict] = []
    if not enough:
        waiting.append(
            f"each arm needs {promotion.min_users_per_arm} users before lifts are judged "
            f"(control {control.users}, treatment {treatment.users})"
        )
    else:
        try:
            for judge in (_breadth, _depth):
                if restarted and judge is _breadth:
                    verdict = _frozen("breadth", promotion.min_breadth_lift, carried)
                else:
                    verdict = judge(promotion, control, treatment, alphas, carried, numbers)
                if isinstance(verdict, str):
                    waiting.append(verdict)
                else:
                    verdicts.append(verdict)
            _depth_per_engaged(control, treatment, numbers)
            guardrails, unmeasured = _guardrails(promotion, control, treatment, alphas.guardrail, carried, numbers)
        except Inconsistent as exc:
            checks.append(GateCheck(name="consistency", passed=False, message=str(exc)))
            return _finish("INCONCLUSIVE", [str(exc), *harm], numbers, checks, now)
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
    if out_of_time and alphas.final > 0:  # the one fixed-horizon look
        winners += [v for v in verdicts if v.better_at_the_end and not v.better]
    unproven = [g for g in guardrails if not g.non_inferior]
    if promotion.novelty_window is not None:
        fading = _novelty(promotion, control, treatment, elapsed, carried, numbers)
        if fading is not None and winners:
            waiting.append(fading)
    if winners and not unproven and not waiting:
        wins = "; ".join(
            f"{v.name} lift {v.lift:+.2%} in [{v.lower:+.2%}, {v.upper:+.2%}] > {v.minimum_lift:.2%}"
            if v.better
            else f"{v.name} lift {v.lift:+.2%}, fixed-horizon lower bound {v.final_lower:+.2%} > {v.minimum_lift:.2%} "
            "at maxDuration"
            for v in winners
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
    """The numbers carried across looks: running p-values and intervals (always-valid), the sums last seen and
    the offsets of earlier counter resets. The SRM e-value needs none: it is a function of the counts."""
    if previous is None:
        return {}
    suffixes = (".p_value", ".lower", ".upper")
    return {
        k: v
        for k, v in previous.numbers.items()
        if (k.endswith(suffixes) and not k.startswith("srm.")) or k.startswith(_CARRIED_PREFIXES)
    }


_CARRIED_PREFIXES = ("sums.", "offset.", "counter_resets", "novelty.checkpoint.")
_CHECKPOINT_FIELDS = ("users", "depth_sum", "depth_sum_squares")
_COUNTS = ("users", "engaged_users", "depth_sum", "responses")
"""Sums that never go down while the exporter keeps its state: one of them going down is a counter reset."""


def _flatten(arm: ArmStats) -> dict[str, float]:
    """Every sum of one arm as flat float fields (dict fields as `name.key`); None fields left out."""
    flat: dict[str, float] = {}
    for field, value in arm.model_dump().items():
        if isinstance(value, dict):
            flat.update({f"{field}.{key}": float(v) for key, v in value.items()})
        elif value is not None:
            flat[field] = float(value)
    return flat


def _unflatten(flat: dict[str, float]) -> ArmStats:
    fields: dict[str, object] = {}
    for key, value in flat.items():
        field, _, sub = key.partition(".")
        if sub:
            fields.setdefault(field, {})[sub] = value  # type: ignore[union-attr]
        else:
            fields[field] = round(value) if field in ("users", "engaged_users", "responses", "adopted_users") else value
    return ArmStats.model_validate(fields)


def _stitch(
    control: ArmStats, treatment: ArmStats, carried: dict[str, float], numbers: dict[str, float]
) -> tuple[ArmStats, ArmStats, bool]:
    """This look's sums plus the offsets of earlier counter resets; a new reset when a count went down.

    Prometheus `sum()` over counters drops when the exporter restarts without its state. The sums before the
    reset are known (the last look's, carried in `sums.*`), so they become an offset added to the new counts:
    nothing is read as a collapse of engagement or as a broken split. Increments between the last look and the
    reset are lost for both arms alike."""
    arms = {"control": _flatten(control), "treatment": _flatten(treatment)}
    offsets = {arm: _prefixed(carried, f"offset.{arm}.") for arm in arms}
    seen = {arm: _prefixed(carried, f"sums.{arm}.") for arm in arms}
    totals = {arm: _add(offsets[arm], arms[arm]) for arm in arms}
    reset = any(
        totals[arm].get(name, 0.0) < seen[arm].get(name, 0.0) - 1e-9 * max(1.0, seen[arm].get(name, 0.0))
        for arm in arms
        for name in _COUNTS
    )
    if reset:
        numbers["counter_resets"] = carried.get("counter_resets", 0.0) + 1.0
        for arm in arms:
            offsets[arm] = seen[arm]
            totals[arm] = _add(seen[arm], arms[arm])
    for arm in arms:
        numbers.update({f"offset.{arm}.{k}": v for k, v in offsets[arm].items()})
        numbers.update({f"sums.{arm}.{k}": v for k, v in totals[arm].items()})
    return _unflatten(totals["control"]), _unflatten(totals["treatment"]), reset


_SECOND_MOMENTS = ("depth_sum_squares", "responses_sum_squares", "guardrail_sum_squares", "guardrail_cross_sums")


def _after_reset(arm: ArmStats) -> ArmStats:
    """The stitched sums as the statistics may use them once a reset happened. A user who came back after it was
    adopted (counted again) and has their turns split in two parts d₁, d₂: the first moments add up right, so the
    users are counted once (adopted ones left out), and (d₁ + d₂)² ≤ 2(d₁² + d₂²) bounds every second moment (and
    so every variance) from above. Breadth cannot be stitched (a returning user is engaged anew): it is frozen."""
    users = arm.users - arm.adopted_users
    update: dict[str, object] = {"users": users, "adopted_users": 0, "engaged_users": min(arm.engaged_users, users)}
    for name in _SECOND_MOMENTS:
        value = getattr(arm, name)
        if isinstance(value, dict):
            update[name] = {k: 2.0 * v for k, v in value.items()}
        elif value is not None:
            update[name] = 2.0 * value
    return arm.model_copy(update=update)


def _frozen(name: str, minimum_lift: float, carried: dict[str, float]) -> MetricVerdict | str:
    """A metric that gets no new information after a counter reset keeps its last always-valid interval."""
    if f"{name}.lower" not in carried and f"{name}.upper" not in carried:
        return f"{name} cannot be judged: the exporter's counters were reset before it had enough information"
    lower, upper = carried.get(f"{name}.lower", -math.inf), carried.get(f"{name}.upper", math.inf)
    estimate = (lower + upper) / 2 if math.isfinite(lower + upper) else 0.0
    return MetricVerdict(name, estimate, lower, upper, carried.get(f"{name}.p_value", 1.0), minimum_lift)


def _prefixed(numbers: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: v for k, v in numbers.items() if k.startswith(prefix)}


def _add(offset: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """Offset plus current sums; a series the offset has but the current reading lacks stays missing (an optional
    sum that vanished cannot be stitched)."""
    return {k: v + offset.get(k, 0.0) for k, v in current.items()}


def _intersect(name: str, result: stats.SequentialResult, carried: dict[str, float]) -> tuple[float, float, float]:
    """Running intersection of the confidence sequence and running minimum of the p-value. An empty intersection
    means no value of the effect is consistent with every look: the model is wrong, so nothing is decided."""
    lower = max(result.lower, carried.get(f"{name}.lower", -math.inf))
    upper = min(result.upper, carried.get(f"{name}.upper", math.inf))
    if lower > upper:
        raise Inconsistent(
            f"{name}: the always-valid intervals of successive looks no longer overlap (now "
            f"[{result.lower:+.4f}, {result.upper:+.4f}], before [{carried.get(f'{name}.lower', -math.inf):+.4f}, "
            f"{carried.get(f'{name}.upper', math.inf):+.4f}]): the data are inconsistent with a fixed effect "
            "(a drifting pipeline or a broken experiment); the gate cannot decide"
        )
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
    """Sequential SRM over the users whose exposure the exporter saw (adopted users are left out: whether a user
    comes back after an exporter restart depends on the arm)."""
    control_percent = promotion.control_percent or (100 - traffic_percent)
    share = traffic_percent / (traffic_percent + control_percent)
    c, t = control.users - control.adopted_users, treatment.users - treatment.adopted_users
    result = stats.sequential_srm(c, t, share)
    limit = f"always-valid p >= {promotion.srm_p_value}"
    numbers["srm.log_e_value"] = result.log_e_value
    numbers["srm.p_value"] = result.p_value
    numbers["srm.expected_treatment_share"] = share
    numbers["srm.observed_treatment_share"] = result.observed_treatment_share
    fixed = stats.sample_ratio_mismatch(c, t, share)
    if fixed is not None:  # reported for comparison; a χ² re-run at every look is not a valid test
        numbers["srm.chi2"] = fixed.chi2
        numbers["srm.fixed_p_value"] = fixed.p_value
    if result.p_value < promotion.srm_p_value:
        return GateCheck(
            name="srm",
            passed=False,
            value=result.p_value,
            limit=limit,
            message=(
                f"sample ratio mismatch: treatment share {result.observed_treatment_share:.4f} vs expected "
                f"{share:.4f} ({c} control vs {t} treatment users; sequential e-value "
                f"{math.exp(min(result.log_e_value, 700.0)):.3g}, always-valid p = {result.p_value:.2e}); the "
                "experiment is broken, fix the assignment"
            ),
        )
    return GateCheck(name="srm", passed=True, value=result.p_value, limit=limit, message="The split matches.")


def _crossover(promotion: PromotionSpec, reading: OnlineReading, numbers: dict[str, float]) -> GateCheck:
    """Users seen in both arms against the users exposed, both as the exporter counts them now (not stitched: a
    restart that lost the exporter's state restarts both). Above the tolerance the arms are not sticky, and like
    an SRM that breaks the experiment whatever the metrics say. A share, not a test: crossing is routing, not
    sampling noise, so it spends no α."""
    assert reading.control is not None and reading.treatment is not None
    exposed = reading.control.users + reading.treatment.users
    numbers["crossover.users"] = float(reading.crossover_users)
    numbers["crossover.share"] = reading.crossover_users / exposed if exposed else 0.0
    return crossover_check(reading.crossover_users, exposed, promotion.crossover_tolerance)


def _breadth(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    alphas: AlphaSplit,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> MetricVerdict | str:
    information = min(
        control.engaged_users,
        treatment.engaged_users,
        control.users - control.engaged_users,
        treatment.users - treatment.engaged_users,
    )
    if information < promotion.min_events_per_arm:
        return (
            f"breadth waits for {promotion.min_events_per_arm} engaged and {promotion.min_events_per_arm} not engaged "
            f"users per arm (engaged: control {control.engaged_users}, treatment {treatment.engaged_users})"
        )
    c = stats.proportion_moments(control.users, control.engaged_users)
    t = stats.proportion_moments(treatment.users, treatment.engaged_users)
    return _judge("breadth", c, t, promotion.min_breadth_lift, promotion.sequential_tau, alphas, carried, numbers)


def _depth(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    alphas: AlphaSplit,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> MetricVerdict | str:
    if min(control.engaged_users, treatment.engaged_users) < promotion.min_events_per_arm:
        return (
            f"depth waits for {promotion.min_events_per_arm} engaged users per arm (control "
            f"{control.engaged_users}, treatment {treatment.engaged_users}): heavy-tailed depth is carried by them"
        )
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
    return _judge("depth", c, t, promotion.min_depth_lift, promotion.sequential_tau, alphas, carried, numbers)


def _judge(
    name: str,
    control: stats.Moments,
    treatment: stats.Moments,
    minimum_lift: float,
    tau: float,
    alphas: AlphaSplit,
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
    sequential = stats.msprt(relative, tau=tau, alpha=alphas.success)
    lower, upper, p_value = _intersect(name, sequential, carried)
    _put_interval(numbers, name, lower, upper, p_value)
    final_lower = -math.inf
    if alphas.final > 0:
        final_lower = relative.estimate - stats.normal_quantile(1.0 - alphas.final / 2) * relative.standard_error
        numbers[f"{name}.final_test_lower"] = final_lower
    return MetricVerdict(name, relative.estimate, lower, upper, p_value, minimum_lift, final_lower)


def _novelty(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    elapsed: timedelta,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> str | None:
    """The novelty guard: why PROMOTE must wait, or None when depth's lift holds over the last window.

    Checkpoints of (users, Σdepth, Σdepth²) are taken every half window and carried; the baseline is the newest
    one at least a window old and taken at least a window into the test, so the window (1 to 1.5 windows long)
    never holds the first days, when a novelty effect is strongest: no promotion before two windows. Per exposed
    user, the turns added since then have mean ΔΣdepth/n, and their second moment is at most ΔΣdepth²/n (depth
    only grows), a conservative variance. Only the point estimate is required to exceed `minDepthLift`: the
    guard only blocks promotion, so it cannot add false decisions, and a stricter bound would cost most of the
    power of a real, lasting lift."""
    assert promotion.novelty_window is not None
    window = parse_duration(promotion.novelty_window).total_seconds() / 3600.0
    now = elapsed.total_seconds() / 3600.0
    checkpoints = sorted(
        {int(k.split(".")[2]) for k in carried if k.startswith("novelty.checkpoint.")},
    )
    taken = [(i, carried[f"novelty.checkpoint.{i}.hours"]) for i in checkpoints]
    if not taken or now - taken[-1][1] >= window / 2:
        index = taken[-1][0] + 1 if taken else 0
        taken.append((index, now))
        numbers[f"novelty.checkpoint.{index}.hours"] = now
        for arm, stats_ in (("control", control), ("treatment", treatment)):
            for name in _CHECKPOINT_FIELDS:
                numbers[f"novelty.checkpoint.{index}.{arm}.{name}"] = float(getattr(stats_, name))
    old = [(i, at) for i, at in taken if now - at >= window and at >= window]
    for i, _ in old[:-1]:  # only the newest baseline is needed
        for key in [k for k in numbers if k.startswith(f"novelty.checkpoint.{i}.")]:
            del numbers[key]
    if not old:
        return (
            f"novelty guard: no promotion before a window ({promotion.novelty_window}) that starts a window into the "
            "test has passed"
        )
    base = old[-1][0]
    moments = []
    for arm, stats_ in (("control", control), ("treatment", treatment)):
        then = {name: numbers[f"novelty.checkpoint.{base}.{arm}.{name}"] for name in _CHECKPOINT_FIELDS}
        n = stats_.users
        added = stats_.depth_sum - then["depth_sum"]
        second = max(stats_.depth_sum_squares - then["depth_sum_squares"], 0.0)
        mean = added / n
        moments.append(stats.Moments(n=n, mean=mean, variance=max(second / n - mean * mean, 0.0) * n / max(n - 1, 1)))
    lift = stats.relative_lift(moments[0], moments[1])
    if lift is None:
        return "novelty guard: no turns in the control arm over the last window"
    numbers["novelty.window_hours"] = now - numbers[f"novelty.checkpoint.{base}.hours"]
    numbers["novelty.depth_lift"] = lift.estimate
    numbers["novelty.depth_lift_se"] = lift.standard_error
    if lift.estimate > promotion.min_depth_lift:
        return None
    return (
        f"novelty guard: depth's lift over the last {numbers['novelty.window_hours']:.0f}h is {lift.estimate:+.2%} "
        f"(± {lift.standard_error:.2%}), not above {promotion.min_depth_lift:.2%}: the lift may be fading"
    )


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
    alpha: float,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> tuple[list[GuardrailVerdict], list[str]]:
    """Rates per response with user-clustered variances; the mixing scale is the margin, the effect size that
    matters for that guardrail."""
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
        key = f"guardrail.{name}"
        c, clustered_c = _guardrail_rate(control, name)
        t, clustered_t = _guardrail_rate(treatment, name)
        numbers[f"{key}.clustered"] = float(clustered_c and clustered_t)
        difference = stats.absolute_lift(c, t)
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
            result = stats.msprt(difference, tau=guardrail.margin, alpha=alpha)
            lower, upper, p_value = _intersect(key, result, carried)
        _put_interval(numbers, key, lower, upper, p_value)
        verdicts.append(GuardrailVerdict(name, guardrail.margin, difference.estimate, lower, upper))
    return verdicts, unmeasured


def _guardrail_rate(arm: ArmStats, name: str) -> tuple[stats.Moments, bool]:
    """Events per response with the user-clustered variance when the exporter sends the per-user sums; else the
    binomial per-response variance (too narrow when users repeat events), flagged `guardrail.<name>.clustered = 0`."""
    events = min(arm.guardrails[name], arm.responses)
    squares, cross = arm.guardrail_sum_squares.get(name), arm.guardrail_cross_sums.get(name)
    if arm.responses_sum_squares is not None and squares is not None and cross is not None and arm.users >= 2:
        rate = stats.clustered_rate(arm.users, events, squares, arm.responses, arm.responses_sum_squares, cross)
        return rate, True
    return stats.proportion_moments(arm.responses, events), False


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
