"""Experiment tracking in MLflow (`spec.tracking.mlflow`): one run per generation.

- The generation's run is found by its tag (`characterflywheel.generation`) or created, by whoever comes first:
  the runner before any stage starts, or a stage program (flywheel_trainer.tracking), whose own run and its TRL
  trainers' runs are nested under it.
- `record(before, after)` logs what a status change brought: the offline gate's checks (value and 95 % interval of
  each), the online gate's decision, its numbers (lifts with their intervals, sample sizes) and reasons; on
  promotion it registers the promoted model in MLflow's model registry (an object-store URI as the version's
  source; a local model directory is logged to the run first, since the registry refuses local paths outside a
  run's artifacts).
- A tracking server that cannot be reached never stops a generation: `record` returns a note and the run goes on.

`mlflow` is imported inside the functions (the `tracking` extra): without `spec.tracking` nothing here runs.
"""

from __future__ import annotations

import math
import re
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.api.models import MlflowTracking

GENERATION_TAG = "characterflywheel.generation"
"""Tag that marks a generation's run (the FlywheelGeneration's name; one experiment per namespace, or
distinct names, keeps two namespaces' generations apart)."""
STAGE_TAG = "characterflywheel.stage"
"""Tag of a stage's run (nested under its generation's)."""
TRAINER_TAG = "characterflywheel.trainer"
"""Tag of a TRL trainer's run (nested under its stage's), the stage's name."""
MODEL_ARTIFACT = "model"
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
MAX_TAG_LENGTH = 5000


class TrackingError(Exception):
    """MLflow could not be reached or refused a write; the message names the server."""


def client(spec: MlflowTracking) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=spec.tracking_uri)


def experiment_id(spec: MlflowTracking) -> str:
    """The experiment's id, creating it when missing (a concurrent creator wins: read it back)."""
    mlflow_client = client(spec)
    found = mlflow_client.get_experiment_by_name(spec.experiment)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(mlflow_client.create_experiment(spec.experiment))
    except Exception:  # RESOURCE_ALREADY_EXISTS from a concurrent stage
        found = mlflow_client.get_experiment_by_name(spec.experiment)
        if found is None:
            raise
        return str(found.experiment_id)


def generation_run(spec: MlflowTracking, generation: str) -> str:
    """The id of the generation's run (the earliest with its tag), created when there is none."""
    mlflow_client = client(spec)
    experiment = experiment_id(spec)
    runs = mlflow_client.search_runs(
        [experiment], filter_string=f"tags.`{GENERATION_TAG}` = '{generation}'",
        order_by=["attributes.start_time ASC"], max_results=1,
    )
    if runs:
        return str(runs[0].info.run_id)
    return str(mlflow_client.create_run(experiment, run_name=generation, tags={GENERATION_TAG: generation})
               .info.run_id)


def metric_name(text: str) -> str:
    """A key MLflow accepts (letters, digits, `_-. /`)."""
    return _METRIC_NAME.sub("_", text)


def _finite(values: dict[str, float | None]) -> dict[str, float]:
    return {metric_name(k): float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def gate_metrics(status: FlywheelGenerationStatus) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics and tags of the gates' results in `status` (offline checks, online decision, final decision)."""
    metrics: dict[str, float | None] = {}
    tags: dict[str, str] = {}
    gate = status.offline_gate
    if gate is not None:
        metrics["offline.passed"] = float(gate.passed)
        for check in gate.checks:
            metrics[f"offline.{check.name}"] = check.value
            if check.interval:
                metrics[f"offline.{check.name}.lower"], metrics[f"offline.{check.name}.upper"] = check.interval
            if check.n is not None:
                metrics[f"offline.{check.name}.n"] = float(check.n)
            verdict = f"{'passed' if check.passed else 'failed'} (limit {check.limit})"
            tags[f"offline.{check.name}"] = "disabled" if check.limit == "disabled" else verdict
    online = status.online.decision if status.online is not None else None
    if online is not None:
        metrics.update({f"online.{key}": value for key, value in online.numbers.items()})
        tags["online.outcome"] = online.outcome
        tags["online.reasons"] = "; ".join(online.reasons)[:MAX_TAG_LENGTH]
    if status.decision is not None:
        tags["decision"] = status.decision.outcome
        tags["decision.reasons"] = "; ".join(status.decision.reasons)[:MAX_TAG_LENGTH]
    tags["phase"] = status.phase
    return _finite(metrics), tags


def register_promoted(spec: MlflowTracking, run_id: str, model_uri: str, name: str) -> str:
    """Register the promoted model as a new version of `name`; returns the version."""
    mlflow_client = client(spec)
    local = None if storage.is_object_store(model_uri) else storage.local_path(model_uri)
    if local is None:
        source = model_uri
    else:
        mlflow_client.log_artifacts(run_id, str(local), MODEL_ARTIFACT)
        source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    try:
        mlflow_client.create_registered_model(name)
    except Exception:  # RESOURCE_ALREADY_EXISTS: a parent generation registered it
        mlflow_client.get_registered_model(name)
    version = mlflow_client.create_model_version(name, source=source, run_id=run_id,
                                                 tags={GENERATION_TAG: mlflow_client.get_run(run_id).data.tags.get(
                                                     GENERATION_TAG, "")})
    return str(version.version)


def record(
    spec: MlflowTracking,
    generation: str,
    before: FlywheelGenerationStatus | None,
    after: FlywheelGenerationStatus,
    *,
    registered_model: str,
) -> list[str]:
    """Log to the generation's run what changed from `before` to `after`; notes for the user (what was logged,
    or why it could not be). Idempotent enough to call on every status write: nothing changed, nothing logged."""
    gates_changed = (
        before is None
        or before.offline_gate != after.offline_gate
        or before.decision != after.decision
        or (before.online.decision if before.online else None) != (after.online.decision if after.online else None)
    )
    promoted = after.phase == "Promoted" and (before is None or before.phase != "Promoted")
    if not gates_changed and not promoted:
        return []
    try:
        run_id = generation_run(spec, generation)
        mlflow_client = client(spec)
        notes = []
        if gates_changed:
            metrics, tags = gate_metrics(after)
            from mlflow.entities import Metric, RunTag

            stamp = int((after.decision.at if after.decision and after.decision.at else
                         after.offline_gate.at if after.offline_gate and after.offline_gate.at else
                         _now()).timestamp() * 1000)
            mlflow_client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()],
                                    tags=[RunTag(k, v) for k, v in tags.items()])
        if promoted and after.promoted_policy:
            version = register_promoted(spec, run_id, after.promoted_policy, registered_model)
            mlflow_client.set_tag(run_id, "registered_model", f"{registered_model} version {version}")
            notes.append(f"registered {after.promoted_policy} as {registered_model} version {version} in MLflow")
        if after.phase in ("Promoted", "RolledBack", "Failed"):
            mlflow_client.set_terminated(run_id, "FINISHED" if after.phase != "Failed" else "FAILED")
        return notes
    except Exception as exc:  # the tracker is an observer: it never stops a generation
        return [f"tracking: could not log to MLflow at {spec.tracking_uri}: {type(exc).__name__}: {exc}"[:500]]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
