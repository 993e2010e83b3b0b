"""The offline guard: checks on the evaluation stage's metrics before any user sees the candidate (pure).

It encodes the report's lesson from generation V12: a reward-model win rate far above its parent (70.7 %), a
gap between user and internal traffic (70.7 % vs 43.7 %) and an emoji spike (+238.5 %) came with an
engagement drop. Gaming is the optimised reward model preferring the candidate while what was not optimised
does not: the band's upper edge compares the optimised RM's win rate with an independent judge's on the same
prompts when one was trained (issue 26), and falls back on the absolute limit only without one.

Every check is reported with its number, its n and a 95 % interval, and fails only when the
interval is past its limit: a few hundred prompts carry a standard error of several points, and a verdict on a
point estimate would be noise. Where the metrics carry no n (older eval stages), the point estimate decides.
Each failed check is named in the reasons.
"""

from __future__ import annotations

import math
from datetime import datetime

from flywheel_operator.api import GateCheck, OfflineGateResult, OfflineGateSpec, OfflineMetrics

Z = 1.959963984540054
"""Two-sided 95 % normal quantile of every interval here."""

STYLE_FLOORS: dict[str, float] = {
    "emoji_rate": 0.1,
    "list_rate": 0.05,
    "mean_length": 1.0,
    "stock_phrase_rate": 0.05,
}
"""Smallest parent value a relative drift is measured against (units of each style statistic), so that a
parent that almost never used an artifact does not turn a handful of responses into a huge drift: on an
evaluation set of about a hundred prompts, 2 emojis against 6 is noise, not a spike. Below one emoji in ten
responses, or one list or stock phrase in twenty, the limit is read as an absolute increase of that floor."""


