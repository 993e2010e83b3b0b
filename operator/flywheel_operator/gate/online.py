"""The online gate: from one reading of both arms' sufficient statistics to PROMOTE / ROLL_BACK / CONTINUE /
INCONCLUSIVE, with every number and reason (pure; the caller passes `now`, the frozen plan and the previous
decision).

Decision rule (docs/metrics.md): the gate reads only the `DecisionPlan` frozen into the status when the canary
started, never the live spec, so nobody can move the goal posts after a peek.

* Harm rolls back: a sample-ratio mismatch, more crossover users than `crossoverTolerance` allows, a guardrail
  significantly worse than its margin, a success metric significantly worse (the always-valid test at any look,
  or the group-sequential deterioration boundary at a scheduled look, the last one at `maxDuration`), or a hard
  SRE guardrail (errors, p95 latency) failing `failures` checks in a row. Harm comes first: a metric that is
  significantly worse blocks promotion on another metric's win. Depth's deterioration tests read the mean of
  log(1 + depth) (the exporter's `depthLogSum`/`depthLogSumSquares`): depth is heavy-tailed, and on that scale a
  fall of the typical user's turns shows with far less noise; a reading without those sums gets depth refused.
* Efficacy promotes: at a scheduled look (every `lookEvery` from the start, whatever the check interval, and at
  `maxDuration`) a success metric's z-statistic against its minimum lift crosses its Lan–DeMets O'Brien–Fleming
  boundary on the information fraction; every guardrail is shown non-inferior; the canary ran `minDuration`; the
  novelty guard (when on) sees the lift hold.
* `alpha` is the family-wise rate of the whole gate, split one-sided (`alpha_plan`): a wrong PROMOTE or ROLL_BACK
  needs one of the tests to be wrong at some look, so the chance of any stays ≤ alpha at any cadence.
* The last look waits `finalLookGrace` for a reading; only then is the canary INCONCLUSIVE.

A metric decides only once it has the minimum information (`minUsersPerArm` users, `minEventsPerArm` engaged
users); a running interval that becomes empty means the data contradict the model, and the gate stops as
INCONCLUSIVE. Exporter counter resets are detected from the carried sums and stitched. Readings whose per-user
sums are impossible (out of range) are refused as no data, never decided on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from flywheel_operator.api import (
    AlphaPlan,
    ArmStats,
    CanarySpec,
    DecisionPlan,
    GateCheck,
    OnlineDecision,
    OnlineReading,
    PromotionSpec,
    parse_duration,
)
from flywheel_operator.gate import sequential, stats
from flywheel_operator.gate.crossover import crossover_check
from flywheel_operator.gate.serving import evaluate_serving

SUCCESS_METRICS = ("breadth", "depth")
DEFAULT_LOOKS = 28
"""Scheduled looks when `lookEvery` is unset: every `maxDuration` / 28 (6 h of a 7-day canary)."""
MAX_FRACTION_BEFORE_THE_END = 0.999
"""An interim look's information fraction is capped below 1: only the last look spends what is left."""


@dataclass(frozen=True)
class MetricVerdict:
    """One success metric at one look: its relative lift, the always-valid interval (running intersection) that
    judges harm at any look, and at a scheduled look the z-statistics against the group-sequential boundaries."""

    name: str
    lift: float
    lower: float
    upper: float
    p_value: float
    minimum_lift: float
    z_efficacy: float | None = None
    """(lift − minimum lift)/SE at a scheduled look (None between scheduled looks)."""
    z_harm: float | None = None
    """lift/SE at a scheduled look."""
    efficacy_bound: float = math.inf
    harm_bound: float = math.inf
    harm_estimate: float | None = None
    """The effect the deterioration tests judge when it is not `lift` (depth: the difference of the arms' mean
    log(1 + depth)); `lower`/`upper` and `z_harm` are on its scale."""
    z_fixed: float | None = None
    """The deterioration statistic's z at this look (estimate/SE), for the fixed-level check that blocks another
    metric's win."""

    @property
    def harm_scale(self) -> str:
        if self.harm_estimate is None:
            return f"relative lift {self.lift:+.2%}"
        return f"log-scale lift {self.harm_estimate:+.2%} (mean log(1 + depth); relative lift {self.lift:+.2%})"

    @property
    def better(self) -> bool:
        return self.z_efficacy is not None and self.z_efficacy >= self.efficacy_bound

    @property
    def worse_always_valid(self) -> bool:
        return self.upper < 0.0

    @property
    def worse_scheduled(self) -> bool:
        return self.z_harm is not None and self.z_harm <= -self.harm_bound

    @property
    def worse(self) -> bool:
        return self.worse_always_valid or self.worse_scheduled


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


