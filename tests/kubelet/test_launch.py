"""The Jobs the operator renders for a scaled-down gen15 run, as rendered, in every launch shape.

examples/gen15.yaml shrunk to CPU size (a tiny random Llama, a synthetic log, one pointwise reward model of two
steps, the artifact store in a temp directory) goes through the real planner and manifest builders; the
process kubelet (tests/kubelet/process_kubelet.py) runs each pod's command and env as local processes, with
host names resolving only through the rendered headless Services. Curate runs as one process; the reward
stage trains under torchrun with a real gloo rendezvous, 1 node × 2 processes and 2 nodes × 1 process, and
its result reaches the planner through the pods' termination messages, as the backend reads them.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from flywheel_operator.api import FlywheelGeneration
from flywheel_operator.kube import manifests
from flywheel_operator.kube.backend import result_from_pods
from flywheel_operator.planner import JobObservation, Observed, ParentObservation, StartStage, plan
from flywheel_trainer.synthetic import synthetic_records, write_jsonl

from tests.kubelet.process_kubelet import JobRun, ProcessKubelet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 23, tzinfo=UTC)
JOB_TIMEOUT = 240.0
"""Seconds a Job may run here before the kubelet fails it (the Job's activeDeadlineSeconds is longer)."""


def scaled_down_gen15(root: Path, *, nodes: int, gpus_per_node: int, storage: Path) -> FlywheelGeneration:
    """examples/gen15.yaml with CPU-sized data, model and steps, and the given launch shape."""
    manifest = yaml.safe_load((ROOT / "examples" / "gen15.yaml").read_text())
    manifest["metadata"]["uid"] = "uid-gen15"
    spec = manifest["spec"]
    spec["data"] = {"userTraffic": {"uri": str(root / "logs" / "user.jsonl")}}
    spec["stages"]["rewardModels"] = [{"name": "pointwise", "kind": "pointwise", "maxSteps": 2, "batchSize": 4}]
    resources = spec["resources"]
    resources.update(deepspeedStage=0, storage={"uri": str(storage)}, activeDeadline="10m")
    resources["stages"]["reward"] = {"nodes": nodes, "gpusPerNode": gpus_per_node}  # the launch shape
    resources.pop("queueName")  # Kueue would unsuspend the Job; nothing admits it here
    resources["hub"] = {"offline": True}  # no network here: no Hub token, no Hub cache claim
    return FlywheelGeneration.model_validate(manifest)


def image_env() -> dict[str, str]:
    """What the trainer image provides: the interpreter and packages, one thread per process (2-core CI)."""
    keep = ("PATH", "PYTHONPATH", "HOME", "LANG", "VIRTUAL_ENV")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")  # every pod shares this machine's loopback
    return env


def start_stage(gen: FlywheelGeneration, observed: Observed, stage: str) -> tuple[FlywheelGeneration, StartStage]:
    result = plan(gen, observed)
    (action,) = [a for a in result.actions if isinstance(a, StartStage) and a.stage == stage]
    return gen.model_copy(update={"status": result.status.to_wire()}), action


def run_children(gen: FlywheelGeneration, action: StartStage, root: Path) -> tuple[list[dict[str, Any]], JobRun]:
    objects = [body for _, body in manifests.children(gen, action)]
    for body in objects:
        kubernetes_validate.validate(body, "1.30", strict=True)
    run = ProcessKubelet(objects, root, image_env()).run_job(action.child, gen.metadata.namespace,
                                                             timeout=JOB_TIMEOUT)
    return objects, run


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Observed, dict[str, Any]]:
    """A tiny random parent policy and log, and gen15's curate stage run through the kubelet."""
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("kubelet")
    records = synthetic_records(160)
    write_jsonl(records, root / "logs" / "user.jsonl")
    texts = [m["content"] for r in records for m in r["messages"]]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    policy = root / "gen14-policy"
    tiny_llama(tokenizer, hidden_size=32, num_layers=1).save_pretrained(policy)
    tokenizer.save_pretrained(policy)

    gen = scaled_down_gen15(root, nodes=1, gpus_per_node=1, storage=root / "artifacts")
    parent = ParentObservation(name="gen14", phase="Promoted", promoted_policy=str(policy))
    gen, curate = start_stage(gen, Observed(now=NOW, parent=parent), "curate")
    objects, run = run_children(gen, curate, root)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"], "curate is one pod: no Service"
    assert run.state == "Complete", run.logs()
    result = result_from_pods([p.body for p in run.pods])
    assert result is not None and result.stage == "curate" and result.metrics["world_size"] == 1
    jobs = {curate.child: JobObservation(name=curate.child, state="Succeeded", finished_at=NOW, result=result)}
    return root, Observed(now=NOW, parent=parent, jobs=jobs), gen.status or {}


@pytest.mark.parametrize(("nodes", "gpus_per_node"), [(1, 2), (2, 1)], ids=["1node-x2proc", "2nodes-x1proc"])
def test_reward_stage_trains_under_torchrun_in_each_launch_shape(
    curated: tuple[Path, Observed, dict[str, Any]], nodes: int, gpus_per_node: int
) -> None:
    root, observed, status = curated
    shape = root / f"shape-{nodes}x{gpus_per_node}"
    gen = scaled_down_gen15(root, nodes=nodes, gpus_per_node=gpus_per_node, storage=shape / "artifacts")
    gen = gen.model_copy(update={"status": status})
    gen, reward = start_stage(gen, observed, "reward-pointwise")
    objects, run = run_children(gen, reward, shape)
    kinds = [o["kind"] for o in objects]
    assert kinds == (["ConfigMap", "Service", "Job"] if nodes > 1 else ["ConfigMap", "Job"])
    assert run.state == "Complete", run.logs()
    assert len(run.pods) == nodes and all(p.exit_code == 0 for p in run.pods)
    result = result_from_pods([p.body for p in run.pods])
    assert result is not None and result.stage == "reward", run.logs()
    assert result.metrics["world_size"] == nodes * gpus_per_node  # the ranks formed one process group
    assert result.metrics["steps"] == 2
    assert result.artifacts["model"].startswith(str(shape / "artifacts"))
    assert Path(result.artifacts["model"], "config.json").is_file()
    # Only node 0 publishes; the other nodes succeed without a result of their own.
    assert [p.index for p in run.pods if p.message.startswith("{")] == [0]
