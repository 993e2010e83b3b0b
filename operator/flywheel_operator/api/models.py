"""Spec of a `FlywheelGeneration`: what one turn of the engagement flywheel should do.

Field docstrings are the API reference (docs/api.md and the CRD descriptions are generated from them).
Choices the CharacterFlywheel report leaves open are defaults here, each documented where it is set.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from flywheel_operator.api.base import ApiModel
from flywheel_operator.api.durations import Duration, parse_duration

GROUP = "characterflywheel.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FlywheelGeneration"
PLURAL = "flywheelgenerations"
SHORT_NAME = "fwg"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
UNIQUE_BY_NAME = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
"""CRD list semantics: entries are keyed (and so unique) by name, enforced by the API server."""
PositiveInt = Annotated[int, Field(ge=1)]
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=40)]


# ----------------------------------------------------------------------------------------------- data
class TrafficSource(ApiModel):
    """A set of conversation logs in the contract of docs/data.md (JSONL or Parquet)."""

    uri: str = Field(min_length=1)
    """Where the logs are: a local path, `pvc://<claim>/<path>`, `s3://…` or `gs://…`; a directory or one file."""
    sample_size: PositiveInt | None = None
    """Conversations to sample from this source (stratified by character); all of them when unset."""


class DataSources(ApiModel):
    """Fresh traffic this generation learns from and the prompts it is evaluated on."""

    user_traffic: TrafficSource
    """Logs of real users talking to the parent (the A/B control) — the source of engagement signals."""
    internal_traffic: TrafficSource | None = None
    """Logs of internal testers and annotators; kept apart so offline win rates can be compared by source."""
    eval_prompts_user: TrafficSource | None = None
    """Held-out user prompts for offline evaluation; carved from `userTraffic` (disjoint from training) when unset."""
    eval_prompts_internal: TrafficSource | None = None
    """Held-out internal prompts for offline evaluation; carved from `internalTraffic` when unset."""


# --------------------------------------------------------------------------------------------- stages
class CurateSettings(ApiModel):
    """Data consolidation: filtering, near-duplicate removal, stratified sampling, pairs and prompt pools."""

    dedup_threshold: Fraction = 0.85
    """Jaccard similarity (MinHash over word 5-grams) above which two conversations are near-duplicates."""
    max_length_ratio: float = Field(default=1.5, ge=1.0)
    """Preference pairs whose longer response exceeds the shorter by more than this ratio are dropped, so a reward
    model cannot learn "longer wins" (the report filters pairs on length difference)."""
    max_emoji_difference: int = Field(default=1, ge=0)
    """Preference pairs whose responses differ by more emojis than this are dropped (emoji shortcut, report V12)."""
    max_pairs_per_context: PositiveInt = 4
    """Most preference pairs built from one context, so a popular opening does not dominate the reward model's
    data. A small world with few distinct openings needs more (the local example: 32)."""
    eval_fraction: Fraction = 0.1
    """Share of prompts held out for offline evaluation when no evaluation prompt set is given."""
    rl_prompt_pool_size: PositiveInt = 2000
    """Most prompts kept in the RL prompt pool (the RL stage then selects near-policy prompts from it)."""
    error_budget: Fraction = 0.01
    """Share of malformed log rows tolerated (reported by row number and skipped); above it curate fails."""


RewardModelKind = Literal["pointwise", "pairwise", "user-signal"]
UserSignal = Literal["continue", "thumb-up"]


class RewardModelSettings(ApiModel):
    """One reward model to train. Several train in parallel, one Job each."""

    name: DnsLabel
    """Short DNS label (it becomes part of the Job name `<generation>-reward-<name>-<attempt>`)."""
    kind: RewardModelKind
    """`pointwise`: Bradley–Terry scalar reward (drives RL and rejection sampling); `pairwise`: both responses in
    one input, predicts which is better (gives win rates); `user-signal`: a classifier of `signal`, used only to
    select rejection-sampling data because the report found user signals noisy."""
    signal: UserSignal | None = None
    """For `user-signal` models: which user signal is predicted, p(continue) or p(thumb up)."""
    base_model: str | None = None
    """Model to initialise from; the generation's starting policy when unset."""
    epochs: float = Field(default=1.0, gt=0)
    """Training epochs over the preference pairs or labels."""
    learning_rate: float = Field(default=5e-5, gt=0)
    """Peak learning rate."""
    center_rewards_coefficient: float = Field(default=0.01, ge=0)
    """Reward centering (TRL) for pointwise models, so rewards stay near zero mean."""
    max_length: PositiveInt = 512
    """Token limit of one scored input."""
    batch_size: PositiveInt = 8
    """Pairs (or labelled responses) per device and optimizer step."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps (tiny local runs); `epochs` decides when unset."""
    held_out_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    """Share of the data kept out of training to report accuracy and calibration (ECE) on."""

    @model_validator(mode="after")
    def _signal_matches_kind(self) -> RewardModelSettings:
        if self.kind == "user-signal" and self.signal is None:
            raise ValueError("a user-signal reward model needs `signal`: set it to 'continue' or 'thumb-up'")
        if self.kind != "user-signal" and self.signal is not None:
            raise ValueError(
                f"`signal` applies only to user-signal reward models; remove it from this {self.kind} model"
            )
        return self


