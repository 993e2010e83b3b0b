"""Typed readings: what stages report and what the gates read. Filled by the trainer, exporter and readers."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from flywheel_operator.api.base import ApiModel

Arm = Literal["control", "treatment"]

LOG_DEPTH_UNIT = 2.0**-16
"""The log-scale depth sums count each user's log(1 + depth) in whole units of 1/65536 (integer counters in the
exporter and in SQL: exact, and the same bits from both; the rounding, ≤ 8·10⁻⁶, is far below any effect)."""


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
    """Pointwise-RM win rate of the candidate over the parent on held-out user prompts, on the reward model's
    learned part only (its text score; rule features such as follows-instructions left out: a real step up in a
    rule is not gaming, and each rule has its own check). The whole reward's is `rewardWinRateUser`."""
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
    style_sd: dict[str, float] = Field(default_factory=dict)
    """Per style statistic, the standard deviation over the candidate's responses (with `parentStyleSd` and
    `styleDifferenceSd`, the correlation of the paired responses behind the drift's ratio interval)."""
    parent_style_sd: dict[str, float] = Field(default_factory=dict)
    """Per style statistic, the standard deviation over the parent's responses."""
    # --- issue 26: the whole reward's win rates beside the learned part's (h26b) ---------------------------------
    reward_win_rate_user: float | None = Field(default=None, ge=0, le=1)
    """Win rate on user prompts by the pointwise RM's whole reward (learned part plus rule features), as RL
    optimises it; None from eval stages before issue 26 (their `winRateUser` is this one)."""
    reward_win_rate_internal: float | None = Field(default=None, ge=0, le=1)
    """The same on internal prompts."""
    # --- end issue 26 ---------------------------------------------------------------------------------------------
    # --- issue 26: the band's independent judge, paired on the same prompts (h26g) --------------------------------
    pairwise_win_correlation_user: float | None = Field(default=None, ge=-1, le=1)
    """Correlation over user prompts of the pointwise RM's per-prompt win on its learned part (1, ½ on a tie, 0)
    with the pairwise RM's (P(candidate better) above, at or below ½): with `winRateUser`, `pairwiseWinRateUser`
    and `winRateUserN`, the paired interval of their gap the band's upper edge reads. None from eval stages
    before it (the gate then uses the unpaired interval, wider when the two agree prompt by prompt); 0 when
    either model gave one verdict on every prompt (no covariance)."""
    pairwise_ties_user: int | None = Field(default=None, ge=0)
    """User prompts on which the pairwise RM could not order candidate and parent (P exactly ½, as a model that
    learned nothing gives): on more than half of them it is no judge, and the band's absolute `max` decides."""
    # --- end issue 26 (h26g) ----------------------------------------------------------------------------------------
    # --- issue 26: a judge with its own signal (h26b) ---------------------------------------------------------------
    judge_model: str | None = Field(default=None)
    """The reward model the band's upper edge judged with, and its kind (`continue (user-signal)`: fitted on users'
    continuation signals, not on the preference pairs the optimised model learned from; `pairwise` only when no
    user-signal model was trained). None from eval stages before it (the gate then reads the pairwise fields)."""
    judge_win_rate_user: float | None = Field(default=None, ge=0, le=1)
    """The judge's win rate of the candidate over the parent on the band's user prompts (its text score higher;
    ties half)."""
    judge_win_correlation_user: float | None = Field(default=None, ge=-1, le=1)
    """Correlation over those prompts of the optimised model's per-prompt win on its learned part with the
    judge's (the paired interval of their gap)."""
    judge_ties_user: int | None = Field(default=None, ge=0)
    """User prompts on which the judge scored candidate and parent the same."""
    judge_identical_user: bool | None = Field(default=None)
    """True when the judge's verdict equals the optimised model's learned part's on every user prompt: the same
    function there (as a pairwise model with the same lexical head and no network weight), so it is no judge and
    the band's absolute `max` decides."""
    # --- end issue 26 (h26b) ------------------------------------------------------------------------------------------