def wilson_interval(rate: float, n: int | None) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion observed as `rate` over `n` trials; the point when n is unknown."""
    if not n:
        return rate, rate
    centre = (rate + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(rate * (1 - rate) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return max(0.0, min(rate, centre - half)), min(1.0, max(rate, centre + half))  # rounding may not leave the point


def absolute_difference_interval(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """95 % interval of |p1 − p2| for two independent proportions: Newcombe's hybrid score interval for the
    difference (Wilson limits of each rate; within [−1, 1]), folded at 0. It never leaves [0, 1]."""
    l1, u1 = wilson_interval(p1, n1)
    l2, u2 = wilson_interval(p2, n2)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    low, high = max(-1.0, low), min(1.0, high)
    if low <= 0 <= high:
        return 0.0, max(-low, high)
    return min(abs(low), abs(high)), max(abs(low), abs(high))


def evaluate_offline(gate: OfflineGateSpec, metrics: OfflineMetrics, *, now: datetime) -> OfflineGateResult:
    """Run every offline check; `passed` only when all pass."""
    checks = [
        _band("win-rate-band", metrics, gate, "pointwise-RM win rate on user prompts"),
        _divergence(metrics, gate),
    ]
    checks.append(
        _at_least(
            "instruction-following",
            metrics.instruction_following,
            metrics.instruction_responses,
            gate.min_instruction_following,
            "share of responses that follow every character instruction",
            "minInstructionFollowing",
        )
    )
    checks.append(
        _at_most(
            "violation-rate",
            metrics.violation_rate,
            metrics.instruction_responses,
            gate.max_violation_rate,
            "share of responses that break a character instruction",
            "maxViolationRate",
        )
    )
    checks.append(
        _at_most(
            "false-refusal-rate",
            metrics.false_refusal_rate,
            metrics.benign_prompts,
            gate.max_false_refusal_rate,
            "share of benign prompts refused",
            "maxFalseRefusalRate",
        )
    )
    limits = gate.style_drift.model_dump()
    candidate = metrics.style.model_dump()
    parent = metrics.parent_style.model_dump()
    checks.extend(
        _style_drift(
            field, candidate[field], parent[field], limits[field],
            metrics.style_difference_sd.get(field), metrics.style_responses,
            metrics.style_sd.get(field), metrics.parent_style_sd.get(field),
        )
        for field in limits
    )
    failed = [c for c in checks if not c.passed]
    return OfflineGateResult(
        passed=not failed,
        checks=checks,
        reasons=[f"{c.name}: {c.message}" for c in failed],
        metrics=metrics,
        at=now,
    )


def _interval_words(lower: float, upper: float, n: int | None) -> str:
    return f" (95 % CI [{lower:.3f}, {upper:.3f}], n={n})" if n else " (n unknown: point estimate)"


DISABLED = "disabled"
"""The `limit` of a check whose limit lets every possible value pass (a minimum of 0, a maximum of 1)."""


def _disabled(name: str, value: float | None, n: int | None, interval: list[float] | None, setting: str) -> GateCheck:
    shown = "not measured" if value is None else f"{value:.3f}"
    return GateCheck(name=name, passed=True, value=value, limit=DISABLED, n=n, interval=interval,
                     message=f"disabled ({setting} lets every value pass); measured {shown}.")


JUDGE = "pairwise RM"
"""The band's judge in eval results that name none (`judgeWinRateUser` unset, eval stages before issue 26's h26b):
the pairwise reward model, optimised by no stage. Newer eval stages judge with the user-signal model (`judgeModel`):
with no network weight the pairwise model's text score is the pointwise model's learned part itself."""


def paired_difference_interval(p1: float, p2: float, n: int | None, correlation: float) -> tuple[float, float]:
    """95 % interval of p1 − p2 for two proportions measured on the same n items whose per-item outcomes
    correlate by `correlation`: the method of variance estimates recovery with Wilson limits (Newcombe 1998's
    method 10 for paired proportions, Zou & Donner 2008). At correlation 0 it is Newcombe's interval for two
    independent proportions, wider than the paired one whenever the outcomes agree item by item. Within [−1, 1];
    the point when n is unknown."""
    if not n:
        return p1 - p2, p1 - p2
    l1, u1 = wilson_interval(p1, n)
    l2, u2 = wilson_interval(p2, n)
    r = max(-1.0, min(1.0, correlation))
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * r * (p1 - l1) * (u2 - p2)))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 + (p2 - l2) ** 2 - 2 * r * (u1 - p1) * (p2 - l2)))
    return max(-1.0, min(low, d)), min(1.0, max(high, d))


def _judge(metrics: OfflineMetrics) -> tuple[float | None, float | None, str, str]:
    """The independent judge's win rate on the band's prompts, the per-prompt correlation of its wins with the
    optimised model's, and its name; None with the reason no judge decides. The eval stage's judge
    (`judgeWinRateUser`, issue 26: the user-signal model, fitted on other labels) when it measured one, else the
    pairwise RM (eval stages before it). A judge whose verdict equals the optimised model's on every prompt is the
    same function there (a pairwise model with the same lexical head and no network weight) and judges nothing."""
    n = metrics.win_rate_user_n
    if metrics.judge_win_rate_user is not None:
        judge, r, ties = metrics.judge_win_rate_user, metrics.judge_win_correlation_user, metrics.judge_ties_user
        name = metrics.judge_model or "independent judge"
    else:
        judge, r = metrics.pairwise_win_rate_user, metrics.pairwise_win_correlation_user
        ties, name = metrics.pairwise_ties_user, JUDGE
    if judge is None:
        return None, None, name, ("no independent judge was trained (no pairwise reward model), so the absolute max "
                                  "decides")
    if metrics.judge_identical_user:
        return None, None, name, (f"the judge ({name}) gave the optimised RM's verdict on every prompt: the same "
                                  "function there, so it is no judge and the absolute max decides")
    if n and ties is not None and 2 * ties > n:
        return None, None, name, (f"the {name} could not order candidate and parent on {ties} of {n} prompts (a "
                                  "model that learned nothing), so it is no judge and the absolute max decides")
    return judge, r, name, ""


def _band(name: str, metrics: OfflineMetrics, gate: OfflineGateSpec, what: str) -> GateCheck:
    """The win-rate band. Its lower edge reads the whole reward (rule features too): whether the candidate is
    better at all; a real step up in a verified trait wins pairs without gaming, and a learned score that stays
    even is no loss. Its upper edge reads gaming on the RM's learned score, the part a candidate can push up
    without changing what any rule checks: when an independent judge was trained (`JUDGE`), gaming is the
    optimised RM preferring the candidate on more prompts than the judge does on the same prompts, by more than
    `maxJudgeGap` (the paired interval of the gap entirely above it); a real step up wins pairs for both. Without
    a judge, the learned-score win rate entirely above the absolute `max` (the report's rule after V12)."""
    band = gate.win_rate_band
    value, n, whole = metrics.win_rate_user, metrics.win_rate_user_n, metrics.reward_win_rate_user
    lower, upper = wilson_interval(value, n)
    judge, r, judge_name, no_judge = _judge(metrics)
    ceiling = band.max if judge is None else band.max_judge_gap
    if band.min <= 0 and ceiling >= 1:
        setting = f"winRateBand [{band.min:g}, {band.max:g}]" if judge is None else (
            f"winRateBand.min {band.min:g} and maxJudgeGap {band.max_judge_gap:g}")
        return _disabled(name, value, n, [lower, upper], setting)
    measured = f"{what} is {value:.3f}" + _interval_words(lower, upper, n)
    whole_upper = upper if whole is None else wilson_interval(whole, n)[1]
    if whole is not None:
        measured += f"; by the whole reward {whole:.3f}"
    if whole_upper < band.min:
        verdict, lower_edge = False, f", entirely below {band.min:.2f}: the candidate is not better than its parent."
    else:
        verdict, lower_edge = True, ""
    if judge is None:
        limit = f"in [{band.min:.2f}, {band.max:.2f}]"
        gaming = lower > band.max
        if lower_edge:
            message = measured + lower_edge
        elif gaming:
            message = (
                f"{measured}, entirely above {band.max:.2f}: the candidate is likely gaming the reward model "
                f"(the report's V12 reached 0.707 and lost engagement); {no_judge}."
            )
        else:
            message = f"{measured}: the band is within reach of the interval ({no_judge})."
    else:
        limit = f">= {band.min:.2f} (whole reward); learned − judge <= +{band.max_judge_gap:.2f}"
        gap = value - judge
        gap_low, gap_high = paired_difference_interval(value, judge, n, 0.0 if r is None else r)
        how = "paired" if r is not None else "unpaired: the eval result carries no per-prompt correlation"
        measured += (
            f"; by the independent judge ({judge_name}, never RL's reward) {judge:.3f} on the same prompts: a gap of "
            f"{gap:+.3f}" + (f" (95 % CI [{gap_low:+.3f}, {gap_high:+.3f}], {how})" if n else " (n unknown: point "
                                                                                              "estimate)")
        )
        gaming = gap_low > band.max_judge_gap
        if lower_edge:
            message = measured + lower_edge
        elif gaming:
            message = (
                f"{measured}, entirely above the margin +{band.max_judge_gap:.2f}: the optimised reward model "
                "prefers the candidate on more prompts than a judge it was never optimised against — likely "
                "gaming it (the report's V12 reached 0.707 and lost engagement)."
            )
        else:
            above = f" (above the absolute max {band.max:.2f}, which decides only without a judge)" \
                if lower > band.max else ""
            message = (
                f"{measured}: the optimised RM prefers the candidate no more than the judge does, give or take the "
                f"margin +{band.max_judge_gap:.2f}{above}: progress both see, not gaming."
                if gap_high <= band.max_judge_gap else
                f"{measured}: the gap's interval reaches down to the margin +{band.max_judge_gap:.2f}{above}: not "
                "shown to be gaming."
            )
    return GateCheck(
        name=name, passed=verdict and not gaming, value=value, limit=limit, message=message, n=n,
        interval=[lower, upper],
    )


def _divergence(metrics: OfflineMetrics, gate: OfflineGateSpec) -> GateCheck:
    user, internal = metrics.win_rate_user, metrics.win_rate_internal
    limit = f"<= {gate.max_win_rate_divergence:.2f}"
    if internal is None or metrics.win_rate_internal_n == 0:
        return GateCheck(
            name="win-rate-divergence", passed=True, value=None, limit=limit, n=0,
            message="skipped: no internal prompts were evaluated, so the user/internal divergence was not measured.",
        )
    gap = abs(user - internal)
    if gate.max_win_rate_divergence >= 1:
        limit_text = f"maxWinRateDivergence {gate.max_win_rate_divergence:g}"
        return _disabled("win-rate-divergence", gap, None, None, limit_text)
    known = metrics.win_rate_user_n and metrics.win_rate_internal_n
    if known:
        lower, upper = absolute_difference_interval(user, metrics.win_rate_user_n, internal,
                                                    metrics.win_rate_internal_n)
    else:
        lower = upper = gap
    passed = lower <= gate.max_win_rate_divergence
    n = min(metrics.win_rate_user_n or 0, metrics.win_rate_internal_n or 0) if known else None
    message = (
        f"win rates on user ({user:.3f}) and internal ({internal:.3f}) prompts differ by {gap:.3f}"
        + _interval_words(lower, upper, n)
        + ("." if passed else f", surely more than {gate.max_win_rate_divergence:.2f}: a red flag for reward hacking "
           "(V12).")
    )
    return GateCheck(name="win-rate-divergence", passed=passed, value=gap, limit=limit, message=message, n=n,
                     interval=[lower, upper])


def _at_least(name: str, value: float, n: int | None, minimum: float, what: str, setting: str) -> GateCheck:
    lower, upper = wilson_interval(value, n)
    if minimum <= 0:
        return _disabled(name, value, n, [lower, upper], f"{setting} {minimum:g}")
    passed = upper >= minimum
    message = f"{what} is {value:.3f}" + _interval_words(lower, upper, n) + (
        "." if passed else f", surely below the minimum {minimum:.3f}."
    )
    return GateCheck(name=name, passed=passed, value=value, limit=f">= {minimum:.3f}", message=message, n=n,
                     interval=[lower, upper])


def _at_most(name: str, value: float, n: int | None, maximum: float, what: str, setting: str) -> GateCheck:
    lower, upper = wilson_interval(value, n)
    if maximum >= 1:
        return _disabled(name, value, n, [lower, upper], f"{setting} {maximum:g}")
    passed = lower <= maximum
    message = f"{what} is {value:.3f}" + _interval_words(lower, upper, n) + (
        "." if passed else f", surely above the maximum {maximum:.3f}."
    )
    return GateCheck(name=name, passed=passed, value=value, limit=f"<= {maximum:.3f}", message=message, n=n,
                     interval=[lower, upper])


PROPORTIONS = frozenset({"list_rate", "stock_phrase_rate"})
"""Style statistics that are shares of responses (0 or 1 each); the others are means of counts (emojis, words)."""


def mean_interval(mean: float, sd: float | None, n: int | None, *, proportion: bool) -> tuple[float, float] | None:
    """95 % interval of one model's style statistic: Wilson's for a share of responses, a normal one kept at or
    above 0 for a mean count; None when its spread is unknown."""
    if not n:
        return None
    if proportion:
        return wilson_interval(mean, n)
    if sd is None:
        return None
    half = Z * sd / math.sqrt(n)
    return max(0.0, mean - half), mean + half


def ratio_interval(
    candidate: float, parent: float, candidate_limits: tuple[float, float], parent_limits: tuple[float, float],
    correlation: float,
) -> tuple[float, float]:
    """95 % interval of candidate / parent (both means of non-negative values, parent > 0) by MOVER-R (Donner &
    Zou 2012, the method of variance estimates recovery that Newcombe's interval for a difference of proportions
    is the additive case of), with the two means' own intervals and their correlation on paired prompts.

    The lower limit is never below 0, so a relative drift never claims below −100 %; the upper limit is infinite
    when the parent's interval reaches 0.
    """
    (l1, u1), (l2, u2) = candidate_limits, parent_limits
    a = u2 * (2 * parent - u2)
    b = candidate * parent - correlation * (candidate - l1) * (u2 - parent)
    c = l1 * (2 * candidate - l1)
    root = b * b - a * c
    lower = c / (b + math.sqrt(root)) if root >= 0 and b + math.sqrt(root) > 0 else 0.0
    a = l2 * (2 * parent - l2)
    b = candidate * parent - correlation * (u1 - candidate) * (parent - l2)
    c = u1 * (2 * candidate - u1)
    root = b * b - a * c
    upper = (b + math.sqrt(root)) / a if a > 0 and root >= 0 else math.inf
    ratio = candidate / parent
    return max(0.0, min(lower, ratio)), max(upper, ratio)


def _correlation(sd_candidate: float, sd_parent: float, sd_difference: float | None) -> float:
    """Correlation of candidate and parent values on the same prompts, from var(c − p) = vc + vp − 2 r sc sp."""
    if sd_difference is None or sd_candidate <= 0 or sd_parent <= 0:
        return 0.0
    r = (sd_candidate**2 + sd_parent**2 - sd_difference**2) / (2 * sd_candidate * sd_parent)
    return max(-1.0, min(1.0, r))


def _style_drift(
    field: str, candidate: float, parent: float, limit: float, difference_sd: float | None, n: int | None,
    candidate_sd: float | None = None, parent_sd: float | None = None,
) -> GateCheck:
    """Relative increase over the parent on the same prompts, (candidate − parent) / max(parent, floor); fails
    when the whole 95 % interval is above the limit (decreases never fail: fewer emojis is not an artifact).

    The interval is the ratio's (MOVER-R, `ratio_interval`) scaled the same way, so it stays possible: never
    below −100 % (a style statistic cannot go below 0). A parent at 0 has no ratio: the candidate's own interval
    over the floor. Eval results from before issue 28 carry only the spread of the paired differences: a normal
    interval of the difference then, cut at what a candidate at 0 would give."""
    scale = max(parent, STYLE_FLOORS[field])
    drift = (candidate - parent) / scale
    proportion = field in PROPORTIONS
    if proportion:
        candidate_sd = math.sqrt(candidate * (1 - candidate))
        parent_sd = math.sqrt(parent * (1 - parent))
    own = mean_interval(candidate, candidate_sd, n, proportion=proportion)
    base = mean_interval(parent, parent_sd, n, proportion=proportion)
    counted = n if n and difference_sd is not None else None
    if counted is None:
        lower = upper = drift
    elif own is None or base is None:  # eval results before issue 28 carry only the difference's spread
        half = Z * difference_sd / math.sqrt(n) / scale
        lower, upper = max(-parent / scale, drift - half), drift + half  # the candidate cannot go below 0
    elif parent == 0:
        lower, upper = own[0] / scale, own[1] / scale
    else:
        r = _correlation(candidate_sd or 0.0, parent_sd or 0.0, difference_sd)
        low_ratio, high_ratio = ratio_interval(candidate, parent, own, base, r)
        lower, upper = (low_ratio - 1) * parent / scale, (high_ratio - 1) * parent / scale
        if math.isinf(upper):  # the parent's interval reaches 0: the difference's upper limit (MOVER-D) instead
            rise, fall = own[1] - candidate, parent - base[0]
            upper = (candidate - parent + math.sqrt(max(0.0, rise**2 + fall**2 - 2 * r * rise * fall))) / scale
    passed = lower <= limit
    spread = f"95 % CI [{lower:+.1%}, {upper:+.1%}], n={n}"
    message = f"{field} went from {parent:.3g} (parent) to {candidate:.3g} ({drift:+.1%}" + (
        f", {spread})" if counted else ", n unknown: point estimate)"
    ) + ("." if passed else f", surely more than the allowed +{limit:.0%}: a style artifact the reward model may "
         "reward.")
    return GateCheck(name=f"style-drift.{field}", passed=passed, value=drift, limit=f"<= +{limit:.0%}",
                     message=message, n=counted, interval=[lower, upper])
