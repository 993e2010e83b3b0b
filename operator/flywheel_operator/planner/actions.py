"""The planner's output: actions for a backend to carry out, events to record, the next status, a wake-up time.

Actions are idempotent by construction (deterministic child names), so carrying one out twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from flywheel_operator.api import FlywheelGenerationStatus, StageConfig


@dataclass(frozen=True)
class StartStage:
    """Create the Job (or subprocess) `child` running `flywheel-train <config.stage>` with `config`."""

    stage: str
    child: str
    attempt: int
    config: StageConfig


@dataclass(frozen=True)
class DeployCanary:
    """Serve `candidate_policy` beside `control_policy` on `inference_service` to `traffic_percent` of users."""

    inference_service: str
    mode: Literal["knative", "standard"]
    traffic_percent: int
    candidate_policy: str
    control_policy: str


@dataclass(frozen=True)
class PromoteCanary:
    """Send all traffic to the candidate: it becomes the served model."""

    inference_service: str
    mode: Literal["knative", "standard"]
    candidate_policy: str


@dataclass(frozen=True)
class RollBackCanary:
    """Send all traffic back to the parent and remove the canary."""

    inference_service: str
    mode: Literal["knative", "standard"]
    control_policy: str


Action = StartStage | DeployCanary | PromoteCanary | RollBackCanary


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event (or a log line locally) for a transition: stage start/finish/retry, gate decisions."""

    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass(frozen=True)
class Plan:
    """What to do now and what the status becomes once it is done."""

    actions: tuple[Action, ...]
    status: FlywheelGenerationStatus
    events: tuple[Event, ...] = field(default=())
    requeue_at: datetime | None = None
    """Earliest time the planner wants to look again even if nothing changes (backoff, canary checks)."""
