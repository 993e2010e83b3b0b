"""spec.tracking against a REAL MLflow tracking server started here (`mlflow server`, SQLite backend, 127.0.0.1;
issue 28 point 9): a TRL trainer of a stage reports to it in a run nested under the stage's run, itself nested
under the generation's run; the gates' checks, decision and lifts are logged to the generation's run; a promoted
model is registered in the model registry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flywheel_operator.api import FlywheelGenerationStatus, GateCheck, OfflineGateResult
from flywheel_operator.api.models import MlflowTracking
from flywheel_operator.api.status import FinalDecision, OnlineDecision, OnlineStatus
from flywheel_operator.tracking import GENERATION_TAG, STAGE_TAG, TRAINER_TAG, record

from tests.trainer.test_resume import stage_config

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")
MLFLOW = Path(sys.executable).with_name("mlflow")
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _runs(uri: str, experiment: str, generation: str) -> list:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], filter_string=f"tags.`{GENERATION_TAG}` = '{generation}'")


def test_every_trl_trainer_of_a_stage_reports_to_mlflow_under_the_generations_run(server, tmp_path):
    path = stage_config(tmp_path)
    config = json.loads(path.read_text())
    config["settings"]["rewardModels"][0]["maxSteps"] = 3
    config["checkpointSteps"] = 0
    config["tracking"] = {"mlflow": {"trackingUri": server, "experiment": "stages"}}
    path.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "flywheel_trainer.cli", "reward", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = mlflow.MlflowClient(server)
    runs = _runs(server, "stages", "g")
    generation = [r for r in runs if STAGE_TAG not in r.data.tags and TRAINER_TAG not in r.data.tags]
    stage = [r for r in runs if r.data.tags.get(STAGE_TAG) == "reward-rm"]
    assert len(generation) == 1 and len(stage) == 1
    assert stage[0].data.tags["mlflow.parentRunId"] == generation[0].info.run_id
    assert "result.accuracy" in stage[0].data.metrics  # the stage's result.json metrics
    experiment = client.get_experiment_by_name("stages").experiment_id
    trainers = client.search_runs([experiment],
                                  filter_string=f"tags.mlflow.parentRunId = '{stage[0].info.run_id}'")
    assert len(trainers) == 1, "the RewardTrainer's own run, nested under the stage's"
    trainer = trainers[0].data
    assert trainer.tags[TRAINER_TAG] == "reward-rm" and trainer.tags[GENERATION_TAG] == "g"
    assert trainer.params["learning_rate"] == "0.0001" and trainer.params["max_steps"] == "3"
    assert "loss" in trainer.metrics or "train_loss" in trainer.metrics
    assert trainer.params["run_name"] == "g-reward-rm"


def test_the_gates_and_the_promotion_are_logged_to_the_generations_run(server, tmp_path):
    model = tmp_path / "rl" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    spec = MlflowTracking(tracking_uri=server, experiment="gates")
    band = GateCheck(name="win-rate-band", passed=True, value=0.697, limit="in [0.50, 0.65]", n=180,
                     interval=[0.627, 0.760], message="...")
    off = GateCheck(name="violation-rate", passed=True, value=0.1, limit="disabled", n=180, message="...")
    gated = FlywheelGenerationStatus(phase="Canary", offline_gate=OfflineGateResult(passed=True, checks=[band, off],
                                                                                    at=T0))
    decision = OnlineDecision(outcome="PROMOTE", reasons=["depth lift +16.0 % in [+5.0 %, +27.0 %] > 0.00 %"],
                              numbers={"depth.lift": 0.16, "depth.lower": 0.05, "depth.upper": 0.27,
                                       "breadth.lift": 0.032, "users.treatment": 2500.0}, at=T0)
    promoted = gated.model_copy(update={
        "phase": "Promoted", "promoted_policy": str(model),
        "online": OnlineStatus(started_at=T0, decision=decision),
        "decision": FinalDecision(outcome="PROMOTE", reasons=["online gate: depth lift +16.0 %"], at=T0),
    })

    assert record(spec, "gen7", None, gated, registered_model="character-chat") == []
    notes = record(spec, "gen7", gated, promoted, registered_model="character-chat")
    assert notes == [f"registered {model} as character-chat version 1 in MLflow"]
    assert record(spec, "gen7", promoted, promoted, registered_model="character-chat") == []  # nothing new

    (run,) = _runs(server, "gates", "gen7")
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["offline.win-rate-band"] == pytest.approx(0.697)
    assert metrics["offline.win-rate-band.lower"] == pytest.approx(0.627)
    assert metrics["offline.win-rate-band.upper"] == pytest.approx(0.760) and metrics["offline.passed"] == 1.0
    assert tags["offline.violation-rate"].startswith("disabled")
    assert metrics["online.depth.lift"] == pytest.approx(0.16) and metrics["online.depth.lower"] == pytest.approx(0.05)
    assert tags["decision"] == "PROMOTE" and "depth lift" in tags["decision.reasons"]
    assert tags["registered_model"] == "character-chat version 1" and run.info.status == "FINISHED"

    client = mlflow.MlflowClient(server)
    (version,) = client.search_model_versions("name = 'character-chat'")
    assert version.run_id == run.info.run_id and version.source == f"runs:/{run.info.run_id}/model"
    assert {f.path for f in client.list_artifacts(run.info.run_id, "model")} == {"model/config.json",
                                                                                 "model/model.safetensors"}


def test_an_unreachable_server_never_stops_a_generation():
    spec = MlflowTracking(tracking_uri=f"http://127.0.0.1:{_free_port()}", experiment="x")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    notes = record(spec, "gen1", None, FlywheelGenerationStatus(phase="Promoted"), registered_model="chat")
    assert len(notes) == 1 and notes[0].startswith("tracking: could not log to MLflow at http://127.0.0.1:")
