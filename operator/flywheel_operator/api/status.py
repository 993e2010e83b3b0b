"""Status of a `FlywheelGeneration`: written only by the planner's output, one write per reconcile."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from flywheel_operator.api.base import ApiModel
from flywheel_operator.api.durations import Duration
from flywheel_operator.api.models import PromotionSpec
from flywheel_operator.api.readings import OfflineMetrics, OnlineReading

Phase = Literal[
    "Pending",
    "Curating",
    "TrainingRewardModels",
    "SFT",
    "RL",
    "Evaluating",
    "OfflineGate",
    "Canary",
    "Observing",
    "Promoted",
    "RolledBack",
    "Failed",
    "Suspended",
]
TERMINAL_PHASES: frozenset[str] = frozenset({"Promoted", "RolledBack", "Failed"})

StageState = Literal["Running", "Retrying", "Succeeded", "Failed"]
Outcome = Literal["PROMOTE", "ROLL_BACK", "CONTINUE", "INCONCLUSIVE"]


class StageRecord(ApiModel):
    """One stage's history: the Job (child) of its current attempt and what it reported."""

    name: str
    """Stage name: `curate`, `reward-<model>`, `sft`, `rl` or `eval`."""
    state: StageState
    """`Running` (a Job exists), `Retrying` (waiting out the backoff), `Succeeded` or `Failed` (attempts spent)."""
    attempts: int = Field(ge=1)
    """Attempts started so far."""
    child: str
    """Name of the current attempt's Job: `<generation>-<stage>-<attempt>`."""
    created_at: datetime
    """When the current attempt's Job was requested."""
    started_at: datetime | None = None
    """When the current attempt started running."""
    finished_at: datetime | None = None
    """When the stage succeeded or its last attempt failed."""
    next_attempt_at: datetime | None = None
    """While `Retrying`: when the next attempt starts."""
    message: str | None = None
    """Why the last attempt failed, or a short summary."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Scalar metrics from the stage's result.json."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Artifact URIs from the stage's result.json (inputs of later stages)."""
    output_digest: str | None = None
    """Digest of the stage's outputs (lineage)."""


class GateCheck(ApiModel):
    """One check of a gate, as data: what was measured, against what, and whether it passed."""

    name: str
    """Check name, e.g. `win-rate-band` or `style-drift.emoji_rate`."""
    passed: bool
    """Whether the check passed."""
    value: float | None = None
    """Measured value (None when it could not be measured)."""
    limit: str | None = None
    """Threshold in words, e.g. `in [0.50, 0.65]` or `<= 0.10`."""
    message: str
    """One sentence a person can act on."""
    n: int | None = None
    """How many observations the value stands on (None when not counted)."""
    interval: list[float] | None = None
    """Its 95 % confidence interval [lower, upper], when the check has one."""


class OfflineGateResult(ApiModel):
    """The offline gate's verdict over the evaluation metrics."""

    passed: bool
    """True only when every check passed."""
    checks: list[GateCheck] = Field(default_factory=list)
    """Every check with its numbers."""
    reasons: list[str] = Field(default_factory=list)
    """Messages of the failed checks (empty when passed)."""
    metrics: OfflineMetrics | None = None
    """The metrics the verdict was made on."""
    at: datetime | None = None
    """When the gate ran."""


class OnlineDecision(ApiModel):
    """The online gate's decision at one reading, with every number that led to it."""

    outcome: Outcome
    """`PROMOTE`, `ROLL_BACK`, `CONTINUE` (keep collecting) or `INCONCLUSIVE` (out of time without an answer)."""
    reasons: list[str] = Field(default_factory=list)
    """Why, in sentences."""
    numbers: dict[str, float] = Field(default_factory=dict)
    """Lifts, intervals, p-values, SRM statistic, sample sizes…"""
    checks: list[GateCheck] = Field(default_factory=list)
    """Each sub-test (SRM, breadth, depth, guardrails) as a check."""
    at: datetime | None = None
    """When it was decided."""


# --- issue 25: the frozen decision plan (h25) ---------------------------------------------------------------
class AlphaPlan(ApiModel):
    """Where the gate's family-wise α goes (Bonferroni: the false-decision rates add up to `alpha`). Every level
    is one-sided: a wrong roll-back and a wrong promotion are different errors, each counted once."""

    srm: float
    """The sequential sample-ratio test."""
    efficacy: dict[str, float]
    """Per success metric: the group-sequential efficacy boundary (PROMOTE when better by its minimum lift)."""
    harm_always_valid: dict[str, float]
    """Per success metric: the always-valid deterioration test (ROLL_BACK at any look)."""
    harm_scheduled: dict[str, float]
    """Per success metric: the group-sequential deterioration boundary (ROLL_BACK at a scheduled look, the last
    at `maxDuration`)."""
    guardrail: float
    """Each guardrail's breach (ROLL_BACK) and non-inferiority (needed to PROMOTE) one-sided level."""


class DecisionPlan(ApiModel):
    """The online gate's whole decision plan, copied into the status when the canary starts and the only thing
    the gate reads: editing `promotion` or the canary's timings during a live canary changes nothing (the
    operator ignores the edit with a Warning Event), so nobody can move the goal posts after a peek."""

    frozen_at: datetime
    """When the plan was copied (the canary's start)."""
    spec_generation: int | None = None
    """`metadata.generation` of the spec it was copied from."""
    promotion: PromotionSpec
    """The promotion settings as they were at the start (margins, minimum lifts, τ, shares, guardrails…)."""
    traffic_percent: int
    """Share of users on the candidate."""
    min_duration: Duration
    """No promotion before this much exposure."""
    max_duration: Duration
    """The last look (information fraction 1)."""
    check_interval: Duration
    """How often the metrics are read (the always-valid tests hold at any cadence)."""
    final_look_grace: Duration
    """How long the last look retries a failed reading."""
    look_every: Duration
    """The schedule of the group-sequential looks."""
    spending: str = "obrien-fleming"
    """The α-spending function of the group-sequential boundaries (Lan–DeMets, O'Brien–Fleming type)."""
    alpha: AlphaPlan
    """The α split."""
    schedule_hours: list[float] = Field(default_factory=list)
    """Elapsed hours of the scheduled looks, the last one at `maxDuration`."""
    expected_users_per_arm: int | None = None
    """Users per arm expected by `maxDuration` (the information fraction's denominator), if known."""