class ArmStats(ApiModel):
    """Per-arm sufficient statistics of user-level metrics (docs/metrics.md). Prometheus holds these, not users.

    Every sum is finite and non-negative (±Inf or NaN would turn a test statistic into a decision on nothing)."""

    users: int = Field(ge=0)
    """Users exposed to the arm (n)."""
    engaged_users: int = Field(ge=0)
    """Users who engaged (breadth numerator)."""
    depth_sum: float = Field(ge=0, allow_inf_nan=False)
    """Σ depth (turns) over exposed users."""
    depth_sum_squares: float = Field(ge=0, allow_inf_nan=False)
    """Σ depth² over exposed users."""
    pre_sum: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """CUPED: Σ pre-period depth X over exposed users."""
    pre_sum_squares: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """CUPED: Σ X²."""
    pre_cross_sum: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """CUPED: Σ X·depth."""
    responses: int = Field(default=0, ge=0)
    """Responses served (denominator of guardrail rates)."""
    guardrails: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(default_factory=dict)
    """Guardrail event counts by guardrail name (instruction-violations, false-refusals, errors)."""
    responses_sum_squares: float | None = Field(default=None, ge=0)
    """Σ over users of (responses served to the user)²: with the two below, the user-clustered variance of the
    guardrail rates (a user's responses are not independent). None when the exporter does not provide it."""
    guardrail_sum_squares: dict[str, float] = Field(default_factory=dict)
    """Σ over users of (the user's guardrail events)², by guardrail name."""
    guardrail_cross_sums: dict[str, float] = Field(default_factory=dict)
    """Σ over users of (the user's guardrail events × the user's responses), by guardrail name."""
    adopted_users: int = Field(default=0, ge=0)
    """Users counted from an engagement event after the exporter lost its state (their exposure came before it):
    counted in `users` for the metrics, left out of the sample-ratio test (whether they come back depends on
    the arm)."""
    # --- issue 25: the log-scale depth sums (h25) -----------------------------------------------------------
    depth_log_sum: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Σ over exposed users of log(1 + depth), each term rounded to 1/65536 (`LOG_DEPTH_UNIT`): depth is heavy-tailed,
    and the gate's deterioration tests on depth read its mean on this scale (docs/metrics.md). None when the
    exporter does not provide it (the gate then refuses to judge depth, naming the fix)."""
    depth_log_sum_squares: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Σ over exposed users of (the same rounded log(1 + depth))²."""

    # --- issue 25: range checks of the per-user sums (h25) ---------------------------------------------------
    def range_problems(self) -> list[str]:
        """Sums that no set of `users` users could produce, in words (empty when all are possible). For values
        v_i ≥ 0 of n users: Σv² ≥ (Σv)²/n (Cauchy–Schwarz) and Σv² ≤ (Σv)²; for whole counts also Σv² ≥ Σv; a
        guardrail's events never exceed the responses, per user either (g_i ≤ r_i gives Σg² ≤ Σgr), and
        (Σgr)² ≤ Σg²·Σr². A reading that breaks one comes from a broken exporter or query, not from users."""
        problems: list[str] = []
        n = self.users

        def below(value: float, floor: float) -> bool:
            return value < floor - 1e-9 * max(1.0, abs(floor)) - 1e-6

        def second_moment(label: str, total: float, squares: float | None, *, counts: bool) -> None:
            if squares is None:
                return
            if n == 0 and (total > 0 or squares > 0):
                problems.append(f"{label} is {total:g} over 0 users")
                return
            if n and below(squares, total * total / n):
                problems.append(f"Σ{label}² = {squares:g} is below (Σ{label})²/users = {total * total / n:g}")
            if below(total * total, squares):
                problems.append(f"Σ{label}² = {squares:g} is above (Σ{label})² = {total * total:g}")
            if counts and below(squares, total):
                problems.append(f"Σ{label}² = {squares:g} is below Σ{label} = {total:g} (whole counts)")

        second_moment("depth", self.depth_sum, self.depth_sum_squares, counts=False)
        if self.depth_log_sum is not None or self.depth_log_sum_squares is not None:
            log_sum, log_squares = self.depth_log_sum or 0.0, self.depth_log_sum_squares
            second_moment("log(1+depth)", log_sum, log_squares, counts=False)
            # log(1 + d) ≤ d for each user, and by Jensen mean log(1 + d) ≤ log(1 + mean d)
            slack = n * LOG_DEPTH_UNIT
            if below(self.depth_sum + slack, log_sum):
                problems.append(f"Σlog(1+depth) = {log_sum:g} is above Σdepth = {self.depth_sum:g}")
            if n and below(n * math.log1p(self.depth_sum / n) + slack, log_sum):
                problems.append(
                    f"Σlog(1+depth) = {log_sum:g} is above users·log(1 + Σdepth/users) = "
                    f"{n * math.log1p(self.depth_sum / n):g} (Jensen)"
                )
            if log_squares is not None and below(self.depth_sum_squares + slack * (1 + 2 * 28), log_squares):
                problems.append(f"Σlog(1+depth)² = {log_squares:g} is above Σdepth² = {self.depth_sum_squares:g}")
        if self.pre_sum is not None:
            second_moment("pre", self.pre_sum, self.pre_sum_squares, counts=False)
            if (
                self.pre_sum_squares is not None
                and self.pre_cross_sum is not None
                and below(self.pre_sum_squares * self.depth_sum_squares, self.pre_cross_sum**2)
            ):
                problems.append("Σpre·depth is above √(Σpre²·Σdepth²) (Cauchy–Schwarz)")
        second_moment("responses", float(self.responses), self.responses_sum_squares, counts=True)
        for name, events in self.guardrails.items():
            if below(float(self.responses), events):
                problems.append(f"guardrail {name}: {events:g} events among {self.responses} responses")
            squares, cross = self.guardrail_sum_squares.get(name), self.guardrail_cross_sums.get(name)
            second_moment(f"{name}", events, squares, counts=True)
            if squares is not None and cross is not None:
                if below(cross, squares):
                    problems.append(f"guardrail {name}: Σg·r = {cross:g} is below Σg² = {squares:g} (g ≤ r per user)")
                if self.responses_sum_squares is not None and below(squares * self.responses_sum_squares, cross**2):
                    problems.append(f"guardrail {name}: Σg·r = {cross:g} is above √(Σg²·Σr²) (Cauchy–Schwarz)")
        return problems

    # --- end issue 25 ---------------------------------------------------------------------------------------

    @model_validator(mode="after")
    def _consistent(self) -> ArmStats:
        if self.engaged_users > self.users:
            raise ValueError(f"engagedUsers ({self.engaged_users}) cannot exceed users ({self.users})")
        if self.adopted_users > self.users:
            raise ValueError(f"adoptedUsers ({self.adopted_users}) cannot exceed users ({self.users})")
        return self


