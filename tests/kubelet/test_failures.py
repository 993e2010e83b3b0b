"""Failure semantics of the rendered stage Jobs, run by the process kubelet (issue 24, item 5).

A preemption or node drain evicts a stage pod with a `DisruptionTarget` condition: the Job's podFailurePolicy
ignores it, the Job controller replaces the pod, and the stage succeeds in its first attempt. A stage that exits 2
(a StageError: here a traffic log that does not exist) fails its Job at once, and the planner does not retry it
although `retry.maxAttempts` is 3. Both through the real planner, manifest builders and backend observation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.kube import manifests
from flywheel_operator.kube.backend import job_observation, result_from_pods
from flywheel_operator.planner import Observed, ParentObservation, StartStage, plan
from flywheel_trainer.synthetic import synthetic_records, write_jsonl

from tests.kubelet.process_kubelet import ProcessKubelet
from tests.kubelet.test_launch import JOB_TIMEOUT, NOW, image_env, run_children, scaled_down_gen15, start_stage

pytestmark = pytest.mark.slow
PARENT = ParentObservation(name="gen14", phase="Promoted", promoted_policy="/models/gen14")


def test_an_evicted_pod_is_replaced_and_costs_no_attempt(tmp_path: Path) -> None:
    write_jsonl(synthetic_records(40), tmp_path / "logs" / "user.jsonl")
    gen = scaled_down_gen15(tmp_path, nodes=1, gpus_per_node=1, storage=tmp_path / "artifacts")
    gen, curate = start_stage(gen, Observed(now=NOW, parent=PARENT), "curate")
    objects = [body for _, body in manifests.children(gen, curate)]
    run = ProcessKubelet(objects, tmp_path / "kubelet", image_env()).run_job(
        curate.child, gen.metadata.namespace, timeout=JOB_TIMEOUT, evict={0: 1})
    assert run.state == "Complete", run.logs()
    first, second = run.pods
    assert first.disrupted and first.body["status"]["conditions"][0]["type"] == "DisruptionTarget"
    assert first.exit_code != 0 and second.exit_code == 0 and not second.disrupted
    observation = job_observation(run.body(gen.metadata.namespace), result_from_pods([p.body for p in run.pods]))
    assert observation.state == "Succeeded" and observation.result is not None
    result = plan(gen, Observed(now=NOW, parent=PARENT, jobs={curate.child: observation}))
    (record,) = [r for r in result.status.stages if r.name == "curate"]
    assert (record.state, record.attempts) == ("Succeeded", 1)
    assert not any(isinstance(a, StartStage) and a.stage == "curate" for a in result.actions)


def test_a_permanent_stage_error_fails_the_job_at_once_and_is_tried_once(tmp_path: Path) -> None:
    gen = scaled_down_gen15(tmp_path, nodes=1, gpus_per_node=1, storage=tmp_path / "artifacts")
    assert gen.spec.retry.max_attempts == 3
    gen, curate = start_stage(gen, Observed(now=NOW, parent=PARENT), "curate")  # its log was never written
    _, run = run_children(gen, curate, tmp_path / "kubelet")
    assert run.state == "Failed" and run.reason == "PodFailurePolicy", run.logs()
    assert [p.exit_code for p in run.pods] == [2]  # not replaced: FailJob
    assert "does not exist" in run.pods[0].message  # the StageError, as the pod's termination message
    observation = job_observation(run.body(gen.metadata.namespace))
    assert observation.state == "Failed" and observation.permanent
    result = plan(gen, Observed(now=NOW, parent=PARENT, jobs={curate.child: observation}))
    status = FlywheelGenerationStatus.model_validate(result.status.to_wire())
    (record,) = [r for r in status.stages if r.name == "curate"]
    assert (record.state, record.attempts) == ("Failed", 1)
    assert status.phase == "Failed"
    assert not any(isinstance(a, StartStage) for a in result.actions)
