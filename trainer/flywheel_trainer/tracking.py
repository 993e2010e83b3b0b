"""A stage program's experiment tracking (`StageConfig.tracking`, the generation's `spec.tracking`).

Every TRL trainer of the stage reports to the configured trackers (`report_to`, through `training_kwargs`):

- MLflow: the stage gets a run nested under its generation's run (flywheel_operator.tracking), each trainer a run
  nested under the stage's (transformers' MLflowCallback, told its parent through `MLFLOW_TAGS`), and the
  stage's result metrics are logged to the stage's run when it ends.
- Weights & Biases: each trainer's run is grouped by generation (`WANDB_RUN_GROUP`) and named after the stage.

Without `tracking`, `report_to` stays "none" and nothing here imports a tracker.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator

from flywheel_operator.api import StageConfig, StageResult

REPORT_TO_ENV = "FLYWHEEL_REPORT_TO"
"""Comma-separated `report_to` targets for `training_kwargs` (set while a tracked stage runs)."""
RUN_NAME_ENV = "FLYWHEEL_RUN_NAME"
"""The trainers' `run_name` (the stage's child name)."""


def report_to() -> list[str] | str:
    """TRL's `report_to` for the stage that runs: the configured trackers, or "none"."""
    targets = [t for t in os.environ.get(REPORT_TO_ENV, "").split(",") if t]
    return targets or "none"


def tracker_environment(config: StageConfig) -> dict[str, str]:
    """Environment the trackers' Trainer callbacks read while the stage runs."""
    tracking = config.tracking
    if tracking is None:
        return {}
    targets, env = [], {RUN_NAME_ENV: f"{config.generation}-{config.name}"}
    if tracking.mlflow is not None:
        targets.append("mlflow")
        env.update(MLFLOW_TRACKING_URI=tracking.mlflow.tracking_uri, MLFLOW_EXPERIMENT_NAME=tracking.mlflow.experiment)
    if tracking.wandb is not None:
        targets.append("wandb")
        env.update(WANDB_PROJECT=tracking.wandb.project, WANDB_RUN_GROUP=config.generation,
                   WANDB_JOB_TYPE=config.stage, WANDB_NAME=f"{config.generation}-{config.name}")
        if tracking.wandb.entity:
            env["WANDB_ENTITY"] = tracking.wandb.entity
    env[REPORT_TO_ENV] = ",".join(targets)
    return env


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_tracked(config: StageConfig, run: Callable[[], StageResult]) -> StageResult:
    """Run the stage with its trackers. MLflow: a stage run nested under the generation's run; every trainer's
    run is nested under the stage's (the `mlflow.parentRunId` tag in `MLFLOW_TAGS`, which transformers'
    MLflowCallback sets on the run it starts); the stage's run gets the result's metrics and ends FINISHED, or
    FAILED when the stage raises."""
    if config.tracking is None:
        return run()
    env = tracker_environment(config)
    if config.tracking.mlflow is None:
        with _environment(env):
            return run()
    from flywheel_operator.tracking import (
        GENERATION_TAG,
        STAGE_TAG,
        TRAINER_TAG,
        client,
        experiment_id,
        generation_run,
    )
    from mlflow.entities import Metric

    spec = config.tracking.mlflow
    mlflow_client = client(spec)
    parent = generation_run(spec, config.generation)
    stage_run = mlflow_client.create_run(
        experiment_id(spec), run_name=f"{config.generation}-{config.name}",
        tags={"mlflow.parentRunId": parent, GENERATION_TAG: config.generation, STAGE_TAG: config.name},
    ).info.run_id
    env["MLFLOW_TAGS"] = json.dumps({"mlflow.parentRunId": stage_run, GENERATION_TAG: config.generation,
                                     TRAINER_TAG: config.name})
    try:
        with _environment(env):
            result = run()
    except BaseException:
        mlflow_client.set_terminated(stage_run, "FAILED")
        raise
    stamp = int(time.time() * 1000)
    metrics = [Metric(f"result.{k}", v, stamp, 0) for k, v in result.metrics.items() if math.isfinite(v)]
    mlflow_client.log_batch(stage_run, metrics=metrics)
    mlflow_client.set_tag(stage_run, "output_digest", result.output_digest or "")
    mlflow_client.set_terminated(stage_run, "FINISHED")
    return result
