"""The `Flywheel` API (characterflywheel.io/v1alpha1, short name `fw`): generations that follow each other.

A Flywheel holds a FlywheelGeneration template and starts generation N+1 once generation N has decided (or on an
interval or a cron schedule), never two at once; each generation's parent is the latest promoted one. The
planner (flywheel_operator.planner.flywheel.plan_flywheel) is pure; the kopf handlers and the local runner carry
out its actions. Field docstrings are the API reference (docs/api.md and the CRD are generated from them).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from flywheel_operator.api import names
from flywheel_operator.api.base import ApiModel
from flywheel_operator.api.durations import Duration, parse_duration
from flywheel_operator.api.models import DataUri, FlywheelGenerationSpec
from flywheel_operator.api.status import Condition

FLYWHEEL_KIND = "Flywheel"
FLYWHEEL_PLURAL = "flywheels"
FLYWHEEL_SHORT_NAME = "fw"
FLYWHEEL_LABEL = "characterflywheel.io/flywheel"
"""Label on every generation a Flywheel created: the Flywheel's name (the planner lists its generations by it)."""
WINDOW_ANNOTATION = "characterflywheel.io/traffic-window"
"""Annotation on a created generation: its traffic window, `<first day>/<last day>` (ISO dates, both included)."""
FLYWHEEL_NAME_LIMIT = 33
"""Longest Flywheel name: generation names are `<flywheel>-<number>`, and a generation name has at most 40
characters (api/names.py), which leaves 6 digits for the number."""
MAX_GENERATION_NUMBER = 999_999
FINISHED_PHASES: frozenset[str] = frozenset({"Promoted", "RolledBack", "Failed", "Deleted"})
"""Trajectory phases after which a generation is no longer in flight (`Deleted`: it vanished before deciding)."""
TEMPLATE_FIELDS_SET_BY_THE_FLYWHEEL = ("generation", "parent", "base_policy", "suspend")

TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
TEMPLATE_VARIABLES = ("flywheel", "generation", "window.start", "window.end", "window.days")
"""What a template string may use: `{{ flywheel }}` (the Flywheel's name), `{{ generation }}` (the number),
`{{ window.start }}` and `{{ window.end }}` (the traffic window's first and last day, `YYYY-MM-DD`) and
`{{ window.days }}` (how many days it covers)."""


