"""The offline guard: checks on the evaluation stage's metrics before any user sees the candidate (pure).

It encodes the report's lesson from generation V12: a reward-model win rate far above its parent (70.7 %), a
gap between user and internal traffic (70.7 % vs 43.7 %) and an emoji spike (+238.5 %) came with an
engagement drop. Every check is reported with its number and limit; each failed one is named in the reasons.
"""

from __future__ import annotations

from datetime import datetime

from flywheel_operator.api import GateCheck, OfflineGateResult, OfflineGateSpec, OfflineMetrics

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


def evaluate_offline(gate: OfflineGateSpec, metrics: OfflineMetrics, *, now: datetime) -> OfflineGateResult:
    """Run every offline check; `passed` only when all pass."""
    checks = [
        _band("win-rate-band", metrics.win_rate_user, gate, "pointwise-RM win rate on user prompts"),
        _divergence(metrics.win_rate_user, metrics.win_rate_internal, gate),
    ]
    checks.append(
        _at_least(
            "instruction-following",
            metrics.instruction_following,
            gate.min_instruction_following,
            "share of responses that follow every character instruction",
        )
    )
    checks.append(
        _at_most(
            "violation-rate",
            metrics.violation_rate,
            gate.max_violation_rate,
            "share of responses that break a character instruction",
        )
    )
    checks.append(
        _at_most(
            "false-refusal-rate",
            metrics.false_refusal_rate,
            gate.max_false_refusal_rate,
            "share of benign prompts refused",
        )
    )
    limits = gate.style_drift.model_dump()
    candidate = metrics.style.model_dump()
    parent = metrics.parent_style.model_dump()
    checks.extend(_style_drift(field, candidate[field], parent[field], limits[field]) for field in limits)
    failed = [c for c in checks if not c.passed]
    return OfflineGateResult(
        passed=not failed,
        checks=checks,
        reasons=[f"{c.name}: {c.message}" for c in failed],
        metrics=metrics,
        at=now,
    )


def _band(name: str, value: float, gate: OfflineGateSpec, what: str) -> GateCheck:
    band = gate.win_rate_band
    limit = f"in [{band.min:.2f}, {band.max:.2f}]"
    if value < band.min:
        message = f"{what} is {value:.3f}, below {band.min:.2f}: the candidate is not better than its parent."
    elif value > band.max:
        message = (
            f"{what} is {value:.3f}, above {band.max:.2f}: the candidate is likely gaming the reward model "
            "(the report's V12 reached 0.707 and lost engagement)."
        )
    else:
        message = f"{what} is {value:.3f}, inside the band."
    return GateCheck(name=name, passed=band.min <= value <= band.max, value=value, limit=limit, message=message)


def _divergence(user: float, internal: float, gate: OfflineGateSpec) -> GateCheck:
    gap = abs(user - internal)
    passed = gap <= gate.max_win_rate_divergence
    message = f"win rates on user ({user:.3f}) and internal ({internal:.3f}) prompts differ by {gap:.3f}" + (
        "." if passed else f", more than {gate.max_win_rate_divergence:.2f}: a red flag for reward hacking (V12)."
    )
    return GateCheck(
        name="win-rate-divergence",
        passed=passed,
        value=gap,
        limit=f"<= {gate.max_win_rate_divergence:.2f}",
        message=message,
    )


def _at_least(name: str, value: float, minimum: float, what: str) -> GateCheck:
    passed = value >= minimum
    message = f"{what} is {value:.3f}" + ("." if passed else f", below the minimum {minimum:.3f}.")
    return GateCheck(name=name, passed=passed, value=value, limit=f">= {minimum:.3f}", message=message)


def _at_most(name: str, value: float, maximum: float, what: str) -> GateCheck:
    passed = value <= maximum
    message = f"{what} is {value:.3f}" + ("." if passed else f", above the maximum {maximum:.3f}.")
    return GateCheck(name=name, passed=passed, value=value, limit=f"<= {maximum:.3f}", message=message)


def _style_drift(field: str, candidate: float, parent: float, limit: float) -> GateCheck:
    """Relative increase over the parent; decreases never fail (fewer emojis is not an artifact)."""
    drift = (candidate - parent) / max(parent, STYLE_FLOORS[field])
    passed = drift <= limit
    message = f"{field} went from {parent:.3g} (parent) to {candidate:.3g} ({drift:+.1%})" + (
        "." if passed else f", more than the allowed +{limit:.0%}: a style artifact the reward model may reward."
    )
    return GateCheck(name=f"style-drift.{field}", passed=passed, value=drift, limit=f"<= +{limit:.0%}", message=message)
