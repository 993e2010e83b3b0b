"""Spec of a `FlywheelGeneration`: what one turn of the engagement flywheel should do.

Field docstrings are the API reference (docs/api.md and the CRD descriptions are generated from them).
Choices the CharacterFlywheel report leaves open are defaults here, each documented where it is set.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from flywheel_operator import storage as storage_seam
from flywheel_operator.api import names
from flywheel_operator.api.base import ApiModel
from flywheel_operator.api.durations import Duration, PositiveDuration, parse_duration
from flywheel_operator.api.quantities import Quantity

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
Dns1035Label = Annotated[str, Field(pattern=names.DNS_1035, min_length=1, max_length=40)]
"""A name that becomes (part of) a Service name, which must start with a letter."""
HTTP_URL = r"^https?://[^/\s]+(/.*)?$"


def _http_url(text: str) -> str:
    if not re.fullmatch(HTTP_URL, text):
        message = f"{text!r} is not an http(s) URL".replace("{", "{{").replace("}", "}}")
        raise PydanticCustomError("http_url", message, {"hint": "write http://host:port or https://host"})
    return text


HttpUrl = Annotated[str, AfterValidator(_http_url), Field(json_schema_extra={"pattern": HTTP_URL})]
"""An `http://` or `https://` base URL with a host."""
LOCAL_RUNNER_SCHEMES = ("sim",)
"""`sim://` data and policies exist only for the local runner, which resolves them to files before a stage runs."""


def _readable(also: tuple[str, ...]):
    def check(uri: str) -> str:
        if problem := storage_seam.uri_problem(uri, also=also):
            raise PydanticCustomError("uri_scheme", "{problem}", {"problem": problem,
                                                                   "hint": f"use {storage_seam.ACCEPTED_FORMS}"})
        return uri

    return AfterValidator(check)


def _uri_rule(also: tuple[str, ...]) -> dict:
    return {"x-kubernetes-validations": [{
        "rule": storage_seam.uri_cel_rule(also),
        "message": f"not readable by the stages: use {storage_seam.ACCEPTED_FORMS}",
    }]}


DataUri = Annotated[str, Field(min_length=1, json_schema_extra=_uri_rule(LOCAL_RUNNER_SCHEMES)),
                    _readable(LOCAL_RUNNER_SCHEMES)]
"""A URI the storage seam reads (or a local runner `sim://` URI); other schemes are refused at validation."""
StoreUri = Annotated[str, Field(min_length=1, json_schema_extra=_uri_rule(())), _readable(())]


# ----------------------------------------------------------------------------------------------- data
class TrafficSource(ApiModel):
    """A set of conversation logs in the contract of docs/data.md (JSONL or Parquet)."""

    uri: DataUri
    """Where the logs are: a local path, `pvc://<claim>/<path>`, `s3://…` or `gs://…`; a directory (of JSONL or
    Parquet shards, read one at a time) or one file."""
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
RuleFeature = Literal["asks-back", "follows-instructions", "emojis", "length", "refusal"]


DEFAULT_LEXICAL_SIGNAL_PAIRS = 128
"""Signal pairs per context a preference model's lexical head fits when `lexicalSignalPairs` is unset."""


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
    rule_features: list[RuleFeature] = Field(default_factory=list, max_length=len(get_args(RuleFeature)))
    """Pointwise models only: the trainer's own checks on a response (`asks-back`, `follows-instructions`,
    `emojis`, `length`, `refusal`), scored next to the text with weights fitted on the same preference pairs
    (flywheel_trainer.rules). A tiny model reads little from the text; on a large one, compare the stage's
    `text_accuracy` with its `accuracy` to see what the rules add. Empty: the text score alone."""
    lexical_head: bool = True
    """Learn a lexical head next to the model's logit (flywheel_trainer.lexical): a sparse linear model over the
    response's words, the words it echoes from the user's message and each character's words, fitted on the same
    pairs or labels, at weight 1; the model's logit is added with a weight fitted on the held-out data, kept only
    when it lowers the held-out log loss across held-out prompts (p < 0.05), else 0. A small model reads persona
    and topic poorly; the head reads them. False: the model's logit alone."""
    # --- issue 26: the lexical head learns from the users' signals too (h26rm) ---
    lexical_signal_pairs: Annotated[int, Field(ge=0)] | None = None
    """Pointwise and pairwise models with `lexicalHead`: the head also fits pairs of the users' own signals, per
    context of the training prompts at most this many (each response users went on after over each one they left,
    served for the same context; flywheel_trainer.reward.signal_pairs). Generation 1 learns from generation 0's logs
    alone, where curation drops most candidate preference pairs; the signals are several times as many. 0: the
    preference pairs alone. Unset: 128 for pointwise and pairwise models (a user-signal model learns from the
    signals themselves)."""
    # --- end issue 26 ---

    @property
    def signal_pairs_per_context(self) -> int:
        """`lexicalSignalPairs` as the stage applies it: unset is DEFAULT_LEXICAL_SIGNAL_PAIRS for preference models,
        0 for user-signal ones."""
        if self.kind == "user-signal":
            return 0
        return DEFAULT_LEXICAL_SIGNAL_PAIRS if self.lexical_signal_pairs is None else self.lexical_signal_pairs

    @model_validator(mode="after")
    def _signal_matches_kind(self) -> RewardModelSettings:
        if self.kind == "user-signal" and self.signal is None:
            raise ValueError("a user-signal reward model needs `signal`: set it to 'continue' or 'thumb-up'")
        if self.kind != "user-signal" and self.signal is not None:
            raise ValueError(
                f"`signal` applies only to user-signal reward models; remove it from this {self.kind} model"
            )
        if self.rule_features and self.kind != "pointwise":
            raise ValueError(
                f"`ruleFeatures` applies only to pointwise reward models; remove it from this {self.kind} model"
            )
        if len(set(self.rule_features)) != len(self.rule_features):
            raise ValueError(f"`ruleFeatures` lists a feature twice ({self.rule_features}); list each once")
        if self.kind == "user-signal" and self.lexical_signal_pairs:
            raise ValueError("`lexicalSignalPairs` applies only to pointwise and pairwise reward models (a user-signal "
                             "model learns from the signals themselves); remove it from this user-signal model")
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


