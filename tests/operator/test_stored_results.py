"""A stage result survives its pod (issue 24, item 10), and a re-created generation never touches the outputs of
the promoted one it replaces (item 13): the backend reads `<outputDir>/result.json` through the storage seam
when no pod carries the termination message any more, and each generation instance has its own output prefix."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api import FlywheelGeneration, StageResult
from flywheel_operator.kube import manifests
from flywheel_operator.kube.backend import KubernetesBackend
from flywheel_operator.planner import Observed, StartStage, plan
from flywheel_operator.planner.pipeline import stage_output_dir

from tests.foundation.manifests import minimal

NOW = datetime(2026, 11, 23, tzinfo=UTC)


class FakeClient:
    """Lists the given Jobs (and no pods: PodGC removed them with their node)."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs

    async def list(self, path: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return self.jobs if path.endswith("/jobs") else []


def generation(root: Path, uid: str) -> FlywheelGeneration:
    body = minimal(resources={"storage": {"uri": str(root)}})
    body["metadata"].update(namespace="ml", uid=uid)
    return FlywheelGeneration.model_validate(body)


def succeeded(action: StartStage, gen: FlywheelGeneration) -> dict[str, Any]:
    job = manifests.job(gen, action)
    job["status"] = {"startTime": "2026-11-23T00:00:00Z", "completionTime": "2026-11-23T00:05:00Z",
                     "conditions": [{"type": "Complete", "status": "True"}]}
    return job


async def test_the_backend_reads_a_published_result_when_the_pods_are_gone(tmp_path: Path) -> None:
    gen = generation(tmp_path, "0f1e2d3c-aaaa")
    (curate,) = [a for a in plan(gen, Observed(now=NOW)).actions if isinstance(a, StartStage)]
    gen = gen.model_copy(update={"status": plan(gen, Observed(now=NOW)).status.to_wire()})
    result = StageResult(stage="curate", metrics={"pairs": 12.0}, artifacts={"pairs": "x"}, output_digest="sha256:1")
    storage.write_text(storage.join(curate.config.output_dir, "result.json"), json.dumps(result.to_wire()))
    backend = KubernetesBackend(FakeClient([succeeded(curate, gen)]))
    observed = await backend.observe(gen, NOW)
    seen = observed.jobs[curate.child]
    assert seen.state == "Succeeded" and seen.result == result


async def test_without_a_published_result_the_stage_is_not_taken_as_done(tmp_path: Path) -> None:
    gen = generation(tmp_path, "0f1e2d3c-aaaa")
    (curate,) = [a for a in plan(gen, Observed(now=NOW)).actions if isinstance(a, StartStage)]
    gen = gen.model_copy(update={"status": plan(gen, Observed(now=NOW)).status.to_wire()})
    observed = await KubernetesBackend(FakeClient([succeeded(curate, gen)])).observe(gen, NOW)
    assert observed.jobs[curate.child].result is None  # the planner counts a failed attempt, as before


def test_a_recreated_generation_publishes_beside_the_promoted_model_never_over_it(tmp_path: Path) -> None:
    promoted, recreated = generation(tmp_path, "5c0a3f4e-1111"), generation(tmp_path, "9b8a7c6d-2222")
    serving = Path(stage_output_dir(promoted, "rl")) / "model"
    serving.mkdir(parents=True)
    (serving / "weights.bin").write_bytes(b"serving")
    new_output = stage_output_dir(recreated, "rl")
    assert new_output != stage_output_dir(promoted, "rl")
    assert new_output == str(tmp_path / "gen2" / "9b8a7c6d" / "rl")
    staged = tmp_path / "staging"
    (staged / "model").mkdir(parents=True)
    (staged / "model" / "weights.bin").write_bytes(b"candidate")
    (staged / "result.json").write_text("{}")
    storage.publish_dir(staged, new_output)  # replaces what is at the prefix: here, nothing of the promoted one
    assert (serving / "weights.bin").read_bytes() == b"serving"
    assert (Path(new_output) / "model" / "weights.bin").read_bytes() == b"candidate"