GROUP_SEQUENTIAL_METRICS = ("depth",)
"""Metrics judged by the group-sequential boundaries at scheduled looks; the others (breadth) by always-valid tests
at both sides (see `PromotionSpec.breadth_share`)."""


def alpha_plan(promotion: PromotionSpec) -> AlphaPlan:
    """SRM gets `srmPValue`; of the rest, `guardrailShare` goes to the guardrails (split equally) and the remainder
    to the success metrics (`breadthShare` to breadth, the rest to depth). Each success metric's part is split
    between deterioration (`harmShare`) and efficacy; depth's deterioration part again between the always-valid
    test (`harmAlwaysValidShare`) and the scheduled boundary, breadth's is all always-valid. All one-sided; they add
    up to `alpha`."""
    rest = promotion.alpha - promotion.srm_p_value
    guardrails = promotion.guardrail_share * rest if promotion.guardrails else 0.0
    success = rest - guardrails
    metric = {"breadth": success * promotion.breadth_share, "depth": success * (1.0 - promotion.breadth_share)}
    harm = {m: a * promotion.harm_share for m, a in metric.items()}
    always_valid = {
        m: h * promotion.harm_always_valid_share if m in GROUP_SEQUENTIAL_METRICS else h for m, h in harm.items()
    }
    return AlphaPlan(
        srm=promotion.srm_p_value,
        efficacy={m: a - harm[m] for m, a in metric.items()},
        harm_always_valid=always_valid,
        harm_scheduled={m: h - always_valid[m] for m, h in harm.items()},
        guardrail=guardrails / len(promotion.guardrails) if promotion.guardrails else 0.0,
    )


def decision_plan(
    promotion: PromotionSpec, canary: CanarySpec, *, now: datetime, spec_generation: int | None = None
) -> DecisionPlan:
    """The plan the operator freezes into the status at the canary's start: everything the gate decides with."""
    end = parse_duration(canary.max_duration)
    if promotion.look_every is not None:
        every = parse_duration(promotion.look_every)
    else:
        every = timedelta(seconds=max(int(end.total_seconds() / DEFAULT_LOOKS), 1))
    hours, k = [], 1
    while every * k < end:
        hours.append(every.total_seconds() * k / 3600.0)
        k += 1
    hours.append(end.total_seconds() / 3600.0)
    return DecisionPlan(
        frozen_at=now,
        spec_generation=spec_generation,
        promotion=promotion.model_copy(deep=True),
        traffic_percent=canary.traffic_percent,
        min_duration=canary.min_duration,
        max_duration=canary.max_duration,
        check_interval=canary.check_interval,
        final_look_grace=promotion.final_look_grace,
        look_every=_duration_text(every),
        alpha=alpha_plan(promotion),
        schedule_hours=hours,
        expected_users_per_arm=promotion.expected_users_per_arm,
    )