SamplerBackend = Literal["generate"]
"""A sampling backend of flywheel_trainer.generation (docs/stages.md, "Sampling"): `generate` is transformers'
`model.generate`. vLLM is the next backend; it is not offered until it is proven on a GPU."""


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
    refusal_penalty: float = Field(default=1.0, ge=0)
    """Subtracted from the selection score of a candidate that refuses (flywheel_trainer.style.is_refusal).
    Rejection-sampling prompts are curated user turns the safety filter let through, so a refusal there is a
    false refusal, however much users or the reward model like it (the report took them below 5 %)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature for candidates."""
    max_new_tokens: PositiveInt = 128
    """Longest candidate response."""
    sampler: SamplerBackend = "generate"
    """Backend that samples the candidates: `generate` (transformers' `model.generate`, batched, KV cache, seeded)."""
    # issue 26 (deployed instruction following): compliant targets first, more draws where none complies.
    compliant_targets_only: bool = True
    """Keep a prompt's target only from the candidates that follow every instruction of the character
    (flywheel_trainer.verifiers.follows_all), the best of them by the selection score; a prompt with no such
    candidate is rejected. Off: the best candidate by the selection score, where the graded instruction share
    can lose to the reward and user-signal terms, so SFT imitates targets that break an instruction. Ignored
    (off) when `instructionWeight` is 0, which selects on the reward and user-signal models alone."""
    instruction_resamples: Annotated[int, Field(ge=0, le=8)] = 1
    """Extra rounds of K candidates from the policy for the prompts where no candidate yet follows every
    instruction (hard instructions get a larger best-of-K; the other prompts cost nothing more). 0: none;
    ignored when `instructionWeight` is 0."""
    hard_instruction_repeats: Annotated[int, Field(ge=1, le=4)] = 1
    """A kept target enters the SFT data up to this many times, the more the rarer compliance was among its
    prompt's candidates (1 + round((N − 1) × (1 − f)), f the share following every instruction), so SFT spends
    more of its steps on the instructions the policy breaks. 1: each target once; ignored when
    `instructionWeight` is 0."""
    # issue 26: where hardInstructionRepeats reads how rare compliance is.
    hard_instruction_share: Literal["prompt", "character"] = "prompt"
    """f of `hardInstructionRepeats`: `prompt`, the share among the prompt's own candidates (K of them: noisy);
    `character`, pooled over all candidates of the prompt's character, so the targets of the characters whose
    instructions the policy breaks (a `lowercase` one) get the repeats."""


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
    activation_checkpointing: bool = True
    """Recompute activations in the backward pass (gradient checkpointing; TRL's SFT default): far less
    activation memory for about a third more compute. Turn it off when the model, `batchSize` and `maxLength`
    fit in GPU memory without it, for the higher throughput."""
    compile: bool = False
    """`torch.compile` the model for training (TrainingArguments `torch_compile`): fuses the many small elementwise
    kernels (norms, rotary, activations) into few, the largest gain on GPUs; about a minute of compilation per
    stage run, so worth it for runs of hundreds of steps. Off by default and on the CPU it only adds compile time."""


class DpoSettings(ApiModel):
    """A small DPO patch before RL, for urgent style or safety issues (the report used DPO only this way)."""

    enabled: bool = False
    """Run the patch."""
    pairs_uri: DataUri | None = None
    """Preference pairs for the patch (a path or storage URI); the curated engagement pairs when unset."""
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
    refusal_penalty: float = Field(default=1.0, ge=0)
    """Subtracted from a rollout that refuses (flywheel_trainer.style.is_refusal): RL prompts are curated user
    turns the safety filter let through, so a refusal there is a false refusal. 1.0 outweighs any RM preference
    (P(beats parent) is at most 1), since users may reward an on-topic refusal on the spot."""
    checkpoint_every: PositiveInt | None = None
    """Keep the policy every this many optimizer steps and let the band choose the candidate among them (the
    report's band as a control: operate below 65 %, 60 % ideal). Unset: the last step is the candidate."""
    band_target: Fraction = 0.60
    """The candidate is the latest checkpoint whose pointwise-RM win rate over the parent, on `bandPrompts`
    curated prompts never trained on, stays at or below this (below the offline gate's 0.65 limit). The win rate
    is the one the offline band reads: of the reward model's learned part, rule features left out."""
    band_prompts: PositiveInt = 100
    """Prompts of the curated RL pool after the selection pool that every checkpoint and the parent answer."""
    # --- issue 26: the band lands on its target (h26b) -------------------------------------------------------
    band_interpolation_steps: Annotated[int, Field(ge=0, le=12)] = 4
    """When every checkpoint is above `bandTarget`: bisection steps over α of the weights parent + α × (earliest
    checkpoint − parent), each α measured on the band prompts like a checkpoint; the candidate is the largest α
    measured at or below the target (found to within 2^-steps). 0: no interpolation. When the target is still
    not reached, the model with the lowest measured win rate is kept and the status says so (condition
    `BandTargetReached`)."""
    # --- end issue 26 ------------------------------------------------------------------------------------------
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
    sampler: SamplerBackend = "generate"
    """Backend that samples for prompt selection and the band: `generate` (transformers' `model.generate`). GRPO's
    and online DPO's rollouts are sampled by TRL's trainers."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """Optional LoRA for the policy (merged into the saved model)."""


class EvalSettings(ApiModel):
    """Offline evaluation of the candidate against its parent."""

    prompts_per_source: PositiveInt = 500
    """Prompts evaluated from each of the user and internal held-out sets."""
    # issue 26: the evaluated responses are sampled as users meet them (the serving settings) unless set here.
    max_new_tokens: PositiveInt | None = None
    """Longest evaluated response; unset: the served predictor's (flywheel_trainer.serving, 32; the local runner: the
    world's `serving.maxNewTokens`). Set it to what your chat backend asks of the predictor."""
    temperature: float | None = Field(default=None, gt=0)
    """Sampling temperature of evaluated responses (seeded, so candidate and parent see the same draws); unset:
    the served predictor's (1.0; the local runner: the world's `serving.temperature`). A lower one than users meet
    overstates instruction following (0.7 read 0.834 where users met 0.675)."""
    sampler: SamplerBackend = "generate"
    """Backend that samples the evaluated responses: `generate` (transformers' `model.generate`)."""


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
        max_length=16,  # bounds the CRD's CEL rules over the list (their estimated cost)
        json_schema_extra=UNIQUE_BY_NAME,
    )
    """Reward models to train (in parallel, at most 16); at least one must be `pointwise`."""
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


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=253)]
"""An environment variable name."""
DEFAULT_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                       "GOOGLE_APPLICATION_CREDENTIALS", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                       "MLFLOW_TRACKING_PASSWORD", "WANDB_API_KEY")
"""The object store's credentials and the trackers' (spec.tracking, docs/tracking.md); each key is optional."""


