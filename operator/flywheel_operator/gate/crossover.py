"""Crossover: users seen in both arms. Sticky arms are what the online test assumes (each user's outcome belongs to
one arm); a chat backend that does not route by `flywheel_operator.arms` mixes the arms and dilutes the effect. Like
a sample ratio mismatch, a crossover share above the tolerance means the experiment is broken, not that the
candidate is good or bad: the gate must not promote on it. Pure: counts in, a check out."""

from __future__ import annotations

from flywheel_operator.api import GateCheck, PromotionSpec

DEFAULT_TOLERANCE: float = PromotionSpec.model_fields["crossover_tolerance"].default
"""Share of exposed users allowed in both arms (a few mis-routed requests around a deploy); the spec's
`promotion.crossoverTolerance` default."""


def crossover_check(crossed: int, exposed: int, tolerance: float = DEFAULT_TOLERANCE) -> GateCheck:
    """Passes while at most `tolerance` of the `exposed` users of an experiment were `crossed` (seen in both arms)."""
    if crossed < 0 or exposed < 0 or (crossed > max(exposed, 0) and exposed > 0):
        raise ValueError(f"crossed ({crossed}) and exposed ({exposed}) must be counts with crossed <= exposed")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a share in [0, 1); got {tolerance}")
    limit = f"<= {tolerance:.4f}"
    if exposed == 0:
        return GateCheck(name="crossover", passed=True, limit=limit, message="No exposed users yet.")
    share = crossed / exposed
    if share > tolerance:
        return GateCheck(
            name="crossover",
            passed=False,
            value=share,
            limit=limit,
            message=(
                f"crossover: {crossed} of {exposed} exposed users ({share:.2%}) were seen in both arms; arms are not "
                "sticky, the experiment is broken: route each user by flywheel_operator.arms (status.canary.routing)"
            ),
        )
    return GateCheck(name="crossover", passed=True, value=share, limit=limit, message="Arms are sticky.")
