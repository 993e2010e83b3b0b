"""The engagement exporter's input: exposure and engagement events, one JSON object per line (docs/metrics.md).

Parsing is pure and all-or-nothing per batch: a batch with any malformed line is rejected whole, with every
line's reason, so a client can fix it and resend it without counting anything twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

Arm = Literal["control", "treatment"]
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
GenerationName = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]
UserId = Annotated[str, Field(min_length=1, max_length=256)]
MAX_TURNS = 100_000
"""Most turns (or responses, or guardrail events) one event may carry: a chat backend sends an event per turn or
per session, and the bound keeps every sum a finite float (a poison `turns=10**160` would overflow depth²)."""
MAX_PRE_DEPTH = 1e9
"""Largest CUPED covariate (pre-period turns) accepted: X² and X·depth stay finite."""
MAX_DAY = 10_000_000
"""Largest day index (UTC days since 1970 are about 20,000 today; experiment days are small)."""
MAX_LATENCY_SECONDS = 86_400.0
"""Longest response latency accepted (a day): anything longer is a clock or unit bug."""
Count = Annotated[int, Field(ge=0, le=MAX_TURNS, strict=True)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    generation: GenerationName
    """The FlywheelGeneration whose A/B test this is (the candidate's name, the same on both arms)."""
    user: UserId
    """Pseudonymous user id; the unit of randomisation (arms are sticky per user)."""
    namespace: Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)] | None = None
    """The generation's namespace. Send it when one exporter serves generations of several namespaces (two of them
    may share a name); absent, the series carry no `namespace` and Prometheus labels them with the exporter's own
    namespace (the ServiceMonitor's target label), right for a single-namespace install."""

    @property
    def experiment(self) -> str:
        """The exporter's key of this A/B test: `namespace/generation`, or the generation alone."""
        return experiment_key(self.generation, self.namespace)


class ExposureEvent(_Event):
    """A user entered the experiment on an arm. Repeated exposures of the same user count once."""

    type: Literal["exposure"]
    arm: Arm
    """The arm the user is assigned to."""
    pre_depth: float = Field(default=0.0, ge=0, le=MAX_PRE_DEPTH, allow_inf_nan=False)
    """CUPED covariate: the user's depth (turns) in the pre-period before exposure; 0 for new users."""


class EngagementEvent(_Event):
    """Turns of an exposed user, with the responses served and their guardrail events."""

    type: Literal["engagement"]
    arm: Arm | None = None
    """Optional; when given it must be the arm the user was exposed to (catches routing bugs)."""
    turns: Count = 1
    """User turns answered (depth increments), at most MAX_TURNS."""
    responses: Count | None = None
    """Responses served (guardrail denominator); `turns` when unset."""
    guardrails: dict[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)], Count] = Field(default_factory=dict)
    """Guardrail events among those responses, e.g. {"instruction-violations": 1}."""
    latency_seconds: list[Annotated[float, Field(ge=0, le=MAX_LATENCY_SECONDS, allow_inf_nan=False)]] = Field(
        default_factory=list, max_length=MAX_TURNS
    )
    """Latency of each response served, for the latency histogram."""
    day: int | None = Field(default=None, ge=0, le=MAX_DAY, strict=True)
    """Day index the turns happened on; only whether two events share a day matters (breadth counts the distinct
    days a user was active). The app's experiment day (0 = first day) or any other consistent numbering; when
    absent, the exporter stamps the UTC day it received the event on (`utc_day`)."""

    @property
    def served(self) -> int:
        return self.turns if self.responses is None else self.responses

    @model_validator(mode="after")
    def _rates_stay_rates(self) -> EngagementEvent:
        for name, count in self.guardrails.items():
            if count > self.served:
                raise ValueError(
                    f"guardrails.{name} = {count} exceeds the {self.served} responses of this event; "
                    "a guardrail counts responses, so send at most one event per response"
                )
        return self


Event = Annotated[ExposureEvent | EngagementEvent, Field(discriminator="type")]
_EVENT = TypeAdapter(Event)


def experiment_key(generation: str, namespace: str | None = None) -> str:
    """`namespace/generation`, or `generation` when the namespace is not known (see `_Event.namespace`)."""
    return f"{namespace}/{generation}" if namespace else generation


def experiment_labels(key: str) -> dict[str, str]:
    """The Prometheus labels of an experiment key: `generation`, and `namespace` when the key has one."""
    namespace, _, generation = key.rpartition("/")
    return {"namespace": namespace, "generation": generation} if namespace else {"generation": generation}


def parse_event(line: str) -> Event:
    """One JSON line to an event; raises ValueError with the field and the fix."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(raw, dict):
        raise ValueError('an event must be a JSON object with "type": "exposure" or "engagement"')
    try:
        return _EVENT.validate_python(raw)
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(error) for error in exc.errors())) from exc


def utc_day(moment: datetime) -> int:
    """The day index of a moment: whole UTC days since 1970-01-01 (timezone-aware `moment` required)."""
    if moment.tzinfo is None:
        raise ValueError("utc_day needs a timezone-aware datetime, e.g. datetime.now(UTC)")
    return (moment.astimezone(UTC).date() - datetime(1970, 1, 1, tzinfo=UTC).date()).days


def with_day(events: Sequence[Event], day: int) -> list[Event]:
    """`day` on every engagement event that has none (the exporter's receipt day), the rest unchanged; done before
    journaling, so a replayed journal counts the same active days."""
    return [
        event.model_copy(update={"day": day}) if isinstance(event, EngagementEvent) and event.day is None else event
        for event in events
    ]


def parse_batch(text: str) -> tuple[list[Event], list[str]]:
    """Every non-blank line to an event; returns the events and the errors (`line N: …`), one of them empty."""
    events: list[Event] = []
    errors: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(parse_event(line))
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
    return (events, []) if not errors else ([], errors)


def _describe(error: dict) -> str:
    parts = list(error["loc"])
    if parts and parts[0] in ("exposure", "engagement"):  # the discriminator's tag, not a field
        parts = parts[1:]
    location = ".".join(str(part) for part in parts)
    message = error["msg"]
    return f"field {location!r}: {message}" if location else message