class StorageSpec(ApiModel):
    """Where artifacts (datasets, models, results) are written; exactly one of `pvc` and `uri`."""

    pvc: str | None = None
    """A ReadWriteMany PersistentVolumeClaim mounted at /artifacts in every stage pod."""
    uri: StoreUri | None = None
    """An object-store prefix (`s3://<bucket>/<prefix>`, `gs://<bucket>/<prefix>`) or, for the local runner, a
    directory. Stages read their inputs and publish their outputs there (`result.json` last); the candidate
    handed to KServe is the `s3://`/`gs://` URI of its model, read by KServe's storage initializer."""
    secret_ref: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """Name of a Secret in the generation's namespace whose keys become environment variables of every stage pod
    (envFrom), e.g. `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` for S3. Credentials never go in the spec;
    leave it unset to use workload identity (IRSA, GKE Workload Identity) through
    `resources.serviceAccountName`."""
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+(/.*)?$")
    """Endpoint of an S3-compatible store (MinIO, Ceph RGW, …), given to stage pods as `AWS_ENDPOINT_URL_S3`;
    AWS's own endpoint when unset. Set the same endpoint for KServe's storage initializer (its S3 Secret)."""
    # --- issue 24 (h24b): only the named keys of the Secret reach the pods -----------------------------------
    secret_keys: list[EnvName] = Field(
        default_factory=lambda: list(DEFAULT_SECRET_KEYS), min_length=1, max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Keys of `secretRef` given to stage pods, each as the environment variable of the same name
    (`secretKeyRef`, optional: a missing key is skipped). Only these keys leave the Secret (no `envFrom`).
    Default: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `GOOGLE_APPLICATION_CREDENTIALS`,
    and the trackers' `MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME`, `MLFLOW_TRACKING_PASSWORD`,
    `WANDB_API_KEY` (spec.tracking)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageSpec:
        if (self.pvc is None) == (self.uri is None):
            raise ValueError("set exactly one of `pvc` (a claim name) and `uri` (an object-store prefix or directory)")
        if self.uri is not None and storage_seam.scheme(self.uri) == "pvc":
            raise ValueError(f"uri {self.uri!r} names a claim: set `pvc: <claim>` instead, which mounts it")
        return self




# --- issue 24 (h24b): Hugging Face Hub on a cluster, scratch space, failure and rendezvous settings -------------
class HubSpec(ApiModel):
    """Models named by a Hugging Face Hub id (`meta-llama/Llama-3.1-70B-Instruct`) on a cluster: stage pods are
    online (unless `offline`), read a token from a Secret and keep downloads in a cache volume."""

    token_secret: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """Secret in the generation's namespace holding a Hugging Face token (for gated models such as Llama),
    given to stage pods as `HF_TOKEN`; unset: no token (public models only)."""
    token_key: EnvName = "HF_TOKEN"
    """Key of the token in `tokenSecret`."""
    cache_pvc: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """A ReadWriteMany PersistentVolumeClaim mounted at /hf-cache as `HF_HOME`, shared by every stage and
    generation: a Hub model is downloaded once per cluster. Unset: `HF_HOME` is on the artifact claim when
    `storage.pvc` is set, else on each pod's scratch emptyDir (downloaded once per pod; `flywheel validate`
    warns when Hub ids are used that way)."""
    offline: bool = False
    """Forbid Hub access in stage pods (`HF_HUB_OFFLINE=1`): every model must be a path or URI, or already be in
    the cache volume. Tests and the local runner are always offline."""


class ScratchSpec(ApiModel):
    """Per-pod scratch space: an emptyDir at /scratch for model downloads, checkpoint scratch, output staging
    and (without a cache claim) `HF_HOME`, with an `ephemeral-storage` request so the scheduler places the pod
    on a node with room, and the kubelet evicts it rather than filling the node's disk."""

    size: Quantity | None = None
    """Size limit of the emptyDir and the pod's `ephemeral-storage` request. Unset: sized from the spec —
    16Gi plus, for each model a stage loads, its parameter bytes as far as `flywheel validate` can read the
    model's config (else 200Gi for a Hub id), plus room for checkpoints of the trained model."""
    medium: Literal["", "Memory"] = ""
    """`""` (the node's disk) or `Memory` (tmpfs, counted against the pod's memory limit)."""


class PodOverrides(ApiModel):
    """Additions to the stage pods for what a cluster needs beyond GPUs (RDMA, secondary networks, priorities).

    Validated with the Job at creation; a value Kubernetes refuses fails the stage with the API server's message.
    """

    annotations: dict[str, str] = Field(default_factory=dict)
    """Pod annotations, e.g. `k8s.v1.cni.cncf.io/networks` for a Multus secondary (InfiniBand/RoCE) network."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra pod labels (the operator's own labels win on a clash)."""
    priority_class_name: str | None = None
    """PriorityClass of the stage pods (e.g. to let training preempt batch work, or be preempted by serving)."""
    affinity: dict | None = None
    """A Kubernetes `affinity` object (node/pod affinity and anti-affinity), copied into the pod spec as is."""
    extra_resources: dict[str, Quantity] = Field(default_factory=dict)
    """Extended resources requested and limited per pod besides CPU, memory and GPUs, e.g. `rdma/ib: "1"`."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations added to the stage's own."""


class StageResources(ApiModel):
    """Resources of one stage kind; a field left unset takes the shared value from `resources` (for curate, the
    CPU defaults)."""

    gpus_per_node: int | None = Field(default=None, ge=0)
    """`nvidia.com/gpu` per pod; 0 runs the stage on CPU."""
    nodes: PositiveInt | None = None
    """Nodes (pods) of the stage; only reward, sft and rl run on several."""
    cpu: Quantity | None = None
    """CPU request of each pod."""
    memory: Quantity | None = None
    """Memory request and limit of each pod."""
    node_selector: dict[str, str] | None = None
    """Node labels the pods must match (replaces the shared selector; `{}` for none)."""
    tolerations: list[Toleration] | None = None
    """Taints the pods tolerate (replaces the shared list; `[]` for none)."""
    pod_overrides: PodOverrides | None = None
    """Pod additions (replace the shared `podOverrides`)."""
    queue_name: str | None = Field(default=None, max_length=63,
                                   pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    """Kueue LocalQueue of this stage's Jobs (replaces `resources.queueName`; `""` for none). A CPU stage
    (curate) takes no queue unless it sets its own, so it never waits in the GPU queue."""


CPU_STAGES = frozenset({"curate"})
"""Stage kinds that need no GPU: their unset resources come from `CPU_STAGE_DEFAULTS`, not the shared GPU values."""
CPU_STAGE_DEFAULTS = StageResources(gpus_per_node=0, nodes=1, cpu="4", memory="32Gi", node_selector={},
                                    tolerations=[], pod_overrides=PodOverrides(), queue_name="")
"""A modest CPU pod with no GPU node selector, tolerations or pod additions: it lands off the GPU nodes."""


class StageResourceOverrides(ApiModel):
    """Per-stage resources. Curate needs no GPU: its unset fields take a modest CPU pod (0 GPUs, 4 CPU, 32Gi,
    no node selector, tolerations or pod additions), so it runs off the GPU nodes; the other stages' unset
    fields take the shared values of `resources`."""

    curate: StageResources = Field(default_factory=StageResources)
    """Data consolidation (CPU only)."""
    reward: StageResources = Field(default_factory=StageResources)
    """Each reward model's Job."""
    sft: StageResources = Field(default_factory=StageResources)
    """Rejection sampling and SFT."""
    rl: StageResources = Field(default_factory=StageResources)
    """DPO patch and RL."""
    eval: StageResources = Field(default_factory=StageResources)
    """Offline evaluation (one node)."""

    @model_validator(mode="after")
    def _single_node_stages(self) -> StageResourceOverrides:
        for kind in ("curate", "eval"):
            if (getattr(self, kind).nodes or 1) > 1:
                raise ValueError(f"resources.stages.{kind}.nodes: {kind} runs on one node; remove `nodes` or set 1")
        return self


class ResourcesSpec(ApiModel):
    """Where and how the stage Jobs run."""

    image: str = "ghcr.io/characterflywheel/trainer:0.1.0"
    """Trainer image that runs `flywheel-train`."""
    gpus_per_node: int = Field(default=8, ge=0)
    """`nvidia.com/gpu` requested by each stage pod (curate runs on CPU; `stages` overrides it per stage); 0 runs
    on CPU. Above 1 on one node, torchrun starts one process per GPU with a standalone (local) rendezvous."""
    nodes: PositiveInt = 1
    """Nodes per training stage; above 1 a stage runs as an Indexed Job whose pods meet through a headless
    Service (torchrun rendezvous at `<job>-0.<job>`)."""
    deepspeed_stage: Literal[0, 2, 3] = 2
    """DeepSpeed ZeRO stage for training stages; 0 disables DeepSpeed."""
    cpu: Quantity = "16"
    """CPU request of each stage pod."""
    memory: Quantity = "200Gi"
    """Memory request of each stage pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the stage pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the stage pods tolerate."""
    service_account_name: str | None = None
    """Service account of the stage pods (e.g. with object-store access)."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
    """Kueue LocalQueue: Jobs are created suspended with the `kueue.x-k8s.io/queue-name` label (so it must be a
    valid label value: at most 63 characters)."""
    storage: StorageSpec = Field(default_factory=lambda: StorageSpec(pvc="flywheel-artifacts"))
    """Artifact storage."""
    active_deadline: Duration = "24h"
    """Longest a stage Job may run before Kubernetes stops it (counts as a failed attempt)."""
    pod_overrides: PodOverrides = Field(default_factory=PodOverrides)
    """Additions to the GPU stages' pods (not curate's), unless a stage sets `stages.<kind>.podOverrides`."""
    stages: StageResourceOverrides = Field(default_factory=StageResourceOverrides)
    """Per-stage overrides of GPUs, nodes, CPU, memory, placement and pod additions."""
    # --- issue 24 (h24b) ------------------------------------------------------------------------------------
    hub: HubSpec = Field(default_factory=HubSpec)
    """Hugging Face Hub access of the stage pods: token Secret, cache volume, offline mode."""
    scratch: ScratchSpec = Field(default_factory=ScratchSpec)
    """Per-pod scratch emptyDir and its ephemeral-storage request."""
    restarts_per_node: Annotated[int, Field(ge=0, le=10)] = 2
    """Multi-node stages: how often the Job controller re-creates the pod of one node (`backoffLimitPerIndex`)
    before the attempt fails. When a node is drained, its pod is ignored (a `DisruptionTarget` never counts), but
    the other nodes' torchrun fails with the broken collective; these restarts let every pod meet again and resume
    from the last checkpoint. One-pod stages fail at the first crash (`backoffLimit: 0`), and the planner retries
    them with backoff. Exit code 2 (a permanent StageError: bad config, missing input) always fails the Job at
    once and is never retried."""
    rendezvous_timeout: Duration = "30m"
    """How long the pods of a multi-node stage wait for each other at torchrun's rendezvous (`--rdzv-conf
    join_timeout`, `PET_RDZV_CONF`); long enough for an autoscaled GPU pool to add nodes and pull a CUDA image."""
    collective_timeout: Duration = "30m"
    """Timeout of the training process group's collectives (NCCL), which checkpoint uploads must finish within:
    each node uploads its own shards in a background thread and ranks wait for the upload only at this bound."""
    gpu_memory: Quantity | None = None
    """Memory of one GPU (e.g. `80Gi`) for `flywheel validate`'s fit check; unset: read from the
    `nvidia.com/gpu.product` node selector (`…-80GB-…`), else the check is skipped."""
    max_parallel_jobs: PositiveInt = 1
    """Most stage Jobs of this generation running at once. Only the reward models share a step; at 1 they train
    one after another, so four reward models never ask for four stages' GPUs together (and never hold part of
    the cluster each while waiting for the rest). Raise it when capacity or a Kueue quota admits them together."""

    def for_stage(self, kind: str) -> StageResources:
        """The resolved resources of a stage kind, every field set: its own overrides over the shared values
        (over `CPU_STAGE_DEFAULTS` for a CPU stage)."""
        shared = StageResources(gpus_per_node=self.gpus_per_node, nodes=self.nodes, cpu=self.cpu, memory=self.memory,
                                node_selector=self.node_selector, tolerations=self.tolerations,
                                pod_overrides=self.pod_overrides, queue_name=self.queue_name or "")
        base = CPU_STAGE_DEFAULTS if kind in CPU_STAGES else shared
        own: StageResources = getattr(self.stages, kind)
        return base.model_copy(update={name: value for name in StageResources.model_fields
                                       if (value := getattr(own, name)) is not None})


# ----------------------------------------------------------------------------------------------- gates
class WinRateBand(ApiModel):
    """Band the candidate's reward-model win rate over its parent must fall in."""

    min: Fraction = 0.50
    """Below this the candidate is not better than its parent."""
    max: Fraction = 0.65
    """Above this the candidate is likely gaming the reward model (the report's rule after generation V12); the
    rule only when no independent judge was trained (`maxJudgeGap` otherwise)."""
    # --- issue 26: the upper edge against an independent judge (h26g) ------------------------------------------
    max_judge_gap: Fraction = 0.10
    """Largest excess of the optimised reward model's learned-score win rate over the independent judge's on the
    same user prompts (the pairwise reward model, which no stage optimises); the candidate is likely gaming when
    the paired 95 % interval of the gap lies entirely above it. It replaces `max` whenever a pairwise model was
    trained: a real step up wins pairs for both models, gaming only for the one that was optimised."""
    # --- end issue 26 ---------------------------------------------------------------------------------------------

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


class ServingResources(ApiModel):
    """Resources of each predictor replica when the operator creates the InferenceService (an existing one keeps
    its own; KServe gives a Standard-mode canary the stable predictor's)."""

    gpus: int = Field(default=1, ge=0)
    """`nvidia.com/gpu` per replica; 0 serves on CPU."""
    cpu: Quantity = "4"
    """CPU request."""
    memory: Quantity = "32Gi"
    """Memory request and limit."""
    min_replicas: int = Field(default=1, ge=1)
    """Least replicas of the stable predictor the operator creates (an existing InferenceService keeps its own)."""
    max_replicas: int = Field(default=1, ge=1)
    """Most replicas of that stable predictor (its autoscaler's limit; below `minReplicas` counts as equal). A
    Standard-mode canary runs fixed replicas (KServe refuses autoscaling on a canary): the stable predictor's peak,
    this limit, scaled to the canary's share of users, and the stable predictor keeps its own least replicas."""
    service_account_name: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """ServiceAccount of the predictor pods, whose attached Secrets (or workload identity) give KServe's storage
    initializer access to the model's object store; unset: `resources.serviceAccountName`, the account the stages
    publish the model with (unset too: the namespace's `default`)."""


class CanarySpec(ApiModel):
    """The KServe canary that exposes the candidate to a slice of users."""

    inference_service: Dns1035Label
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
    check_interval: PositiveDuration = "10m"
    """How often the online gate reads the metrics."""
    serving: ServingResources = Field(default_factory=ServingResources)
    """Predictor resources of an InferenceService the operator has to create."""

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


_ARM_SELECTOR = '{{arm="{arm}",generation="{generation}",namespace="{namespace}"}}'
"""The label matchers of one arm of one generation in one namespace (a template: braces doubled)."""


class PromotionQueries(ApiModel):
    """PromQL templates; `{arm}`, `{generation}` and `{namespace}` are filled in, one query per arm.

    The defaults read the engagement exporter's counters (docs/metrics.md); `generation` is the candidate
    FlywheelGeneration's name on both arms (the experiment), `arm` is `control` or `treatment`, and `namespace`
    the generation's, so same-named generations of two namespaces never merge.
    """

    users: str = "sum(flywheel_users_exposed_total" + _ARM_SELECTOR + ")"
    """Users exposed to an arm."""
    engaged: str = "sum(flywheel_users_engaged_total" + _ARM_SELECTOR + ")"
    """Users who engaged (breadth numerator)."""
    depth_sum: str = "sum(flywheel_depth_turns_total" + _ARM_SELECTOR + ")"
    """Σ depth over users."""
    depth_sum_squares: str = "sum(flywheel_depth_turns_squared_total" + _ARM_SELECTOR + ")"
    """Σ depth² over users."""
    pre_sum: str = "sum(flywheel_pre_depth_turns_total" + _ARM_SELECTOR + ")"
    """CUPED: Σ pre-period depth X over users (CUPED is skipped when it returns no data)."""
    pre_sum_squares: str = "sum(flywheel_pre_depth_turns_squared_total" + _ARM_SELECTOR + ")"
    """CUPED: Σ X² over users."""
    pre_cross_sum: str = "sum(flywheel_pre_depth_cross_turns_total" + _ARM_SELECTOR + ")"
    """CUPED: Σ X·depth over users."""
    responses: str = "sum(flywheel_responses_total" + _ARM_SELECTOR + ")"
    """Responses served (denominator of guardrail rates)."""
    guardrail: str = (
        'sum(flywheel_guardrail_events_total{{arm="{arm}",generation="{generation}",namespace="{namespace}",'
        'guardrail="{guardrail}"}})'
    )
    """Guardrail event count; `{guardrail}` is filled with each guardrail's name."""
    last_event: str = (
        'max(flywheel_exporter_last_event_timestamp_seconds{{generation="{generation}",namespace="{namespace}"}})'
    )
    """Unix time of the experiment's latest event (one query, no `{arm}`). When it is older than the reader's event
    age limit (30 min) the reading is no data: the sums stopped moving. Empty: no such check."""
    responses_sum_squares: str = "sum(flywheel_responses_squared_total" + _ARM_SELECTOR + ")"
    """Σ per-user responses² (user-clustered guardrail variance; the per-response variance is used without it)."""
    guardrail_sum_squares: str = (
        'sum(flywheel_guardrail_events_squared_total{{arm="{arm}",generation="{generation}",namespace="{namespace}",'
        'guardrail="{guardrail}"}})'
    )
    """Σ per-user guardrail events²."""
    guardrail_cross_sum: str = (
        'sum(flywheel_guardrail_events_cross_total{{arm="{arm}",generation="{generation}",namespace="{namespace}",'
        'guardrail="{guardrail}"}})'
    )
    """Σ per-user guardrail events × responses."""
    adopted: str = "sum(flywheel_users_adopted_total" + _ARM_SELECTOR + ")"
    """Users first seen through engagement after an exporter restart (left out of the sample-ratio test)."""
    crossover: str = 'sum(flywheel_crossover_users_total{{generation="{generation}",namespace="{namespace}"}})'
    """Users of the experiment seen in both arms (one query, no `{arm}`). No series reads as 0: the exporter
    writes a generation's series only once one of its users crossed. Empty: no crossover check."""
    # --- issue 25: the log-scale depth sums (h25) -----------------------------------------------------------
    depth_log_sum: str = "sum(flywheel_depth_log_turns_total" + _ARM_SELECTOR + ")"
    """Σ log(1 + depth) over users: depth's deterioration tests read its mean (docs/metrics.md). Without it the
    gate refuses to judge depth and says so."""
    depth_log_sum_squares: str = "sum(flywheel_depth_log_turns_squared_total" + _ARM_SELECTOR + ")"
    """Σ log(1 + depth)² over users."""


# --- issue 25: hard SRE guardrails on KServe's serving metrics (h25) ---------------------------------------
UNIQUE_BY_METRIC: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["metric"]}


class ServingGuardrail(ApiModel):
    """A hard SRE guardrail on the predictor (Flagger's analysis metrics): a threshold checked every `interval`
    over a window of the same length; `failures` failed checks in a row roll the canary back. No statistics: a
    canary that errors or stalls is gone in minutes, long before an engagement test could say anything."""

    metric: Literal["errors", "latency-p95"]
    """`errors`: the canary's share of requests answered 5xx minus the parent's over the window; `latency-p95`:
    the canary's p95 request latency divided by the parent's."""
    threshold: float = Field(gt=0)
    """Largest tolerated value: an absolute excess of the error ratio (0.02 = 2 points above the parent's) or a
    ratio of p95 latencies (1.5 = 50 % slower than the parent)."""
    interval: Duration = "2m"
    """How often the check runs, and the window its rates are computed over."""
    failures: Annotated[int, Field(ge=1, le=100)] = 3
    """Failed checks in a row that roll the canary back (Flagger's `threshold`)."""
    min_requests: Annotated[int, Field(ge=1)] = 100
    """A window with fewer canary requests than this is not judged (neither failed nor passed): a rate over a
    handful of requests is noise."""


class ServingQueries(ApiModel):
    """PromQL templates of KServe's serving metrics, one query per arm and window. `{namespace}`, `{revision}` (the
    arm's predictor revision, from the InferenceService status) and `{window}` (e.g. `2m`) are filled in. The
    defaults read the Knative queue-proxy metrics KServe exports in Serverless mode; for RawDeployment
    (`mode: standard`) point them at the model server's or the mesh's request metrics (docs/metrics.md)."""

    requests: str = (
        'sum(increase(revision_app_request_count{{namespace_name="{namespace}",revision_name="{revision}"}}[{window}]))'
    )
    """Requests served by the arm over the window."""
    errors: str = (
        'sum(increase(revision_app_request_count{{namespace_name="{namespace}",revision_name="{revision}",'
        'response_code_class="5xx"}}[{window}]))'
    )
    """Requests answered with a 5xx over the window."""
    latency_p95: str = (
        "histogram_quantile(0.95, sum by (le) (rate(revision_app_request_latencies_bucket{{"
        'namespace_name="{namespace}",revision_name="{revision}"}}[{window}]))) / 1000'
    )
    """p95 request latency over the window, in seconds (queue-proxy's histogram is in milliseconds)."""


# --- end issue 25 ---------------------------------------------------------------------------------------


# ------------------------------------------------------------------ online gate: the warehouse-native SQL source
SQL_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
SQL_TABLE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$"


class SqlSource(ApiModel):
    """The per-arm sufficient statistics computed where the event log already is: one SQL query over the chat
    backend's event log (a table or view, or Parquet files) returns each arm's exact `ArmStats`, per-user sums
    included (docs/metrics.md, "The SQL source"). DuckDB runs it embedded; other engines get it translated to their
    dialect by sqlglot."""

    url: str = Field(default="duckdb:///:memory:", min_length=1)
    """Where the query runs. `duckdb:///PATH` or `duckdb:///:memory:`: DuckDB embedded in the operator (the
    default; reads `parquet` from local disk, s3:// or gs://). `spark://HOST:PORT`, `k8s://…`, `yarn` or
    `local[N]`: a Spark session with that master; `sc://HOST:PORT`: Spark Connect. Anything else: a SQLAlchemy URL
    (e.g. `trino://…`, `snowflake://…`, `bigquery://…`, `postgresql://…`) whose driver is installed in the
    operator image."""
    table: Annotated[str, Field(pattern=SQL_TABLE, max_length=200)] | None = None
    """The event log table or view, e.g. `analytics.chat_events` (columns in docs/metrics.md)."""
    parquet: str | None = Field(default=None, min_length=1)
    """Instead of `table`: Parquet files of the event log, a path or glob such as
    `s3://logs/chat-events/*.parquet` (DuckDB and Spark only)."""
    dialect: str | None = None
    """sqlglot dialect of the engine (e.g. `trino`, `snowflake`); unset: from the URL (`duckdb`, `spark`, or the
    SQLAlchemy driver's name)."""
    guardrail_columns: dict[Annotated[str, Field(pattern=DNS_LABEL)], Annotated[str, Field(pattern=SQL_IDENTIFIER)]] = (
        Field(default_factory=dict)
    )
    """Column counting each guardrail's events per row; unset: the guardrail's name with `-` as `_` (e.g.
    `instruction_violations`)."""
    engaged_min_days: Annotated[int, Field(ge=1, le=365)] = 2
    """Distinct active days that make an exposed user engaged (the exporter's `--engaged-min-days`)."""
    max_event_age: Duration | None = "30m"
    """No data when the experiment's latest event is older than this (the events stopped arriving); unset: no
    check (a finished experiment's log)."""

    @model_validator(mode="after")
    def _one_relation(self) -> SqlSource:
        if (self.table is None) == (self.parquet is None):
            raise ValueError("promotion.source.sql needs exactly one of `table` (a table or view) or `parquet` (files)")
        return self


class PromotionSource(ApiModel):
    """Where the online gate reads each arm's sufficient statistics: Prometheus (`prometheusUrl`, `queries`) unless
    `sql` is set."""

    sql: SqlSource | None = None
    """Read them with one SQL query over the event log instead of Prometheus (warehouse-native)."""


class PromotionSpec(ApiModel):
    """The online gate: engagement lift read from Prometheus."""

    prometheus_url: HttpUrl = "http://prometheus-operated.monitoring.svc:9090"
    """Prometheus HTTP API base URL (the local runner reads its own exporter instead)."""
    queries: PromotionQueries = Field(default_factory=PromotionQueries)
    """PromQL templates for the per-arm sufficient statistics."""
    source: PromotionSource = Field(default_factory=PromotionSource)
    """Where the statistics come from: Prometheus by default, or `source.sql` (docs/metrics.md, "The SQL source")."""
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    """Family-wise false-decision rate of the whole gate (SRM, breadth, depth and every guardrail together,
    however often it looks); split between them as docs/metrics.md says."""
    min_breadth_lift: float = Field(default=0.0, ge=-1)
    """Smallest relative breadth lift (engaged users / exposed users) that counts as a win."""
    min_depth_lift: float = Field(default=0.0, ge=-1)
    """Smallest relative depth lift (mean turns per exposed user) that counts as a win."""
    cuped: bool = True
    """Reduce variance with the pre-period covariate (CUPED) when the exporter provides it."""
    srm_p_value: Annotated[float, Field(gt=0, lt=0.5)] = 0.001
    """The always-valid sample-ratio-mismatch p-value (a sequential beta-binomial test, valid at any check
    interval) below which the canary stops: the experiment is broken. Spent out of `alpha`."""
    crossover_tolerance: float = Field(default=0.01, ge=0, lt=1)
    """Largest share of the exposed users that may be seen in both arms (a few mis-routed requests around a
    deploy). Above it the arms are not sticky and the canary stops like on a sample ratio mismatch: the
    experiment is broken (docs/metrics.md)."""
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
    0.05 matches the lifts the report saw and makes the interval narrowest near the end of a 7-day test on
    bench/gate.py's streams (docs/metrics.md, section 4)."""
    min_users_per_arm: Annotated[int, Field(ge=2)] = 200
    """No lift is judged significant before each arm has this many users (the normal approximation needs
    them)."""
    min_events_per_arm: Annotated[int, Field(ge=1)] = 100
    """Minimum information before breadth or depth may decide: each arm needs this many engaged users and (for
    breadth) this many not engaged, besides `minUsersPerArm` users; plug-in variances of rare events are not
    to be trusted with fewer. The confidence sequences hold uniformly in time, so waiting keeps them valid."""

    # --- issue 25: the frozen plan's α split, group-sequential looks, serving guardrails (h25) ---------------
    look_every: Duration | None = None
    """Schedule of the group-sequential looks (efficacy and deterioration): one look per period from the canary's
    start, whatever `checkInterval` is, and a last one at `maxDuration`. Unset: `maxDuration` / 28 (6 h for the
    default 7 d). Each look's boundary comes from O'Brien–Fleming-type α-spending on the information fraction
    (docs/metrics.md, section 5)."""
    expected_users_per_arm: Annotated[int, Field(ge=1)] | None = None
    """Users per arm expected by `maxDuration`, from the pre-period's traffic (distinct users of a
    `maxDuration`-long window before the canary × the arm's share): the denominator of the information fraction,
    raised to the users seen when more arrive. Unset: projected from the arrivals so far (conservative early)."""
    breadth_share: float = Field(default=0.05, gt=0, lt=1)
    """Share of the success metrics' α given to breadth; depth, the metric the report moved, gets the rest.
    Breadth is judged by always-valid tests only: its estimand moves as users become engaged on a later day, so its
    z-statistics do not follow the Brownian structure group-sequential boundaries rest on (an O'Brien–Fleming
    harm boundary at 0.004 rolled back 3 % of bench/gate.py's A/A streams)."""
    harm_share: float = Field(default=0.45, gt=0, lt=1)
    """Share of each success metric's α spent on deterioration (roll back when worse); the rest on efficacy
    (promote when better). A wrong roll-back and a wrong promotion are both counted in α."""
    harm_always_valid_share: float = Field(default=0.1, gt=0, lt=1)
    """Share of the deterioration α spent on the always-valid test (any look, any cadence: large harm is rolled
    back between scheduled looks); the rest on the scheduled group-sequential deterioration boundary, whose last
    look at `maxDuration` rolls back a canary that is worse at the end."""
    guardrail_share: float = Field(default=0.3, gt=0, lt=0.5)
    """Share of `alpha − srmPValue` spent on the guardrails (split equally; each guardrail's breach and
    non-inferiority tests are the two one-sided halves of one interval, only one of them can be wrong)."""
    serving_guardrails: list[ServingGuardrail] = Field(
        default_factory=lambda: [
            ServingGuardrail(metric="errors", threshold=0.02),
            ServingGuardrail(metric="latency-p95", threshold=1.5),
        ],
        json_schema_extra=UNIQUE_BY_METRIC,
    )
    """Hard SRE guardrails on the predictor's serving metrics (KServe's), Flagger-style: each is checked every
    `interval` over a window of that length and rolls back after `failures` failed checks in a row; they can
    only roll back (docs/metrics.md, section 6). Empty: none."""
    serving_queries: ServingQueries = Field(default_factory=lambda: ServingQueries())
    """PromQL templates of the serving metrics per arm."""
    final_look_grace: Duration = "2h"
    """How long the last look retries a failed reading after `maxDuration` before the canary ends INCONCLUSIVE:
    a Prometheus hiccup at that one look must not forfeit the experiment."""
    # --- end issue 25 ---------------------------------------------------------------------------------------

    novelty_window: Duration | None = "1d"  # issue 25: on by default (bench/gate.py, docs/metrics.md section 9)
    """Novelty guard (on by default, `1d`; `0d` turns it off): PROMOTE also needs depth's lift over the last
    window (turns added during it, per exposed user, from carried checkpoints of the sums) to stay above
    `minDepthLift`, so a lift that fades after the first days is not promoted. The window never holds the first
    window of the test, so no promotion comes before two windows (a canary with `maxDuration` under two windows
    runs without the guard); the cost in days and power is measured in docs/metrics.md (section 9)."""

    @model_validator(mode="after")
    def _srm_within_alpha(self) -> PromotionSpec:
        if self.srm_p_value >= self.alpha:
            raise ValueError(
                f"promotion.srmPValue ({self.srm_p_value}) is spent out of promotion.alpha ({self.alpha}) and must be "
                "smaller than it; lower srmPValue (default 0.001) or raise alpha"
            )
        return self


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
    checkpoint_steps: Annotated[int, Field(ge=0)] = 200
    """Training stages save a checkpoint every this many optimizer steps under the stage's output directory
    (shared by its attempts); a retried attempt resumes from the last one instead of step 0. 0 disables."""


# ------------------------------------------------------------------------------------------------ spec
# ---- experiment tracking (issue 28 point 9) ------------------------------------------------------------------
class MlflowTracking(ApiModel):
    """An MLflow tracking server: one run per generation, every TRL trainer's metrics in runs nested under it,
    the gates' checks, decision and lifts on it, and the promoted model registered in the model registry."""

    tracking_uri: HttpUrl
    """The tracking server, e.g. `http://mlflow.mlops.svc:5000` (credentials from the environment:
    `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME`/`PASSWORD` through `resources.storage.secretRef`)."""
    experiment: str = Field(default="characterflywheel", min_length=1, max_length=500)
    """Experiment the generation's run goes into (created when missing)."""
    registered_model: str | None = Field(default=None, min_length=1, max_length=500)
    """Model-registry name a promoted candidate is registered under; `canary.inferenceService` when unset."""


class WandbTracking(ApiModel):
    """Weights & Biases: every TRL trainer reports there, its runs grouped by generation. The API key comes from
    the environment (`WANDB_API_KEY`, through `resources.storage.secretRef`)."""

    project: str = Field(min_length=1, max_length=128)
    """W&B project."""
    entity: str | None = Field(default=None, min_length=1, max_length=128)
    """W&B team or user; the key's default entity when unset."""


class TrackingSpec(ApiModel):
    """Experiment trackers the stages report to (TRL's `report_to`); none by default."""

    mlflow: MlflowTracking | None = None
    """MLflow tracking (and, on promotion, its model registry)."""
    wandb: WandbTracking | None = None
    """Weights & Biases."""


# ----------------------------------------------------------------------------------------------------------------
class FlywheelGenerationSpec(ApiModel):
    """One turn of the flywheel: from the parent's promoted policy to a candidate, gated offline and online."""

    generation: Annotated[int, Field(ge=0)]
    """Generation number (the report went from 1 to 15)."""
    parent: DnsLabel | None = None
    """Name of the parent FlywheelGeneration in the same namespace: its promoted policy is the starting point
    and the A/B control. Omit for the first generation and give `basePolicy` instead."""
    base_policy: DataUri | None = None
    """Starting policy when there is no parent: a Hugging Face id, a path or a storage URI (`s3://…` of a model
    directory)."""
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
    tracking: TrackingSpec | None = None
    """Experiment tracking (MLflow, Weights & Biases); none when unset."""

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

    name: str = Field(min_length=1, max_length=40, pattern=names.DNS_1035)
    """Generation name: a DNS-1035 label (it starts the stage Services' names, so it begins with a letter) of at
    most 40 characters; with the reward model names it must leave the child names `<name>-<stage>-<attempt>`
    within 59 characters (Kubernetes' 63 less an Indexed Job's `-<index>`)."""
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

    @model_validator(mode="wrap")
    @classmethod
    def _derived_names_fit(cls, data: Any, handler: Any) -> FlywheelGeneration:
        """Refuse a generation whose child names would break Kubernetes' limits, naming the field to shorten."""
        generation = handler(data)
        spec = generation.spec
        problems = names.derived_name_problems(
            generation.metadata.name,
            [model.name for model in spec.stages.reward_models],
            spec.retry.max_attempts,
            spec.canary.inference_service,
            spec.canary.mode,
        )
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, [
                InitErrorDetails(
                    type=PydanticCustomError("name_too_long", "{message}", {"message": p.message, "hint": p.hint}),
                    loc=p.loc,
                    input=generation.metadata.name,
                )
                for p in problems
            ])
        return generation
