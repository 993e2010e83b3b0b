"""The pure reconcile core: `plan(generation, observed)` returns actions, events and the next status."""

from flywheel_operator.planner.actions import (
    Action,
    DeployCanary,
    Event,
    Plan,
    PromoteCanary,
    RollBackCanary,
    StartStage,
)
from flywheel_operator.planner.core import plan
from flywheel_operator.planner.observed import CanaryObservation, JobObservation, Observed, ParentObservation
from flywheel_operator.planner.pipeline import child_name, pipeline_steps, stage_config, stage_kind

__all__ = [
    "Action",
    "CanaryObservation",
    "DeployCanary",
    "Event",
    "JobObservation",
    "Observed",
    "ParentObservation",
    "Plan",
    "PromoteCanary",
    "RollBackCanary",
    "StartStage",
    "child_name",
    "pipeline_steps",
    "plan",
    "stage_config",
    "stage_kind",
]