def _duration_text(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def plan_edits(plan: DecisionPlan, promotion: PromotionSpec, canary: CanarySpec) -> list[str]:
    """What the live spec changed against the frozen plan (the fields a decision depends on), in words."""
    fresh = decision_plan(promotion, canary, now=plan.frozen_at, spec_generation=plan.spec_generation)
    before, after = plan.model_dump(by_alias=True), fresh.model_dump(by_alias=True)
    edits = []
    for key in sorted(after):
        if key == "promotion":
            # every field, queries included: the reader reads the frozen plan's too (readers.frozen_promotion)
            for field in sorted(after[key]):
                if before[key].get(field) != after[key].get(field):
                    edits.append(f"promotion.{field}")
        elif before.get(key) != after.get(key) and key not in ("alpha", "scheduleHours"):
            edits.append(key if key in ("finalLookGrace", "lookEvery", "expectedUsersPerArm") else f"canary.{key}")
    return sorted(set(edits))


def novelty_on(promotion: PromotionSpec, max_duration: timedelta | None = None) -> bool:
    """The novelty guard is on unless `noveltyWindow` is `0d` (or null in Python: Kubernetes prunes a null), or the
    canary is shorter than the two windows the guard needs (`maxDuration` < 2 × `noveltyWindow`): such a canary
    could never promote, so it runs without the guard."""
    if promotion.novelty_window is None:
        return False
    window = parse_duration(promotion.novelty_window)
    return window.total_seconds() > 0 and (max_duration is None or 2 * window <= max_duration)


class Inconsistent(Exception):
    """A running confidence interval became empty: the data are inconsistent with the model (drift, a broken
    pipeline); no metric can be trusted any more."""


def evaluate_online(
    plan: DecisionPlan,
    reading: OnlineReading,
    *,
    elapsed: timedelta,
    previous: OnlineDecision | None,
    now: datetime,
) -> OnlineDecision:
    """Decide on one reading with the frozen `plan`. Never PROMOTE without data, on an SRM, between scheduled
    looks or before `minDuration`; a CONTINUE at the last look becomes INCONCLUSIVE, and a failed reading at or
    after `maxDuration` waits `finalLookGrace` first. `previous` carries the running intervals, the scheduled
    looks' information fractions, the SRE guardrails' failure counts and the sums that reveal a counter reset."""
    promotion = plan.promotion
    alphas = plan.alpha
    min_duration, max_duration = parse_duration(plan.min_duration), parse_duration(plan.max_duration)
    grace = parse_duration(plan.final_look_grace)
    numbers: dict[str, float] = {
        "elapsed_hours": elapsed.total_seconds() / 3600.0,
        "alpha": promotion.alpha,
        "alpha.srm": alphas.srm,
        "alpha.guardrail": alphas.guardrail,
        "traffic_percent": float(plan.traffic_percent),
    }
    for metric in SUCCESS_METRICS:
        numbers[f"alpha.{metric}.efficacy"] = alphas.efficacy[metric]
        numbers[f"alpha.{metric}.harm_always_valid"] = alphas.harm_always_valid[metric]
        numbers[f"alpha.{metric}.harm_scheduled"] = alphas.harm_scheduled[metric]
    carried = _running_state(previous)
    numbers.update(carried)  # kept through outages and early looks; this look's values overwrite them
    out_of_time = elapsed >= max_duration
    checks: list[GateCheck] = []
    harm: list[str] = []

    serving_checks, serving_harm, serving_waiting = evaluate_serving(
        promotion.serving_guardrails, reading.serving, elapsed, carried, numbers
    )
    checks.extend(serving_checks)
    harm.extend(serving_harm)

    refused = _refusal(reading)
    if refused is not None or not reading.has_data or not _both_arms_have_users(reading):
        why = refused or reading.error or "an arm has no exposed users yet"
        checks.append(GateCheck(name="data", passed=False, message=f"No data: {why}."))
        if harm:
            return _finish("ROLL_BACK", [*harm, f"no engagement data: {why}"], numbers, checks, now)
        reasons = [f"no data: {why}"]
        if out_of_time and elapsed < max_duration + grace:
            until = (max_duration + grace).total_seconds() / 3600
            reasons.append(
                f"the last look waits for a reading until {until:g}h (finalLookGrace {plan.final_look_grace})"
            )
            return _finish("CONTINUE", reasons, numbers, checks, now)
        if out_of_time:
            reasons.append(
                f"no reading came within finalLookGrace ({plan.final_look_grace}) after maxDuration "
                f"({plan.max_duration})"
            )
            return _finish("INCONCLUSIVE", reasons, numbers, checks, now)
        return _finish("CONTINUE", reasons, numbers, checks, now)
    assert reading.control is not None and reading.treatment is not None  # has_data guarantees both
    control, treatment, reset = _stitch(reading.control, reading.treatment, carried, numbers)
    restarted = numbers.get("counter_resets", 0.0) > 0
    if restarted:
        control, treatment = _after_reset(control), _after_reset(treatment)
    checks.append(GateCheck(name="data", passed=True, message="Both arms reported data."))
    numbers["users.control"] = float(control.users)
    numbers["users.treatment"] = float(treatment.users)
    if reset:
        message = (
            "counter reset: the exporter's sums went down (a restart that lost its state); the sums before it are "
            "kept and added to the new ones, and this look decides nothing"
        )
        checks.append(GateCheck(name="counter-reset", passed=True, message=message))
        if harm:
            return _finish("ROLL_BACK", [*harm, message], numbers, checks, now)
        return _finish("CONTINUE", [message], numbers, checks, now)

    srm_check = _srm(promotion, control, treatment, plan.traffic_percent, numbers)
    checks.append(srm_check)
    if not srm_check.passed:
        harm.append(srm_check.message)
    waiting: list[str] = list(serving_waiting)
    enough = min(control.users, treatment.users) >= promotion.min_users_per_arm
    crossover = _crossover(promotion, reading, numbers)
    checks.append(crossover)
    if not crossover.passed:
        # A share of a handful of users (one crossed among the first 50) is a deploy's stray request more often than
        # broken routing: it rolls back from `minUsersPerArm` on; before that it only waits (it can never promote).
        (harm if enough else waiting).append(crossover.message)

    look = _scheduled_look(plan, control, treatment, elapsed, carried, numbers)
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
                    verdict = judge(promotion, control, treatment, alphas, look, carried, numbers)
                if isinstance(verdict, str):
                    waiting.append(verdict)
                else:
                    verdicts.append(verdict)
            if min(control.engaged_users, treatment.engaged_users) < promotion.min_events_per_arm and not any(
                w.startswith("depth waits") for w in waiting
            ):
                waiting.append(_depth_waits(promotion, control, treatment))
            _depth_per_engaged(control, treatment, numbers)
            guardrails, unmeasured = _guardrails(promotion, control, treatment, alphas.guardrail, carried, numbers)
        except Inconsistent as exc:
            checks.append(GateCheck(name="consistency", passed=False, message=str(exc)))
            return _finish("INCONCLUSIVE", [str(exc), *harm], numbers, checks, now)
        waiting.extend(unmeasured)
    for verdict in verdicts:
        checks.append(_metric_check(verdict))
        if verdict.worse_always_valid:
            harm.append(
                f"{verdict.name} is significantly worse: {verdict.harm_scale}, "
                f"always-valid interval [{verdict.lower:+.2%}, {verdict.upper:+.2%}]"
            )
        elif verdict.worse_scheduled:
            harm.append(
                f"{verdict.name} is significantly worse at the scheduled look {look.index + 1 if look else 0}: "
                f"{verdict.harm_scale}, z = {verdict.z_harm:+.2f} below the deterioration boundary "
                f"−{verdict.harm_bound:.2f} (information fraction {look.fraction if look else 0:.3f})"
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

    final = look is not None and look.final
    winners = [v for v in verdicts if v.better]
    for verdict in verdicts:  # a metric significantly worse at its harm level blocks another metric's win
        level = alphas.harm_scheduled[verdict.name] or alphas.harm_always_valid[verdict.name]
        z = verdict.z_fixed
        if z is None:
            z = numbers.get(f"{verdict.name}.lift", 0.0) / max(numbers.get(f"{verdict.name}.lift_se", math.inf), 1e-300)
        if winners and z <= -stats.normal_quantile(1.0 - level):
            waiting.append(
                f"{verdict.name} runs significantly worse at its fixed level (z = {z:+.2f}, one-sided α = "
                f"{level:.4f}): no promotion on another metric's win while it does"
            )
    unproven = [g for g in guardrails if not g.non_inferior]
    if novelty_on(promotion, max_duration):
        fading = _novelty(promotion, control, treatment, elapsed, carried, numbers)
        if fading is not None and winners:
            waiting.append(fading)
    if winners and not unproven and not waiting:
        wins = "; ".join(
            f"{v.name} lift {v.lift:+.2%}, z = {v.z_efficacy:.2f} ≥ boundary {v.efficacy_bound:.2f} against the "
            f"minimum lift {v.minimum_lift:.2%}"
            for v in winners
        )
        if elapsed >= min_duration:
            checks.append(GateCheck(name="min-duration", passed=True, message="The canary ran long enough."))
            return _finish(
                "PROMOTE",
                [f"significantly better at scheduled look {look.index + 1 if look else 0}: {wins}",
                 "every guardrail is non-inferior"],
                numbers,
                checks,
                now,
            )  # fmt: skip
        reasons = [f"significantly better ({wins}) but minDuration is not reached yet"]
    else:
        reasons = list(waiting)
        if not winners and verdicts and elapsed < min_duration:
            reasons.append(f"efficacy is judged at the scheduled looks from minDuration ({plan.min_duration}) on")
        elif not winners and verdicts:
            reasons.append(
                "no success metric crossed its efficacy boundary"
                + ("" if look is not None else f" (the next scheduled look is at {_next_look_hours(plan, carried):g}h)")
            )
        reasons.extend(
            f"guardrail {g.name} is not yet shown non-inferior (upper bound {g.upper:+.4f} vs margin {g.margin})"
            for g in unproven
        )
    if final or (out_of_time and look is None and numbers.get("gs.final_done", 0.0) > 0):
        return _finish("INCONCLUSIVE", [*reasons, *_out_of_time_reason(max_duration)], numbers, checks, now)
    return _finish("CONTINUE", reasons, numbers, checks, now)


# ------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Look:
    """A scheduled group-sequential look: its index in the schedule, information fraction and the fractions of
    every scheduled look so far (all of them for deterioration, those from `minDuration` on for efficacy)."""

    index: int
    fraction: float
    final: bool
    harm_fractions: tuple[float, ...]
    efficacy_fractions: tuple[float, ...]


def _next_look_hours(plan: DecisionPlan, carried: dict[str, float]) -> float:
    done = int(carried.get("gs.index", -1))
    return plan.schedule_hours[min(done + 1, len(plan.schedule_hours) - 1)]


def _scheduled_look(
    plan: DecisionPlan,
    control: ArmStats,
    treatment: ArmStats,
    elapsed: timedelta,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> Look | None:
    """Whether this reading is a scheduled look: the first reading at or after the next time of the schedule
    (several missed times make one look). Its information fraction is the users seen over those expected by
    `maxDuration`: the plan's pre-period figure raised to what arrived, or without one a linear projection of the
    arrivals (which under-states the fraction of front-loaded traffic: conservative). The last look has
    fraction 1 and spends what is left. A look with no new users spends nothing."""
    hours = elapsed.total_seconds() / 3600.0
    done = int(carried.get("gs.index", -1))
    due = [i for i, h in enumerate(plan.schedule_hours) if i > done and h <= hours + 1e-9]
    if not due:
        return None
    index = due[-1]
    final = index == len(plan.schedule_hours) - 1
    users = (control.users + treatment.users) / 2.0
    if final:
        fraction = 1.0
    else:
        end = plan.schedule_hours[-1]
        expected = plan.expected_users_per_arm or users * end / max(hours, 1e-9)
        fraction = min(users / max(expected, users, 1.0), MAX_FRACTION_BEFORE_THE_END)
    fraction = round(fraction, sequential.FRACTION_DIGITS)
    count = int(carried.get("gs.looks", 0.0))
    earlier = [(carried[f"gs.look.{i}.hours"], carried[f"gs.look.{i}.fraction"]) for i in range(count)]
    numbers["gs.index"] = float(index)
    if final:
        numbers["gs.final_done"] = 1.0
    if earlier and fraction <= earlier[-1][1]:
        return None  # no information since the last look: nothing to spend
    numbers[f"gs.look.{count}.hours"] = hours
    numbers[f"gs.look.{count}.fraction"] = fraction
    numbers["gs.looks"] = float(count + 1)
    numbers["gs.fraction"] = fraction
    everything = [*earlier, (hours, fraction)]
    min_hours = parse_duration(plan.min_duration).total_seconds() / 3600.0
    return Look(
        index=index,
        fraction=fraction,
        final=final,
        harm_fractions=tuple(f for _, f in everything),
        efficacy_fractions=tuple(f for h, f in everything if h >= min_hours - 1e-9),
    )


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
    """The numbers carried across looks: running p-values and intervals (always-valid), the sums last seen, the
    offsets of earlier counter resets, the scheduled looks' fractions (`gs.*`) and the SRE guardrails' failure
    counts (`serving.*`). The SRM e-value needs none: it is a function of the counts. A scheduled look's z and
    boundaries (`*.z_efficacy`, `*.efficacy_bound`, …) belong to that look only and are not carried."""
    if previous is None:
        return {}
    suffixes = (".p_value", ".lower", ".upper")
    return {
        k: v
        for k, v in previous.numbers.items()
        if (k.endswith(suffixes) and not k.startswith("srm.")) or k.startswith(_CARRIED_PREFIXES)
        if k not in ("gs.fraction",)
    }


def _refusal(reading: OnlineReading) -> str | None:
    """Why the reading cannot be used at all: sums no set of users could have produced (the range checks of
    `ArmStats.range_problems`). Deciding on them would decide on a broken exporter or query."""
    problems = [
        f"{arm}: {problem}"
        for arm, stats_ in (("control", reading.control), ("treatment", reading.treatment))
        if stats_ is not None
        for problem in stats_.range_problems()
    ]
    if not problems:
        return None
    return (
        "the per-user sums are out of range (" + "; ".join(problems[:3]) + "): no set of users gives these sums; "
        "fix the exporter or the `promotion.queries` templates (each must sum the same users' counters)"
    )


_CARRIED_PREFIXES = ("sums.", "offset.", "counter_resets", "novelty.checkpoint.", "gs.", "serving.")
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
    alphas: AlphaPlan,
    look: Look | None,
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
    return _judge("breadth", c, t, promotion.min_breadth_lift, promotion.sequential_tau, alphas, look, carried, numbers)


def _depth(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    alphas: AlphaPlan,
    look: Look | None,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> MetricVerdict | str:
    """Depth: the always-valid test once each arm has `minEventsPerArm` engaged users (heavy-tailed depth is carried
    by them), the scheduled boundaries from `minUsersPerArm` users on (O'Brien–Fleming boundaries are far out while
    the information is small, and a canary that costs a tenth of the turns is rolled back on the first day)."""
    missing = [
        f"{arm}: {label}"
        for arm, stats_ in (("control", control), ("treatment", treatment))
        for label, value in (
            ("depthLogSum", stats_.depth_log_sum),
            ("depthLogSumSquares", stats_.depth_log_sum_squares),
        )
        if value is None
    ]
    if missing:
        return (
            f"depth is refused: the reading lacks the log-scale depth sums ({', '.join(missing)}) that its "
            "deterioration tests read; fix: upgrade the exporter (flywheel_depth_log_turns_total, "
            "flywheel_depth_log_turns_squared_total) or set promotion.queries.depthLogSum and depthLogSumSquares "
            "(for a running canary, the plan frozen at its start keeps its queries: start a new generation)"
        )
    engaged = min(control.engaged_users, treatment.engaged_users) >= promotion.min_events_per_arm
    if not engaged and look is None:
        return _depth_waits(promotion, control, treatment)
    harm = None
    if numbers.get("counter_resets", 0.0) == 0:
        # deterioration on the log scale: depth is heavy-tailed, and the mean of log(1 + depth) sees a fall of
        # the typical user's depth with far less noise than the mean of depth (docs/metrics.md, section 5)
        assert control.depth_log_sum is not None and control.depth_log_sum_squares is not None
        assert treatment.depth_log_sum is not None and treatment.depth_log_sum_squares is not None
        log_c = stats.moments(control.users, control.depth_log_sum, control.depth_log_sum_squares)
        log_t = stats.moments(treatment.users, treatment.depth_log_sum, treatment.depth_log_sum_squares)
        harm = stats.absolute_lift(log_c, log_t)
        numbers["depth.log_control"] = log_c.mean
        numbers["depth.log_treatment"] = log_t.mean
        numbers["depth.log_lift"] = harm.estimate
        numbers["depth.log_lift_se"] = harm.standard_error
    # after a counter reset a returning user's log(1 + depth) is counted in two parts, which no bound fixes:
    # deterioration is judged on depth itself then (its stitched second moments are bounded, see _after_reset)
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
    verdict = _judge(
        "depth", c, t, promotion.min_depth_lift, promotion.sequential_tau, alphas, look, carried, numbers,
        always_valid=engaged, harm=harm,
    )  # fmt: skip
    return verdict



def _depth_waits(promotion: PromotionSpec, control: ArmStats, treatment: ArmStats) -> str:
    return (
        f"depth waits for {promotion.min_events_per_arm} engaged users per arm (control "
        f"{control.engaged_users}, treatment {treatment.engaged_users}): heavy-tailed depth is carried by them"
    )


def _judge(
    name: str,
    control: stats.Moments,
    treatment: stats.Moments,
    minimum_lift: float,
    tau: float,
    alphas: AlphaPlan,
    look: Look | None,
    carried: dict[str, float],
    numbers: dict[str, float],
    *,
    always_valid: bool = True,
    harm: stats.Lift | None = None,
) -> MetricVerdict:
    """The always-valid interval (two-sided at 2 × the harm level, so its upper side is the one-sided harm test)
    at every look; at a scheduled look the z-statistics against the group-sequential boundaries (group-sequential
    metrics), or the always-valid efficacy interval's lower side (the others). `harm`: the effect the
    deterioration tests judge when it is not the relative lift (depth's log-scale difference; its always-valid
    interval is carried as `<name>.log.*`)."""
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
    lower, upper, p_value = -math.inf, math.inf, 1.0
    judged, key = (relative, name) if harm is None else (harm, f"{name}.log")
    z_fixed = judged.estimate / judged.standard_error if judged.variance > 0 else None
    extra = {"harm_estimate": None if harm is None else harm.estimate, "z_fixed": z_fixed}
    if always_valid:
        sequential_ = stats.msprt(judged, tau=tau, alpha=2.0 * alphas.harm_always_valid[name])
        lower, upper, p_value = _intersect(key, sequential_, carried)
        _put_interval(numbers, key, lower, upper, p_value)
    if name not in GROUP_SEQUENTIAL_METRICS:
        if not always_valid:
            return MetricVerdict(name, relative.estimate, lower, upper, p_value, minimum_lift)
        # efficacy by its own always-valid interval (one-sided: two-sided at 2 × its level), judged at scheduled looks
        efficacy = stats.msprt(relative, tau=tau, alpha=2.0 * alphas.efficacy[name])
        low, _, _ = _intersect(f"{name}.efficacy", efficacy, carried)
        if math.isfinite(low):
            numbers[f"{name}.efficacy.lower"] = low
        if look is None or not look.efficacy_fractions:
            return MetricVerdict(name, relative.estimate, lower, upper, p_value, minimum_lift)
        se = relative.standard_error or 1.0
        z = (low - minimum_lift) / se  # ≥ 0 exactly when the efficacy interval clears the minimum lift
        return MetricVerdict(name, relative.estimate, lower, upper, p_value, minimum_lift, z, None, 0.0, math.inf)
    if look is None or relative.variance <= 0 or judged.variance <= 0:
        return MetricVerdict(name, relative.estimate, lower, upper, p_value, minimum_lift, **extra)
    se = relative.standard_error
    z_efficacy, z_harm = (relative.estimate - minimum_lift) / se, z_fixed
    harm_bound = sequential.boundaries(alphas.harm_scheduled[name], look.harm_fractions)[-1]
    efficacy_bound = math.inf
    if look.efficacy_fractions:
        efficacy_bound = sequential.boundaries(alphas.efficacy[name], look.efficacy_fractions)[-1]
    numbers[f"{name}.z_efficacy"] = z_efficacy
    numbers[f"{name}.z_harm"] = z_harm
    numbers[f"{name}.efficacy_bound"] = efficacy_bound
    numbers[f"{name}.harm_bound"] = harm_bound
    return MetricVerdict(
        name, relative.estimate, lower, upper, p_value, minimum_lift, z_efficacy, z_harm, efficacy_bound, harm_bound,
        **extra,
    )  # fmt: skip


def _novelty(
    promotion: PromotionSpec,
    control: ArmStats,
    treatment: ArmStats,
    elapsed: timedelta,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> str | None:
    """The novelty guard: why PROMOTE must wait, or None when depth's lift holds over the last window.

    Checkpoints of (users, Σdepth, Σdepth²) are taken at the first reading of every half window from one window
    into the test on, and carried; the baseline is the newest one at least a window old, so the window (1 to 1.5
    windows long) never holds the first days, when a novelty effect is strongest: no promotion before two
    windows. Per exposed user, the turns added since then have mean ΔΣdepth/n, and their second moment is at
    most ΔΣdepth²/n (depth only grows), a conservative variance. Only the point estimate is required to exceed
    `minDepthLift`: the guard only blocks promotion, so it cannot add false decisions, and a stricter bound would
    cost most of the power of a real, lasting lift."""
    assert promotion.novelty_window is not None
    window = parse_duration(promotion.novelty_window).total_seconds() / 3600.0
    now = elapsed.total_seconds() / 3600.0
    checkpoints = sorted(
        {int(k.split(".")[2]) for k in carried if k.startswith("novelty.checkpoint.")},
    )
    taken = [(i, carried[f"novelty.checkpoint.{i}.hours"]) for i in checkpoints]
    index = int(now / (window / 2) + 1e-9)  # checkpoints at fixed times (k half windows), whatever the cadence
    if index >= 2 and (not taken or index > taken[-1][0]):
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
    matters for that guardrail. The interval is two-sided at 2α: its lower side is the one-sided breach test, its
    upper side the one-sided non-inferiority test, and only one of them can be wrong for a given true rate."""
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
        missing = _missing_per_user_sums(control, name) + _missing_per_user_sums(treatment, name)
        if missing:
            unmeasured.append(
                f"guardrail {name} is refused: the reading lacks its per-user sums "
                f"({', '.join(sorted(set(missing)))}), "
                "so a user who repeats a failure would count as many independent ones; fix: upgrade the exporter "
                "(flywheel_responses_squared_total, flywheel_guardrail_events_squared_total, "
                "flywheel_guardrail_events_cross_total) or set promotion.queries.responsesSumSquares, "
                "guardrailSumSquares and guardrailCrossSum"
            )
            continue
        key = f"guardrail.{name}"
        c = _guardrail_rate(control, name)
        t = _guardrail_rate(treatment, name)
        numbers[f"{key}.clustered"] = 1.0  # always, since issue 25 (a reading without per-user sums is refused)
        difference = stats.absolute_lift(c, t)
        numbers[f"{key}.control_rate"] = c.mean
        numbers[f"{key}.treatment_rate"] = t.mean
        numbers[f"{key}.difference"] = difference.estimate
        numbers[f"{key}.margin"] = guardrail.margin
        if difference.variance <= 0:
            # Every user of both arms has exactly the same rate (all 0, say): the plug-in variance says "certain",
            # which a handful of users cannot be. Each arm gets the binomial variance of its responses with one
            # pseudo-event and one pseudo-non-event (Agresti–Coull), and the test runs as always.
            difference = stats.Lift(
                estimate=difference.estimate,
                variance=_pseudo_variance(control, name) + _pseudo_variance(treatment, name),
            )
            numbers[f"{key}.variance_floor"] = difference.variance
        result = stats.msprt(difference, tau=guardrail.margin, alpha=2.0 * alpha)
        lower, upper, p_value = _intersect(key, result, carried)
        _put_interval(numbers, key, lower, upper, p_value)
        verdicts.append(GuardrailVerdict(name, guardrail.margin, difference.estimate, lower, upper))
    return verdicts, unmeasured


def _missing_per_user_sums(arm: ArmStats, name: str) -> list[str]:
    missing = []
    if arm.responses_sum_squares is None:
        missing.append("responsesSumSquares")
    if name not in arm.guardrail_sum_squares:
        missing.append(f"guardrailSumSquares[{name}]")
    if name not in arm.guardrail_cross_sums:
        missing.append(f"guardrailCrossSums[{name}]")
    return missing


def _pseudo_variance(arm: ArmStats, name: str) -> float:
    p = (min(arm.guardrails[name], arm.responses) + 1.0) / (arm.responses + 2.0)
    return p * (1.0 - p) / arm.responses


def _guardrail_rate(arm: ArmStats, name: str) -> stats.Moments:
    """Events per response with the user-clustered variance from the exporter's per-user sums."""
    events = min(arm.guardrails[name], arm.responses)
    squares, cross = arm.guardrail_sum_squares[name], arm.guardrail_cross_sums[name]
    assert arm.responses_sum_squares is not None
    if arm.users < 2:
        return stats.Moments(n=1, mean=events / arm.responses, variance=0.0)
    return stats.clustered_rate(arm.users, events, squares, arm.responses, arm.responses_sum_squares, cross)


def _metric_check(verdict: MetricVerdict) -> GateCheck:
    if verdict.worse:
        message = f"{verdict.name} is significantly worse."
    elif verdict.better:
        message = f"{verdict.name} crossed its efficacy boundary (better than the minimum lift)."
    else:
        message = f"{verdict.name} is not significantly different yet."
    return GateCheck(
        name=verdict.name,
        passed=not verdict.worse,
        value=verdict.lift,
        limit=(
            f"at a scheduled look z(lift − {verdict.minimum_lift:.2%}) ≥ the efficacy boundary to win; always-valid "
            "upper bound ≥ 0 and z(lift) above −(the deterioration boundary) to stay"
        ),
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
