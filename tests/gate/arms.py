"""Builders of per-arm sufficient statistics for the gate's tests (from simulated users, like the exporter)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from flywheel_operator.api import ArmStats, OnlineReading

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
    responses = int(depth.sum()) + users
    return ArmStats(
        users=users,
        engaged_users=int(engaged.sum()),
        depth_sum=float(depth.sum()),
        depth_sum_squares=float((depth**2).sum()),
        pre_sum=float(pre.sum()) if covariate else None,
        pre_sum_squares=float((pre**2).sum()) if covariate else None,
        pre_cross_sum=float((pre * depth).sum()) if covariate else None,
        responses=responses,
        guardrails={name: float(rng.binomial(responses, guardrail_rate)) for name in GUARDRAILS},
    )


def reading(
    control: ArmStats | None, treatment: ArmStats | None, error: str | None = None, crossover: int = 0
) -> OnlineReading:
    return OnlineReading(at=NOW, control=control, treatment=treatment, error=error, crossover_users=crossover)