# --- issue 25: serving metrics per arm (h25) ------------------------------------------------------------
class ServingWindow(ApiModel):
    """One arm's serving metrics over the last window (KServe's request metrics)."""

    requests: float = Field(ge=0, allow_inf_nan=False)
    """Requests served over the window."""
    errors: float = Field(ge=0, allow_inf_nan=False)
    """Of them, requests answered with a 5xx."""
    latency_p95_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """p95 request latency over the window (None: no requests, or no latency histogram)."""


class ServingReading(ApiModel):
    """Both arms' serving metrics over one window of each serving guardrail, by guardrail metric."""

    windows: dict[str, dict[str, ServingWindow]] = Field(default_factory=dict)
    """`{metric: {"control": …, "treatment": …}}` for every serving guardrail that could be read."""
    errors: dict[str, str] = Field(default_factory=dict)
    """`{metric: why}` for the serving guardrails that could not be read (not judged this time)."""


# --- end issue 25 ---------------------------------------------------------------------------------------


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
    crossover_users: int = Field(default=0, ge=0)
    """Users of the experiment seen in both arms (counted once, in their first arm), as counted since the
    exporter's state began, like the arms' users."""
    serving: ServingReading | None = None
    """The predictor's serving metrics for the hard SRE guardrails (None: not read)."""

    @model_validator(mode="after")
    def _crossed_were_exposed(self) -> OnlineReading:
        if self.control is not None and self.treatment is not None:
            exposed = self.control.users + self.treatment.users
            if self.crossover_users > exposed:
                raise ValueError(
                    f"crossoverUsers ({self.crossover_users}) cannot exceed the users of both arms ({exposed})"
                )
        return self

    @property
    def has_data(self) -> bool:
        return self.error is None and self.control is not None and self.treatment is not None