class LoraSettings(ApiModel):
    """Low-rank adapters (peft) instead of full fine-tuning."""

    enabled: bool = False
    """Train LoRA adapters and merge them into the saved model."""
    r: PositiveInt = 16
    """Adapter rank."""
    alpha: PositiveInt = 32
    """Adapter scaling numerator."""
    dropout: Fraction = 0.05
    """Dropout on adapter inputs."""


class RejectionSamplingSettings(ApiModel):
    """Best-of-K sampling from the policy (and optional candidate models), rebuilt every generation."""

    samples_per_prompt: Annotated[int, Field(ge=2, le=64)] = 8
    """K: candidates drawn per prompt. The report does not publish K; 8 balances cost and selection strength."""
    candidate_models: list[str] = Field(default_factory=list)
    """Extra models (ids or URIs) that also propose candidates, e.g. a larger model as in the report."""
    prompts: PositiveInt = 1000
    """Prompts from fresh user traffic to sample for."""
    pointwise_weight: float = Field(default=1.0, ge=0)
    """Weight of the pointwise reward model's standardised score in the selection score."""
    continue_weight: float = Field(default=0.5, ge=0)
    """Weight of p(continue) from the user-signal model, when one is configured."""
    thumb_up_weight: float = Field(default=0.5, ge=0)
    """Weight of p(thumb up) from the user-signal model, when one is configured."""
    instruction_weight: float = Field(default=1.0, ge=0)
    """Weight of the share of the character's instructions a candidate follows (checked by the verifiers; the
    report's steerability annotations). 0 selects on the reward and user-signal models alone."""
    min_score_margin: float = Field(default=0.25, ge=0)
    """Keep a prompt's best candidate only if it beats the candidates' mean selection score by more than this
    (selection-score units: 1.0 = one standard deviation of the pointwise reward at weight 1, or all of a
    character's instructions at weight 1). Even at 0, a prompt whose candidates all score alike is rejected."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature for candidates."""
    max_new_tokens: PositiveInt = 128
    """Longest candidate response."""


class SftSettings(ApiModel):
    """Rejection-sampling SFT on the selected responses (TRL SFTTrainer)."""

    rejection_sampling: RejectionSamplingSettings = Field(default_factory=RejectionSamplingSettings)
    """How the SFT data are chosen."""
    epochs: float = Field(default=1.0, gt=0)
    """Epochs over the kept samples."""
    learning_rate: float = Field(default=1e-5, gt=0)
    """Peak learning rate."""
    max_length: PositiveInt = 1024
    """Token limit of one training conversation."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """Optional LoRA."""
    batch_size: PositiveInt = 8
    """Conversations per device and optimizer step."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps (tiny local runs); `epochs` decides when unset."""


