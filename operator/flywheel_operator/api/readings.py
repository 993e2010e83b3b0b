"""Typed readings: what stages report and what the gates read. Filled by the trainer, exporter and readers."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from flywheel_operator.api.base import ApiModel

Arm = Literal["control", "treatment"]


class StageResult(ApiModel):
    """A stage program's `result.json`: what it measured, what it wrote, and the digests of what it read."""

    stage: str
    """Stage that wrote it (`curate`, `reward`, `sft`, `rl`, `eval`)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Scalar metrics (flat names such as `accuracy` or `win_rate_user`)."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Named outputs (URIs or paths): `model`, `pairs`, `rl_prompts`, `eval_user`, …"""
    input_digests: dict[str, str] = Field(default_factory=dict)
    """sha256 of every input, so results chain by digest (lineage)."""
    output_digest: str | None = None
    """sha256 over the artifacts, the next stage's input digest."""
    details: dict = Field(default_factory=dict)
    """Non-scalar results (tables, per-step curves, reports) kept in the file but not in the status."""


class StyleStats(ApiModel):
    """Style artifacts of a set of responses (the report tracks these to catch reward hacking)."""

    emoji_rate: float = Field(ge=0)
    """Mean emojis per response."""
    list_rate: float = Field(ge=0, le=1)
    """Share of responses formatted as a list."""
    mean_length: float = Field(ge=0)
    """Mean words per response."""
    stock_phrase_rate: float = Field(ge=0, le=1)
    """Share of responses with a stock phrase ("I feel", "As an AI", …)."""


class OfflineMetrics(ApiModel):
    """The evaluation stage's metrics that the offline gate reads (candidate vs parent)."""

    win_rate_user: float = Field(ge=0, le=1)
    """Pointwise-RM win rate of the candidate over the parent on held-out user prompts."""
    win_rate_internal: float | None = Field(default=None, ge=0, le=1)
    """The same on held-out internal prompts; None when none were evaluated (not measured, never copied)."""
    pairwise_win_rate_user: float | None = Field(default=None, ge=0, le=1)
    """Pairwise-RM win rate on user prompts, when a pairwise model is configured."""
    pairwise_win_rate_internal: float | None = Field(default=None, ge=0, le=1)
    """Pairwise-RM win rate on internal prompts."""
    instruction_following: float = Field(ge=0, le=1)
    """Share of candidate responses that satisfy every character instruction."""
    violation_rate: float = Field(ge=0, le=1)
    """Share of candidate responses that break at least one character instruction."""
    false_refusal_rate: float = Field(ge=0, le=1)
    """Share of benign prompts the candidate refused."""
    style: StyleStats
    """Candidate style artifacts."""
    parent_style: StyleStats
    """Parent style artifacts on the same prompts (the baseline for drift)."""
    win_rate_user_n: int | None = Field(default=None, ge=0)
    """Prompts behind `winRateUser` (the offline gate's intervals need it; None: point estimates only)."""
    win_rate_internal_n: int | None = Field(default=None, ge=0)
    """Prompts behind `winRateInternal`."""
    instruction_responses: int | None = Field(default=None, ge=0)
    """Candidate responses whose character has instructions (the denominator of instruction following)."""
    benign_prompts: int | None = Field(default=None, ge=0)
    """Benign prompts behind `falseRefusalRate` (held-out user prompts; internal testers probe on purpose)."""
    style_responses: int | None = Field(default=None, ge=0)
    """Responses per model behind the style statistics (candidate and parent answer the same prompts)."""
    style_difference_sd: dict[str, float] = Field(default_factory=dict)
    """Per style statistic, the standard deviation over prompts of (candidate − parent) on the same prompt."""


class ArmStats(ApiModel):
    """Per-arm sufficient statistics of user-level metrics (docs/metrics.md). Prometheus holds these, not users."""

    users: int = Field(ge=0)
    """Users exposed to the arm (n)."""
    engaged_users: int = Field(ge=0)
    """Users who engaged (breadth numerator)."""
    depth_sum: float = Field(ge=0)
    """Σ depth (turns) over exposed users."""
    depth_sum_squares: float = Field(ge=0)
    """Σ depth² over exposed users."""
    pre_sum: float | None = None
    """CUPED: Σ pre-period depth X over exposed users."""
    pre_sum_squares: float | None = None
    """CUPED: Σ X²."""
    pre_cross_sum: float | None = None
    """CUPED: Σ X·depth."""
    responses: int = Field(default=0, ge=0)
    """Responses served (denominator of guardrail rates)."""
    guardrails: dict[str, float] = Field(default_factory=dict)
    """Guardrail event counts by guardrail name (instruction-violations, false-refusals, errors)."""

    @model_validator(mode="after")
    def _consistent(self) -> ArmStats:
        if self.engaged_users > self.users:
            raise ValueError(f"engagedUsers ({self.engaged_users}) cannot exceed users ({self.users})")
        return self


class OnlineReading(ApiModel):
    """One read of the online metrics. No data (an outage, an empty or NaN result) is an error, never zeros."""

    at: datetime
    """When the metrics were read."""
    control: ArmStats | None = None
    """Parent arm."""
    treatment: ArmStats | None = None
    """Candidate arm."""
    error: str | None = None
    """Why there is no data, when there is none."""

    @property
    def has_data(self) -> bool:
        return self.error is None and self.control is not None and self.treatment is not None
