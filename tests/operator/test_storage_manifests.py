"""Stage Jobs on object storage: outputs go under the bucket prefix, credentials come from a referenced Secret
(envFrom) and the S3-compatible endpoint from the spec, never keys in the spec; no claim is mounted."""

from __future__ import annotations

from datetime import UTC, datetime

import kubernetes_validate
from flywheel_operator.kube import manifests
from flywheel_operator.planner import Observed, StartStage, plan

from tests.planner.harness import generation

S3 = {"uri": "s3://bucket/flywheel", "secretRef": "flywheel-s3", "endpointUrl": "http://minio.storage:9000"}


def _first_job(**storage: str) -> tuple[StartStage, dict]:
    gen = generation(resources={"storage": storage})
    gen.metadata.namespace = "ml"
    action = plan(gen, Observed(now=datetime(2026, 11, 23, tzinfo=UTC))).actions[0]
    assert isinstance(action, StartStage)
    return action, manifests.job(gen, action)


def test_object_store_jobs_write_under_the_prefix_with_credentials_from_the_secret() -> None:
    action, job = _first_job(**S3)
    assert action.config.output_dir == "s3://bucket/flywheel/gen2/uid-gen2/curate"
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLYWHEEL_OUTPUT_DIR"] == "s3://bucket/flywheel/gen2/uid-gen2/curate"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.storage:9000"
    assert "envFrom" not in container  # not every key of the Secret: only the named ones
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
                   and "secretKeyRef" in e["valueFrom"]}
    assert from_secret == {key: {"name": "flywheel-s3", "key": key, "optional": True}
                           for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                       "GOOGLE_APPLICATION_CREDENTIALS", "MLFLOW_TRACKING_TOKEN",
                                       "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "WANDB_API_KEY")}
    assert not any("KEY" in name and value for name, value in env.items())  # no key value in the spec
    assert all("persistentVolumeClaim" not in v for v in job["spec"]["template"]["spec"]["volumes"])
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_without_a_secret_the_pod_relies_on_workload_identity() -> None:
    _, job = _first_job(uri="gs://bucket/flywheel")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container
    assert "AWS_ENDPOINT_URL_S3" not in {e["name"] for e in container["env"]}
