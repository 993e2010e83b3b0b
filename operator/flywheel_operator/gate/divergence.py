"""The overfitting alarm after promotion (or during the canary): offline gain without online lift (pure).

The report's generation V12 won 70.7 % of reward-model comparisons on user prompts yet lost engagement. When
the reward model says the candidate is clearly better and users say it is not, the reward model is being
gamed: the planner sets a condition and the operator a metric from this check, so the next generation's data
and reward models get a look before the flywheel turns again.
"""

from __future__ import annotations

from flywheel_operator.api import GateCheck, OfflineMetrics, OnlineDecision

HIGH_WIN_RATE = 0.55
"""A pointwise-RM win rate over the parent from which the offline gain counts as high (0.5 = no gain)."""


def detect_divergence(
    metrics: OfflineMetrics, decision: OnlineDecision, *, high_win_rate: float = HIGH_WIN_RATE
) -> GateCheck:
    """`passed=False` (the alarm) when the RM win rate is at least `high_win_rate` and neither breadth nor
    depth shows a positive online lift (point estimates from the decision's numbers). Without online lifts
    there is nothing to compare yet and the check passes with `value=None`."""
    lifts = {m: decision.numbers[f"{m}.lift"] for m in ("breadth", "depth") if f"{m}.lift" in decision.numbers}
    limit = f"online lift > 0 when the RM win rate is >= {high_win_rate:.2f}"
    if not lifts:
        return GateCheck(
            name="offline-online-divergence",
            passed=True,
            value=None,
            limit=limit,
            message="No online lift has been measured yet.",
        )
    best = max(lifts.values())
    described = ", ".join(f"{m} {v:+.2%}" for m, v in lifts.items())
    high = metrics.win_rate_user >= high_win_rate
    internal = "not measured" if metrics.win_rate_internal is None else f"{metrics.win_rate_internal:.1%}"
    if high and best <= 0:
        return GateCheck(
            name="offline-online-divergence",
            passed=False,
            value=best,
            limit=limit,
            message=(
                f"The reward model prefers the candidate ({metrics.win_rate_user:.1%} win rate on user "
                f"prompts, {internal} on internal) but users do not ({described}): "
                "the policy is likely gaming the reward model (report, V12); "
                "audit the reward model and the style drift."
            ),
        )
    return GateCheck(
        name="offline-online-divergence",
        passed=True,
        value=best,
        limit=limit,
        message=f"Offline win rate {metrics.win_rate_user:.1%} and online lift ({described}) agree.",
    )
