"""What a backend saw, handed to the planner. Plain frozen data: the planner never looks at the world itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from flywheel_operator.api import OnlineReading, StageResult

JobState = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobObservation:
    """A stage Job (or local subprocess) as last seen."""

    name: str
    state: JobState
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    result: StageResult | None = None
    """The stage's result.json, read by the backend once the Job succeeded (None if missing or unreadable)."""
    permanent: bool = False
    """The Job failed for a reason no retry can fix (the stage exited 2: a StageError such as a bad config or a
    missing input; the Job's podFailurePolicy failed it at once): the planner does not try it again."""


@dataclass(frozen=True)
class CanaryObservation:
    """The InferenceService serving the canary, as last seen."""

    ready: bool
    message: str | None = None
    traffic_percent: int | None = None
    revisions: Mapping[str, str] = field(default_factory=dict)
    endpoints: Mapping[str, str] = field(default_factory=dict)
    """URL per arm (`control`, `treatment`) the chat backend sends each user to."""


@dataclass(frozen=True)
class ParentObservation:
    """The parent generation: only its outcome and promoted policy matter."""

    name: str
    phase: str
    promoted_policy: str | None = None


@dataclass(frozen=True)
class Observed:
    """Everything the planner may know besides the resource itself. `now` is the only clock."""

    now: datetime
    jobs: Mapping[str, JobObservation] = field(default_factory=dict)
    canary: CanaryObservation | None = None
    online: OnlineReading | None = None
    parent: ParentObservation | None = None
    canary_holder: str | None = None
    """Another live generation whose canary the InferenceService carries (this one must wait), if any."""