class DpoSettings(ApiModel):
    """A small DPO patch before RL, for urgent style or safety issues (the report used DPO only this way)."""

    enabled: bool = False
    """Run the patch."""
    pairs_uri: str | None = None
    """Preference pairs for the patch; the curated engagement pairs when unset."""
    max_pairs: PositiveInt = 500
    """At most this many pairs: a patch, not a training phase."""
    beta: float = Field(default=0.1, gt=0)
    """DPO temperature."""
    learning_rate: float = Field(default=5e-7, gt=0)
    """Peak learning rate."""
    epochs: float = Field(default=1.0, gt=0)
    """Epochs over the patch pairs."""
    batch_size: PositiveInt = 8
    """Pairs per device and optimizer step."""


class RLSettings(ApiModel):
    """Online RL on near-policy prompts (the report: GRPO beat online DPO in A/B tests)."""

    algorithm: Literal["grpo", "online-dpo"] = "grpo"
    """`grpo` (default) or `online-dpo`."""
    kl_beta: float = Field(default=0.04, ge=0)
    """KL coefficient to the reference (the SFT model). 0 drops the reference model (TRL's GRPO default)."""
    num_generations: Annotated[int, Field(ge=2)] = 4
    """Group size: responses sampled per prompt."""
    prompt_selection: Literal["low-score", "high-variance", "mixed"] = "mixed"
    """Near-policy prompts kept for RL: lowest mean RM score, highest within-prompt RM variance, or half each."""
    selection_samples: Annotated[int, Field(ge=2)] = 4
    """Samples per candidate prompt used to estimate its RM mean and variance."""
    prompts: PositiveInt = 256
    """Prompts selected for RL."""
    instruction_reward_weight: float = Field(default=1.0, ge=0)
    """Weight of the programmatic instruction-following reward (share of instructions followed, 0–1) added to
    the RM's probability of beating the parent (0–1); docs/local.md, "The RL reward"."""
    reward_temperature: float | None = Field(default=None, gt=0)
    """Temperature T of P(beats parent) = sigmoid((RM − parent's mean RM) / T); the RM's fitted one when unset."""
    length_penalty: float = Field(default=0.5, ge=0)
    """Subtracted per unit of relative length increase over the parent's samples on the prompt (0.5: a response
    twice as long loses 0.5)."""
    emoji_penalty: float = Field(default=0.1, ge=-5)
    """Subtracted per emoji above the parent's mean on the prompt. Negative pays for emojis: only to model a
    team chasing the emoji pull (bench/flywheel.py's trap probe)."""
    checkpoint_every: PositiveInt | None = None
    """Keep the policy every this many optimizer steps and let the band choose the candidate among them (the
    report's band as a control: operate below 65 %, 60 % ideal). Unset: the last step is the candidate."""
    band_target: Fraction = 0.60
    """The candidate is the latest checkpoint whose pointwise-RM win rate over the parent, on `bandPrompts`
    curated prompts never trained on, stays at or below this (below the offline gate's 0.65 limit)."""
    band_prompts: PositiveInt = 100
    """Prompts of the curated RL pool after the selection pool that every checkpoint and the parent answer."""
    max_steps: PositiveInt = 200
    """Optimizer steps."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Peak learning rate."""
    max_new_tokens: PositiveInt = 128
    """Longest sampled response."""
    reward_model: str | None = None
    """Name of the pointwise reward model that scores rollouts; the first pointwise model when unset."""
    prompts_per_step: PositiveInt = 4
    """Prompts per device and optimizer step; each gets `numGenerations` rollouts."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of rollouts and of the prompt-selection samples."""
    selection_pool: PositiveInt = 1024
    """Candidate prompts from the curated pool that are sampled and scored to select the RL prompts."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """Optional LoRA for the policy (merged into the saved model)."""


class EvalSettings(ApiModel):
    """Offline evaluation of the candidate against its parent."""

    prompts_per_source: PositiveInt = 500
    """Prompts evaluated from each of the user and internal held-out sets."""
    max_new_tokens: PositiveInt = 128
    """Longest evaluated response."""
    temperature: float = Field(default=0.7, gt=0)
    """Sampling temperature of evaluated responses (seeded, so candidate and parent see the same draws)."""


class StageSettings(ApiModel):
    """Settings of every stage; each is rendered into the stage's config file."""

    curate: CurateSettings = Field(default_factory=CurateSettings)
    """Data consolidation."""
    reward_models: list[RewardModelSettings] = Field(
        default_factory=lambda: [
            RewardModelSettings(name="pointwise", kind="pointwise"),
            RewardModelSettings(name="pairwise", kind="pairwise"),
            RewardModelSettings(name="continue", kind="user-signal", signal="continue"),
        ],
        min_length=1,
        json_schema_extra=UNIQUE_BY_NAME,
    )
    """Reward models to train (in parallel); at least one must be `pointwise`."""
    sft: SftSettings = Field(default_factory=SftSettings)
    """Rejection-sampling SFT."""
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    """Optional DPO patch."""
    rl: RLSettings = Field(default_factory=RLSettings)
    """Online RL."""
    eval: EvalSettings = Field(default_factory=EvalSettings)
    """Offline evaluation."""

    @model_validator(mode="after")
    def _reward_models_consistent(self) -> StageSettings:
        names = [m.name for m in self.reward_models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reward model names must be unique; rename the duplicates {duplicates}")
        pointwise = [m.name for m in self.reward_models if m.kind == "pointwise"]
        if not pointwise:
            raise ValueError("rewardModels needs at least one `pointwise` model: RL and rejection sampling use it")
        if self.rl.reward_model is not None and self.rl.reward_model not in pointwise:
            raise ValueError(
                f"rl.rewardModel {self.rl.reward_model!r} is not a pointwise reward model; choose one of {pointwise}"
            )
        return self


# ------------------------------------------------------------------------------------------ resources
class Toleration(ApiModel):
    """A Kubernetes toleration for the stage pods (e.g. to land on tainted GPU nodes)."""

    key: str | None = None
    """Taint key; empty with `Exists` tolerates everything."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """How the key is matched."""
    value: str | None = None
    """Taint value for `Equal`."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; all when unset."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """How long a `NoExecute` taint is tolerated."""


class StorageSpec(ApiModel):
    """Where artifacts (datasets, models, results) are written; exactly one of `pvc` and `uri`."""

    pvc: str | None = None
    """A ReadWriteMany PersistentVolumeClaim mounted at /artifacts in every stage pod."""
    uri: str | None = None
    """An object-store prefix (`s3://…`, `gs://…`) or, for the local runner, a directory."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageSpec:
        if (self.pvc is None) == (self.uri is None):
            raise ValueError("set exactly one of `pvc` (a claim name) and `uri` (an object-store prefix or directory)")
        return self


class ResourcesSpec(ApiModel):
    """Where and how the stage Jobs run."""

    image: str = "ghcr.io/characterflywheel/trainer:0.1.0"
    """Trainer image that runs `flywheel-train`."""
    gpus_per_node: int = Field(default=8, ge=0)
    """`nvidia.com/gpu` requested by each stage pod; 0 runs on CPU."""
    nodes: PositiveInt = 1
    """Nodes per training stage; above 1 a stage runs as an Indexed Job with torchrun rendezvous."""
    deepspeed_stage: Literal[0, 2, 3] = 2
    """DeepSpeed ZeRO stage for training stages; 0 disables DeepSpeed."""
    cpu: str = "16"
    """CPU request of each stage pod."""
    memory: str = "200Gi"
    """Memory request of each stage pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the stage pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the stage pods tolerate."""
    service_account_name: str | None = None
    """Service account of the stage pods (e.g. with object-store access)."""
    queue_name: str | None = None
    """Kueue LocalQueue: Jobs are created suspended with the `kueue.x-k8s.io/queue-name` label."""
    storage: StorageSpec = Field(default_factory=lambda: StorageSpec(pvc="flywheel-artifacts"))
    """Artifact storage."""
    active_deadline: Duration = "24h"
    """Longest a stage Job may run before Kubernetes stops it (counts as a failed attempt)."""


# ----------------------------------------------------------------------------------------------- gates
class WinRateBand(ApiModel):
    """Band the candidate's reward-model win rate over its parent must fall in."""

    min: Fraction = 0.50
    """Below this the candidate is not better than its parent."""
    max: Fraction = 0.65
    """Above this the candidate is likely gaming the reward model (the report's rule after generation V12)."""

    @model_validator(mode="after")
    def _ordered(self) -> WinRateBand:
        if self.min >= self.max:
            raise ValueError(f"winRateBand.min ({self.min}) must be below winRateBand.max ({self.max})")
        return self


class StyleDriftLimits(ApiModel):
    """Largest relative increase of a style artifact over the parent (0.5 = +50 %)."""

    emoji_rate: float = Field(default=0.5, ge=0)
    """Emojis per response (V12's emoji spike was +238.5 %)."""
    list_rate: float = Field(default=0.5, ge=0)
    """Share of responses formatted as lists."""
    mean_length: float = Field(default=0.3, ge=0)
    """Mean response length in words."""
    stock_phrase_rate: float = Field(default=0.5, ge=0)
    """Share of responses with stock phrases such as "I feel"."""


class OfflineGateSpec(ApiModel):
    """Checks on the evaluation stage's metrics before any user sees the candidate."""

    win_rate_band: WinRateBand = Field(default_factory=WinRateBand)
    """Pointwise-RM win rate over the parent on user prompts must fall in this band."""
    max_win_rate_divergence: Fraction = 0.10
    """Largest gap between the win rates on user and on internal prompts (V12: 70.7 % vs 43.7 %)."""
    min_instruction_following: Fraction = 0.0
    """Smallest share of responses that satisfy every character instruction."""
    max_violation_rate: Fraction = 1.0
    """Largest share of responses that break at least one character instruction."""
    max_false_refusal_rate: Fraction = 0.05
    """Largest share of benign prompts refused (the report brought it below 5 %)."""
    style_drift: StyleDriftLimits = Field(default_factory=StyleDriftLimits)
    """Limits on style-artifact drift versus the parent."""


class CanarySpec(ApiModel):
    """The KServe canary that exposes the candidate to a slice of users."""

    inference_service: DnsLabel
    """Name of the InferenceService that serves the parent; the candidate is added to it as the canary."""
    mode: Literal["knative", "standard"] = "standard"
    """KServe deployment mode: `knative` (canaryTrafficPercent) or `standard` (spec.canary[], KServe ≥ 0.20)."""
    traffic_percent: Annotated[int, Field(ge=1, le=50)] = 10
    """Share of users on the candidate arm (the report ran about 10 % per arm). Users are sticky to an arm."""
    ready_timeout: Duration = "30m"
    """Longest wait for the canary to become Ready before the generation is rolled back."""
    min_duration: Duration = "1d"
    """No promotion before this much exposure (weekday effects); a harmful canary may still be stopped earlier."""
    max_duration: Duration = "7d"
    """By this time the gate decides; a canary still undecided is rolled back as inconclusive."""
    check_interval: Duration = "10m"
    """How often the online gate reads the metrics."""

    @model_validator(mode="after")
    def _ordered(self) -> CanarySpec:
        if parse_duration(self.min_duration) >= parse_duration(self.max_duration):
            raise ValueError(
                f"canary.minDuration ({self.min_duration}) must be shorter than maxDuration ({self.max_duration})"
            )
        return self


class Guardrail(ApiModel):
    """A rate that must not get worse on the candidate arm by more than `margin` (non-inferiority)."""

    name: DnsLabel
    """Guardrail name as exported by the engagement exporter (e.g. `instruction-violations`)."""
    margin: float = Field(gt=0, le=1)
    """Largest tolerated absolute increase of the rate (e.g. 0.01 = one percentage point)."""


class PromotionQueries(ApiModel):
    """PromQL templates; `{arm}`, `{generation}` and `{namespace}` are filled in, one query per arm.

    The defaults read the engagement exporter's counters (docs/metrics.md); `generation` is the candidate
    FlywheelGeneration's name on both arms (the experiment), `arm` is `control` or `treatment`.
    """

    users: str = 'sum(flywheel_users_exposed_total{{arm="{arm}",generation="{generation}"}})'
    """Users exposed to an arm."""
    engaged: str = 'sum(flywheel_users_engaged_total{{arm="{arm}",generation="{generation}"}})'
    """Users who engaged (breadth numerator)."""
    depth_sum: str = 'sum(flywheel_depth_turns_total{{arm="{arm}",generation="{generation}"}})'
    """Σ depth over users."""
    depth_sum_squares: str = 'sum(flywheel_depth_turns_squared_total{{arm="{arm}",generation="{generation}"}})'
    """Σ depth² over users."""
    pre_sum: str = 'sum(flywheel_pre_depth_turns_total{{arm="{arm}",generation="{generation}"}})'
    """CUPED: Σ pre-period depth X over users (CUPED is skipped when it returns no data)."""
    pre_sum_squares: str = 'sum(flywheel_pre_depth_turns_squared_total{{arm="{arm}",generation="{generation}"}})'
    """CUPED: Σ X² over users."""
    pre_cross_sum: str = 'sum(flywheel_pre_depth_cross_turns_total{{arm="{arm}",generation="{generation}"}})'
    """CUPED: Σ X·depth over users."""
    responses: str = 'sum(flywheel_responses_total{{arm="{arm}",generation="{generation}"}})'
    """Responses served (denominator of guardrail rates)."""
    guardrail: str = (
        'sum(flywheel_guardrail_events_total{{arm="{arm}",generation="{generation}",guardrail="{guardrail}"}})'
    )
    """Guardrail event count; `{guardrail}` is filled with each guardrail's name."""


class PromotionSpec(ApiModel):
    """The online gate: engagement lift read from Prometheus."""

    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Prometheus HTTP API base URL (the local runner reads its own exporter instead)."""
    queries: PromotionQueries = Field(default_factory=PromotionQueries)
    """PromQL templates for the per-arm sufficient statistics."""
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    """False-positive rate of the always-valid sequential test (two-sided)."""
    min_breadth_lift: float = Field(default=0.0, ge=-1)
    """Smallest relative breadth lift (engaged users / exposed users) that counts as a win."""
    min_depth_lift: float = Field(default=0.0, ge=-1)
    """Smallest relative depth lift (mean turns per exposed user) that counts as a win."""
    cuped: bool = True
    """Reduce variance with the pre-period covariate (CUPED) when the exporter provides it."""
    srm_p_value: Annotated[float, Field(gt=0, lt=0.5)] = 0.001
    """A sample-ratio-mismatch χ² p-value below this stops the canary: the experiment is broken."""
    guardrails: list[Guardrail] = Field(
        default_factory=lambda: [
            Guardrail(name="instruction-violations", margin=0.01),
            Guardrail(name="false-refusals", margin=0.01),
            Guardrail(name="errors", margin=0.005),
        ],
        json_schema_extra=UNIQUE_BY_NAME,
    )
    """Rates that must stay non-inferior on the candidate arm."""
    control_percent: Annotated[int, Field(ge=1, le=99)] | None = None
    """Share of users on the control arm, for the sample-ratio check; every user not on the candidate
    (100 − canary.trafficPercent) when unset; set it when only a slice of the others is logged as control."""
    sequential_tau: float = Field(default=0.05, gt=0)
    """Mixing scale τ of the always-valid test (mSPRT) on relative lifts: the lift worth detecting fast.
    0.05 held the A/A false-positive rate under α and reached a decision in under half the users of a fixed
    7-day test in bench/gate.py."""
    min_users_per_arm: Annotated[int, Field(ge=2)] = 200
    """No lift is judged significant before each arm has this many users (the normal approximation needs
    them)."""


class RetryPolicy(ApiModel):
    """Retries of a failed stage Job, with exponential backoff."""

    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    """Attempts per stage, the first included; past this the generation fails."""
    backoff: Duration = "1m"
    """Wait before the second attempt."""
    backoff_factor: float = Field(default=2.0, ge=1)
    """Multiplier of the wait for each further attempt."""
    max_backoff: Duration = "1h"
    """Longest wait between attempts."""


# ------------------------------------------------------------------------------------------------ spec
class FlywheelGenerationSpec(ApiModel):
    """One turn of the flywheel: from the parent's promoted policy to a candidate, gated offline and online."""

    generation: Annotated[int, Field(ge=0)]
    """Generation number (the report went from 1 to 15)."""
    parent: DnsLabel | None = None
    """Name of the parent FlywheelGeneration in the same namespace: its promoted policy is the starting point
    and the A/B control. Omit for the first generation and give `basePolicy` instead."""
    base_policy: str | None = None
    """Starting policy when there is no parent: a Hugging Face id, a path or a URI."""
    data: DataSources
    """Fresh traffic and evaluation prompts."""
    stages: StageSettings = Field(default_factory=StageSettings)
    """Settings of each stage."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Where the stage Jobs run."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    """Retries of failed stage Jobs."""
    offline_gate: OfflineGateSpec = Field(default_factory=OfflineGateSpec)
    """Checks before any user sees the candidate."""
    canary: CanarySpec
    """How the candidate meets users."""
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    """When the candidate is promoted."""
    suspend: bool = False
    """Pause: start nothing new (running Jobs finish and are recorded); set back to false to resume."""

    @model_validator(mode="after")
    def _starting_point(self) -> FlywheelGenerationSpec:
        if self.parent is None and self.base_policy is None:
            raise ValueError("set `parent` (a promoted FlywheelGeneration) or `basePolicy` (a model id or URI)")
        if self.parent is not None and self.base_policy is not None:
            raise ValueError("set only one of `parent` and `basePolicy`: the parent's promoted policy is the start")
        return self


class ObjectMeta(ApiModel):
    """The part of Kubernetes metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")  # labels, annotations, ownerReferences… pass through untouched

    name: str = Field(min_length=1, max_length=40, pattern=DNS_LABEL)
    """Generation name; at most 40 characters so child names `<name>-<stage>-<attempt>` stay valid labels."""
    namespace: str | None = None
    """Namespace (the operator's default when unset)."""
    generation: int | None = None
    """Spec revision counter maintained by the API server."""
    uid: str | None = None
    """Object uid (owner references of the children point at it)."""


class FlywheelGeneration(ApiModel):
    """The custom resource as a whole."""

    api_version: Literal["characterflywheel.io/v1alpha1"] = API_VERSION
    """API group and version."""
    kind: Literal["FlywheelGeneration"] = KIND
    """Resource kind."""
    metadata: ObjectMeta
    """Kubernetes metadata."""
    spec: FlywheelGenerationSpec
    """Desired generation."""
    status: dict | None = None
    """Observed state, written by the operator (see FlywheelGenerationStatus)."""
