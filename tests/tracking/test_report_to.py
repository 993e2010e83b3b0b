"""spec.tracking reaches every TRL trainer's `report_to` (issue 28 point 9); without it, "none" as before.
Weights & Biases is wired through its environment variables only: the `wandb` package is not installed here, so
no test starts a W&B run (offline mode would need it); these tests pin what the trainers are told."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flywheel_operator.api import StageConfig
from flywheel_operator.validation import problems_of
from flywheel_trainer.runtime import training_kwargs
from flywheel_trainer.tracking import REPORT_TO_ENV, _environment, tracker_environment

from tests.foundation.manifests import minimal

BASE = {"stage": "sft", "name": "sft", "generation": "gen3", "outputDir": "/out", "policy": "/p",
        "data": {"userTraffic": {"uri": "/logs"}}}


def kwargs_under(config: StageConfig) -> dict:
    with _environment(tracker_environment(config)):
        return training_kwargs(Path("/tmp/out"), seed=0, deepspeed_stage=0, max_steps=1, learning_rate=1e-4)


def test_without_tracking_nothing_reports():
    config = StageConfig.model_validate(BASE)
    assert tracker_environment(config) == {}
    assert kwargs_under(config)["report_to"] == "none" and "run_name" not in kwargs_under(config)


def test_mlflow_and_wandb_reach_report_to_and_their_environment():
    config = StageConfig.model_validate({**BASE, "tracking": {
        "mlflow": {"trackingUri": "http://mlflow.mlops:5000", "experiment": "chat"},
        "wandb": {"project": "flywheel", "entity": "acme"}}})
    env = tracker_environment(config)
    assert env[REPORT_TO_ENV] == "mlflow,wandb"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops:5000" and env["MLFLOW_EXPERIMENT_NAME"] == "chat"
    assert env["WANDB_PROJECT"] == "flywheel" and env["WANDB_ENTITY"] == "acme" and env["WANDB_RUN_GROUP"] == "gen3"
    kwargs = kwargs_under(config)
    assert kwargs["report_to"] == ["mlflow", "wandb"] and kwargs["run_name"] == "gen3-sft"
    assert REPORT_TO_ENV not in os.environ  # restored after the stage


def test_every_stage_config_carries_the_generations_tracking():
    from flywheel_operator.api import FlywheelGeneration, FlywheelGenerationStatus
    from flywheel_operator.planner.pipeline import stage_config

    manifest = minimal(tracking={"mlflow": {"trackingUri": "https://mlflow.example.com"}})
    generation = FlywheelGeneration.model_validate(manifest)
    status = FlywheelGenerationStatus(policy="/models/base")
    for stage in ("curate", "reward-pointwise", "sft", "rl", "eval"):
        assert stage_config(generation, status, stage).tracking == generation.spec.tracking


@pytest.mark.parametrize(("tracking", "path"), [
    ({"mlflow": {"trackingUri": "not-a-url"}}, "spec.tracking.mlflow.trackingUri"),
    ({"wandb": {}}, "spec.tracking.wandb.project"),
    ({"mlfow": {}}, "spec.tracking.mlfow"),
])
def test_validate_names_tracking_problems(tracking, path):
    assert [p.path for p in problems_of(minimal(tracking=tracking))] == [path]


def test_the_local_runner_logs_status_changes_and_says_when_the_tracker_is_down(tmp_path, monkeypatch):
    from flywheel_local.progress import Display
    from flywheel_local.runner import Runner
    from flywheel_operator.api import FlywheelGeneration, FlywheelGenerationStatus
    from rich.console import Console

    calls = []

    def record(spec, generation, before, after, *, registered_model):
        calls.append((spec.tracking_uri, generation, before.phase, after.phase, registered_model))
        return ["tracking: could not log to MLflow at http://mlflow:5000: ConnectionError: refused"]

    monkeypatch.setattr("flywheel_operator.tracking.record", record)
    console = Console(record=True, width=200)
    runner = Runner(tmp_path, world_file=tmp_path / "w.yaml", cache_dir=tmp_path, display=Display(console))
    generation = FlywheelGeneration.model_validate(minimal(tracking={"mlflow": {"trackingUri": "http://mlflow:5000"}}))
    runner._track(generation, FlywheelGenerationStatus(phase="Observing"), FlywheelGenerationStatus(phase="Promoted"))
    assert calls == [("http://mlflow:5000", "gen2", "Observing", "Promoted", "chat")]  # canary.inferenceService
    assert "gen2: tracking: could not log to MLflow" in console.export_text()