# --- end issue 25 ---------------------------------------------------------------------------------------


class OnlineStatus(ApiModel):
    """The online A/B test of the canary."""

    started_at: datetime | None = None
    """When the canary became Ready and exposure began."""
    readings: list[OnlineReading] = Field(default_factory=list)
    """The most recent readings (at most 20 are kept; Prometheus keeps the full series)."""
    decision: OnlineDecision | None = None
    """The gate's latest decision."""
    next_check_at: datetime | None = None
    """When the gate reads the metrics next."""
    divergence: GateCheck | None = None
    """The overfitting alarm at decision time: failed when a large offline RM gain met no online lift (V12)."""
    plan: DecisionPlan | None = None
    """The decision plan frozen at the canary's start (issue 25): what the gate reads, whatever the spec says now."""
    ignored_spec_generation: int | None = None
    """The latest `metadata.generation` whose edits to `promotion` or the canary's timings were ignored (a
    Warning Event `PlanFrozen` said so once)."""


class CanaryRouting(ApiModel):
    """How the chat backend gives each user their arm (`flywheel_operator.arms.endpoint_for`): a salted hash of
    the user id picks the arm, and each arm has its own endpoint, so arms are sticky per user in both modes."""

    salt: str
    """Experiment salt hashed with the user id."""
    traffic_percent: int
    """Share of users per arm (treatment below it, control the next share, the rest outside the experiment)."""
    endpoints: dict[str, str] = Field(default_factory=dict)
    """URL per arm (`control`, `treatment`) once KServe serves both; empty until the canary is Ready."""


class CanaryStatus(ApiModel):
    """The KServe canary."""

    phase: Literal["Waiting", "Deploying", "Ready", "Promoted", "RolledBack"]
    """Where the canary is (`Waiting`: the InferenceService carries another generation's canary)."""
    inference_service: str
    """InferenceService name."""
    mode: Literal["knative", "standard"]
    """KServe deployment mode used."""
    traffic_percent: int
    """Share of users on the candidate."""
    candidate_policy: str
    """Model URI served as the canary."""
    control_policy: str
    """Model URI of the parent."""
    requested_at: datetime
    """When the canary was requested."""
    ready_at: datetime | None = None
    """When it became Ready."""
    revisions: dict[str, str] = Field(default_factory=dict)
    """KServe revisions or predictor names (e.g. latestRolledoutRevision)."""
    message: str | None = None
    """Latest message from KServe."""
    routing: CanaryRouting | None = None
    """Sticky-arm routing the chat backend follows while the canary is Ready."""


class Condition(ApiModel):
    """A kstatus-style condition (`Ready`, `Reconciling`, `Stalled`, `Finished`, `OfflineGatePassed`, `CanaryReady`,
    `Promoted`). `Finished` is True on every terminal phase (Promoted, RolledBack, Failed): wait on it."""

    type: str
    """Condition type."""
    status: Literal["True", "False", "Unknown"]
    """Condition status."""
    reason: str
    """CamelCase reason."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: datetime
    """When `status` last changed."""
    observed_generation: int | None = None
    """metadata.generation the condition was computed for."""


class FinalDecision(ApiModel):
    """What became of the generation, and why."""

    outcome: Literal["PROMOTE", "ROLL_BACK", "INCONCLUSIVE", "FAIL"]
    """Promoted, rolled back (offline or online gate, or canary never ready), inconclusive, or failed."""
    reasons: list[str]
    """Every reason, in sentences with their numbers."""
    at: datetime
    """When it was decided."""


class FlywheelGenerationStatus(ApiModel):
    """Observed state of a generation."""

    phase: Phase = "Pending"
    """Where the generation is."""
    observed_generation: int | None = None
    """metadata.generation this status was computed for."""
    message: str | None = None
    """One line on what is happening or what is needed."""
    stage: str | None = None
    """Stage(s) in progress, for `kubectl get fwg`."""
    lift: str | None = None
    """Latest online lift summary, for `kubectl get fwg`."""
    decision_summary: str | None = None
    """Latest or final decision in one word, for `kubectl get fwg`."""
    policy: str | None = None
    """The starting policy (the parent's promoted policy or `basePolicy`)."""
    candidate_policy: str | None = None
    """The trained candidate (the RL stage's model)."""
    promoted_policy: str | None = None
    """Set once promoted: the policy children of this generation start from."""
    stages: list[StageRecord] = Field(default_factory=list)
    """Per-stage records, in pipeline order."""
    offline_gate: OfflineGateResult | None = None
    """The offline gate's verdict."""
    canary: CanaryStatus | None = None
    """The canary."""
    online: OnlineStatus | None = None
    """The online A/B test."""
    decision: FinalDecision | None = None
    """The final decision, once made."""
    conditions: list[Condition] = Field(default_factory=list)
    """kstatus-style conditions."""

    def record(self, name: str) -> StageRecord | None:
        return next((r for r in self.stages if r.name == name), None)
