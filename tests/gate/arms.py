"""Builders of per-arm sufficient statistics for the gate's tests (from simulated users, like the exporter)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from flywheel_operator.api import ArmStats, CanarySpec, DecisionPlan, OnlineReading, PromotionSpec
from flywheel_operator.api.readings import LOG_DEPTH_UNIT
from flywheel_operator.gate import decision_plan
from flywheel_operator.gate.store import LOG_UNITS

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GUARDRAILS = ("instruction-violations", "false-refusals", "errors")


def simulate_arm(
    rng: np.random.Generator,
    users: int,
    *,
    engage: float = 0.6,
    depth_scale: float = 1.0,
    guardrail_rate: float = 0.01,
    covariate: bool = True,
) -> ArmStats:
    """Users with a latent propensity: pre-period depth X and depth Y share it (ρ ≈ 0.7)."""
    propensity = rng.normal(0.0, 1.0, size=users)
    engaged = rng.random(users) < engage
    depth = np.where(engaged, np.exp(1.0 + 0.8 * propensity + rng.normal(0.0, 0.5, size=users)), 0.0)
    depth = depth * depth_scale
    pre = np.exp(1.0 + 0.8 * propensity + rng.normal(0.0, 0.5, size=users))
    per_user = np.ceil(depth).astype(int) + 1  # responses served to each user
    events = {name: rng.binomial(per_user, guardrail_rate) for name in GUARDRAILS}
    responses = int(per_user.sum())
    log_units = log_depth(depth)
    return ArmStats(
        users=users,
        engaged_users=int(engaged.sum()),
        depth_sum=float(depth.sum()),
        depth_sum_squares=float((depth**2).sum()),
        pre_sum=float(pre.sum()) if covariate else None,
        pre_sum_squares=float((pre**2).sum()) if covariate else None,
        pre_cross_sum=float((pre * depth).sum()) if covariate else None,
        responses=responses,
        guardrails={name: float(e.sum()) for name, e in events.items()},
        responses_sum_squares=float((per_user**2).sum()),
        guardrail_sum_squares={name: float((e**2).sum()) for name, e in events.items()},
        guardrail_cross_sums={name: float((e * per_user).sum()) for name, e in events.items()},
        depth_log_sum=float(log_units.sum()) * LOG_DEPTH_UNIT,
        depth_log_sum_squares=float((log_units**2).sum()) * LOG_DEPTH_UNIT**2,
    )


def log_depth(depth: np.ndarray) -> np.ndarray:
    """Each user's log(1 + depth) in the exporter's whole units of 1/65536 (gate.store.log_depth_units)."""
    return np.floor(np.log(1.0 + depth) * LOG_UNITS + 0.5)


def reading(
    control: ArmStats | None, treatment: ArmStats | None, error: str | None = None, crossover: int = 0
) -> OnlineReading:
    return OnlineReading(at=NOW, control=control, treatment=treatment, error=error, crossover_users=crossover)


def plan_of(
    spec: PromotionSpec, traffic: int = 50, *, min_duration: str = "1d", max_duration: str = "7d"
) -> DecisionPlan:
    """The plan the operator would freeze for `spec` on a canary with `traffic` % of users (1d–7d)."""
    canary = CanarySpec(
        inference_service="chat", traffic_percent=traffic, min_duration=min_duration, max_duration=max_duration
    )
    return decision_plan(spec, canary, now=NOW)


RATES = {"instruction-violations": 0.02, "false-refusals": 0.01, "errors": 0.01}


def exact_arm(
    users: int = 20_000,
    *,
    engaged: float = 0.5,
    depth: float = 4.0,
    sd: float = 3.0,
    rates: dict[str, float] | None = None,
) -> ArmStats:
    """Exact sums of `users` users (no sampling noise): a share `engaged` engaged, depth with mean `depth` and spread
    `sd`, 5 responses each, and a guardrail event at most once per user (`rates` per response, ≤ 0.2).

    The log-scale depth sums are those of the two-point distribution with that mean and spread (a share
    depth²/(sd² + depth²) of the users at (sd² + depth²)/depth, the others at 0): a possible population's."""
    responses = 5 * users
    events = {name: float(round(rate * responses)) for name, rate in (rates or RATES).items()}
    if depth > 0:
        value, share = (sd * sd + depth * depth) / depth, depth * depth / (sd * sd + depth * depth)
        units = float(log_depth(np.array([value]))[0])
        log_sum, log_sum_squares = share * users * units * LOG_DEPTH_UNIT, share * users * (units * LOG_DEPTH_UNIT) ** 2
    else:
        log_sum = log_sum_squares = 0.0
    return ArmStats(
        users=users,
        engaged_users=round(engaged * users),
        depth_sum=users * depth,
        depth_sum_squares=users * (sd * sd + depth * depth),
        responses=responses,
        guardrails=events,
        responses_sum_squares=25.0 * users,
        guardrail_sum_squares=dict(events),
        guardrail_cross_sums={name: 5.0 * e for name, e in events.items()},
        depth_log_sum=log_sum,
        depth_log_sum_squares=log_sum_squares,
    )