def template_problems(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Every `{{ … }}` in the strings of `value` that names no template variable, with its path."""
    problems = []
    if isinstance(value, str):
        for match in TEMPLATE_VARIABLE.finditer(value):
            if match.group(1) not in TEMPLATE_VARIABLES:
                problems.append((path, f"unknown template variable {match.group(1)!r} in {value!r}; use one of "
                                       f"{', '.join('{{ ' + v + ' }}' for v in TEMPLATE_VARIABLES)}"))
        if "{{" in TEMPLATE_VARIABLE.sub("", value):
            problems.append((path, f"unclosed or malformed template in {value!r}: write {{{{ variable }}}}"))
    elif isinstance(value, dict):
        for key, item in value.items():
            problems += template_problems(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += template_problems(item, (*path, index))
    return problems


def render_template(value: Any, variables: dict[str, str]) -> Any:
    """`value` (wire JSON) with every `{{ variable }}` replaced; the variables must be complete (template_problems
    refused the rest at validation)."""
    if isinstance(value, str):
        return TEMPLATE_VARIABLE.sub(lambda m: variables[m.group(1)], value)
    if isinstance(value, dict):
        return {key: render_template(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [render_template(item, variables) for item in value]
    return value


# The template's spec: a FlywheelGenerationSpec without what the Flywheel sets itself (the number, the parent or
# base policy, suspend). Same fields, defaults, validation and docs, so the two cannot drift apart.
GenerationTemplateSpec = create_model(  # type: ignore[call-overload]
    "GenerationTemplateSpec",
    __base__=ApiModel,
    __doc__="A FlywheelGeneration spec without `generation`, `parent`, `basePolicy` and `suspend`, which the "
    "Flywheel sets; its strings may use the template variables.",
    **{name: (info.annotation, info) for name, info in FlywheelGenerationSpec.model_fields.items()
       if name not in TEMPLATE_FIELDS_SET_BY_THE_FLYWHEEL},
)


class TemplateMetadata(ApiModel):
    """Labels and annotations every generation of the Flywheel gets (the Flywheel adds its own label)."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels of each generation."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations of each generation."""


class GenerationTemplate(ApiModel):
    """The FlywheelGeneration each turn creates, with strings templated over the generation number and the
    traffic window, e.g. `userTraffic: {uri: "s3://logs/user/{{ window.start }}_{{ window.end }}/"}`."""

    metadata: TemplateMetadata = Field(default_factory=TemplateMetadata)
    """Labels and annotations of each generation."""
    spec: GenerationTemplateSpec  # type: ignore[valid-type]
    """The generation spec; the Flywheel sets `generation`, `parent` (the latest promoted generation) or
    `basePolicy` (the first one), and `suspend`."""

    @model_validator(mode="before")
    @classmethod
    def _variables_known(cls, data: Any) -> Any:
        if isinstance(data, dict):
            found = template_problems(data.get("spec"), ("spec",))
            if found:
                raise ValidationError.from_exception_data(cls.__name__, [
                    InitErrorDetails(type=PydanticCustomError("template", "{message}", {"message": message}),
                                     loc=loc, input=data.get("spec"))
                    for loc, message in found
                ])
        return data


class FlywheelSchedule(ApiModel):
    """When the next generation starts. Whatever the policy, never while one of this Flywheel's generations is
    still in flight (`concurrencyPolicy: Forbid`): a start that comes due meanwhile waits for the decision."""

    policy: Literal["on-decision", "interval", "cron"] = "on-decision"
    """`on-decision`: as soon as the previous generation decides; `interval`: also no sooner than `interval` after
    the previous start; `cron`: at the first `cron` time after the previous generation decided."""
    interval: Duration | None = None
    """With `policy: interval`: the shortest time from one start to the next (e.g. `7d`)."""
    cron: str | None = None
    """With `policy: cron`: a five-field cron expression in UTC, e.g. `0 6 * * 1` (Mondays at 06:00)."""
    concurrency_policy: Literal["Forbid"] = "Forbid"
    """Only `Forbid`: two generations of one Flywheel never run at once (the second would train on traffic its
    sibling's canary is still changing, and its parent would not be settled)."""

    @model_validator(mode="after")
    def _complete(self) -> FlywheelSchedule:
        if self.policy == "interval" and self.interval is None:
            raise ValueError("schedule.policy interval needs schedule.interval, e.g. `interval: 7d`")
        if self.policy == "cron":
            if self.cron is None:
                raise ValueError("schedule.policy cron needs schedule.cron, e.g. `cron: \"0 6 * * 1\"`")
            from cronsim import CronSim, CronSimError

            try:
                CronSim(self.cron, datetime(2026, 1, 1))
            except CronSimError as exc:
                raise ValueError(f"schedule.cron {self.cron!r} is not a five-field cron expression: {exc}") from exc
        if self.policy != "interval" and self.interval is not None:
            raise ValueError("schedule.interval applies only to `policy: interval`")
        if self.policy != "cron" and self.cron is not None:
            raise ValueError("schedule.cron applies only to `policy: cron`")
        return self


class TrafficWindow(ApiModel):
    """Which days of traffic a generation trains on: the `days` days up to the day it starts, widened back to the
    first day of the previous generation's canary, so each generation learns from what its parent's users did."""

    days: Annotated[int, Field(ge=1, le=366)] = 7
    """Days of traffic up to and including the start day."""
    include_previous_canary: bool = True
    """Widen the window back to the first day of the latest canary of this Flywheel (the report's practice: the
    traffic of an A/B week feeds the next generation)."""


class StopRules(ApiModel):
    """When the Flywheel stops starting generations. A pause says why in the `Paused` condition and an Event."""

    max_generations: Annotated[int, Field(ge=1)] | None = None
    """Generations to start in all; the Flywheel is `Finished` after the last one decides (raise it to go on)."""
    max_rollbacks_in_a_row: Annotated[int, Field(ge=1)] | None = 3
    """Pause after this many generations in a row that rolled back or failed (unset: never)."""
    plateau_generations: Annotated[int, Field(ge=1)] | None = None
    """Pause after this many generations in a row that were INCONCLUSIVE or promoted with a lift whose 95 %
    interval includes 0 (unset: never)."""
    count_from: Annotated[int, Field(ge=0)] = 0
    """Generations numbered below this do not count towards the roll-back and plateau streaks. To resume a paused
    Flywheel once the cause is fixed, set it past the last generation (the `Paused` condition says the number)."""


class FlywheelSpec(ApiModel):
    """A Flywheel: generation after generation from one template, each starting from the latest promoted one."""

    base_policy: DataUri
    """The first generation's starting policy (a Hugging Face id, a path or a storage URI); later generations
    start from the latest promoted generation."""
    first_generation: Annotated[int, Field(ge=0, le=MAX_GENERATION_NUMBER)] = 1
    """Number of the first generation; each next one adds 1."""
    template: GenerationTemplate
    """The generation each turn creates."""
    schedule: FlywheelSchedule = Field(default_factory=FlywheelSchedule)
    """When the next generation starts."""
    window: TrafficWindow = Field(default_factory=TrafficWindow)
    """Which traffic each generation trains on (the template variables `window.*`)."""
    stop_rules: StopRules = Field(default_factory=StopRules)
    """When to stop or pause."""
    suspend: bool = False
    """Start no new generation (the one in flight goes on); set back to false to continue."""
    history_limit: Annotated[int, Field(ge=0)] | None = 10
    """Finished generations kept (oldest deleted first, as CronJob's history limits do; the latest promoted one is
    always kept, it is the next parent). The trajectory in the status keeps every generation. Unset: keep all."""


class FlywheelMeta(ApiModel):
    """The part of the Flywheel's metadata the operator reads."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=FLYWHEEL_NAME_LIMIT, pattern=names.DNS_1035)
    """A DNS-1035 label of at most 33 characters: generations are named `<name>-<number>` (at most 40)."""
    namespace: str | None = None
    """Namespace; the generations are created in it."""
    generation: int | None = None
    """Spec revision counter maintained by the API server."""
    uid: str | None = None
    """Object uid (the generations' owner references point at it)."""
    creation_timestamp: datetime | None = None
    """When the Flywheel was created (the first cron time is counted from it)."""


class Flywheel(ApiModel):
    """The custom resource as a whole."""

    api_version: Literal["characterflywheel.io/v1alpha1"] = "characterflywheel.io/v1alpha1"
    """API group and version."""
    kind: Literal["Flywheel"] = FLYWHEEL_KIND
    """Resource kind."""
    metadata: FlywheelMeta
    """Kubernetes metadata."""
    spec: FlywheelSpec
    """Desired flywheel."""
    status: dict | None = None
    """Observed state, written by the operator (see FlywheelStatus)."""

    @model_validator(mode="after")
    def _generation_names_fit(self) -> Flywheel:
        """The longest generation name this Flywheel can create must fit every derived name's limit."""
        spec = self.spec
        last = (spec.first_generation + spec.stop_rules.max_generations - 1 if spec.stop_rules.max_generations
                else MAX_GENERATION_NUMBER)
        if last > MAX_GENERATION_NUMBER:
            raise ValueError(f"firstGeneration + maxGenerations - 1 = {last} exceeds {MAX_GENERATION_NUMBER}")
        longest = generation_name(self.metadata.name, last)
        template = spec.template.spec
        problems = names.derived_name_problems(
            longest, [m.name for m in template.stages.reward_models], template.retry.max_attempts,
            template.canary.inference_service, template.canary.mode)
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(
                    type=PydanticCustomError("name_too_long", "{message}", {
                        "message": f"generation {longest!r}: {p.message}", "hint": p.hint}),
                    loc=("spec", "template", *p.loc), input=self.metadata.name)
                for p in problems
            ])
        return self


def generation_name(flywheel: str, number: int) -> str:
    """The deterministic name of a Flywheel's generation: a restart names the same object, never a second one."""
    return f"{flywheel}-{number}"


# --------------------------------------------------------------------------------------------------- status
class TrajectoryEntry(ApiModel):
    """One generation of the Flywheel: how it went and what was deployed after it."""

    number: int
    """Generation number."""
    name: str
    """FlywheelGeneration name."""
    phase: str
    """Its phase (`Requested` until it is seen; `Deleted` when it vanished before deciding)."""
    decision: Literal["PROMOTE", "ROLL_BACK", "INCONCLUSIVE", "FAIL"] | None = None
    """Its final decision."""
    parent: str | None = None
    """The generation it started from (None: `spec.basePolicy`)."""
    starting_policy: str | None = None
    """The policy it started from."""
    deployed_policy: str | None = None
    """The policy serving users after it decided: its candidate if promoted, else the one before."""
    lift: float | None = None
    """Relative engagement-breadth lift the canary measured."""
    lift_interval: list[float] | None = None
    """Its always-valid 95 % interval [lower, upper]."""
    depth_lift: float | None = None
    """Relative engagement-depth lift the canary measured."""
    offline_win_rate: float | None = None
    """The candidate's reward-model win rate over its parent on user prompts (offline gate)."""
    reason: str | None = None
    """The decision's first reason."""
    window: list[date] | None = None
    """Its traffic window [first day, last day]."""
    requested_at: datetime | None = None
    """When the Flywheel created it."""
    canary_started_at: datetime | None = None
    """When its canary began exposing users."""
    decided_at: datetime | None = None
    """When it decided."""


class FlywheelStatus(ApiModel):
    """Observed state of a Flywheel."""

    phase: Literal["Pending", "Running", "Waiting", "Paused", "Suspended", "Finished", "Invalid"] = "Pending"
    """`Running` (a generation in flight), `Waiting` (for the schedule), `Paused` (a stop rule), `Suspended`,
    `Finished` (maxGenerations decided) or `Invalid` (the template renders to a generation the API refuses)."""
    observed_generation: int | None = None
    """metadata.generation this status was computed for."""
    message: str | None = None
    """One line on what is happening or what is needed."""
    in_flight: str | None = None
    """The generation in flight, for `kubectl get fw`."""
    in_flight_phase: str | None = None
    """Its phase."""
    last_promoted: str | None = None
    """The latest promoted generation: the next one's parent."""
    deployed_policy: str | None = None
    """The policy serving users now (the latest promoted candidate, or `spec.basePolicy`)."""
    promotions_in_a_row: int = 0
    """Generations promoted in a row, latest first."""
    rollbacks_in_a_row: int = 0
    """Generations rolled back or failed in a row, latest first (counted from `stopRules.countFrom`)."""
    plateau_in_a_row: int = 0
    """Generations in a row without a clear lift (INCONCLUSIVE, or promoted with an interval including 0)."""
    streak: str | None = None
    """The current streak in words, for `kubectl get fw`."""
    next_start_at: datetime | None = None
    """When the next generation may start (while `Waiting`)."""
    trajectory: list[TrajectoryEntry] = Field(default_factory=list)
    """Every generation, in order: the climb."""
    conditions: list[Condition] = Field(default_factory=list)
    """`Ready`, `Paused` (with the stop rule as reason), `Finished`."""

    @field_validator("trajectory")
    @classmethod
    def _ordered(cls, value: list[TrajectoryEntry]) -> list[TrajectoryEntry]:
        return sorted(value, key=lambda e: e.number)

    def entry(self, number: int) -> TrajectoryEntry | None:
        return next((e for e in self.trajectory if e.number == number), None)


def window_of(annotation: str | None) -> tuple[date, date] | None:
    """Parse WINDOW_ANNOTATION (None when absent or malformed)."""
    if not annotation or "/" not in annotation:
        return None
    try:
        first, last = annotation.split("/", 1)
        return date.fromisoformat(first), date.fromisoformat(last)
    except ValueError:
        return None


def interval_seconds(schedule: FlywheelSchedule) -> float:
    return parse_duration(schedule.interval or "0s").total_seconds()
