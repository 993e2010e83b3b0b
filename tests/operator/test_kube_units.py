"""Pure pieces of the Kubernetes side: KServe bodies and readiness, Job states, results, merge patches."""

from __future__ import annotations

from typing import Any

import pytest
from flywheel_operator.api import ServingResources, StageResult, StorageSpec
from flywheel_operator.kube import canary
from flywheel_operator.kube.backend import job_observation, merge_patch, result_from_pods
from flywheel_operator.kube.client import ApiError, matches, selector
from flywheel_operator.kube.termination import MESSAGE_LIMIT, compact_result, main, parse_message
from flywheel_operator.planner import DeployCanary, PromoteCanary, RollBackCanary
from hypothesis import given
from hypothesis import strategies as st

from tests.operator import upstream
from tests.planner.harness import result_for

PVC = StorageSpec(pvc="flywheel-artifacts")
MODEL = {"modelFormat": {"name": "characterflywheel-chat"}, "runtime": "characterflywheel-chat"}
"""spec.predictor.model: KServe's webhook refuses a `name` there; a canary entry's model must have one (its CRD)."""
CANARY_MODEL = {"name": "kserve-container", **MODEL}


def deploy(mode: str) -> DeployCanary:
    return DeployCanary(inference_service="chat", mode=mode, traffic_percent=10,  # type: ignore[arg-type]
                        candidate_policy="/artifacts/gen2/rl/model", control_policy="org/base-model")


def test_storage_uri() -> None:
    assert canary.storage_uri("/artifacts/gen2/rl/model", PVC) == "pvc://flywheel-artifacts/gen2/rl/model"
    assert canary.storage_uri("s3://b/m", PVC) == "s3://b/m"
    assert canary.storage_uri("org/base-model", PVC) == "hf://org/base-model"


def test_knative_bodies() -> None:
    patch = canary.deploy_patch(deploy("knative"), generation="gen2", storage=PVC)
    assert patch == {
        "metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Knative",
                                     "serving.kserve.io/enable-tag-routing": "true",
                                     "characterflywheel.io/canary-of": "gen2"}},
        "spec": {"predictor": {"canaryTrafficPercent": 10,
                               "model": {**MODEL, "storageUri": "pvc://flywheel-artifacts/gen2/rl/model"}}}}
    promote = PromoteCanary(inference_service="chat", mode="knative", candidate_policy="x")
    assert canary.promote_patch(promote, generation="gen2", storage=PVC) == {
        "metadata": {"annotations": {"characterflywheel.io/canary-of": None}},
        "spec": {"predictor": {"canaryTrafficPercent": None}}}


def test_a_knative_rollback_takes_the_rejected_model_off_and_the_next_candidate_restores_replicas() -> None:
    """Item 12 of issue 24: the parent's model goes back on the predictor (the candidate's revision loses its
    route) with least replicas 0 for that 0 % revision; the next candidate gets the saved least replicas back.
    At f9f8494 the rollback only set canaryTrafficPercent: 0, leaving the candidate as the latest revision."""
    isvc = {"metadata": {"annotations": {}}, "spec": {"predictor": {"minReplicas": 2, "canaryTrafficPercent": 10,
            "model": {**MODEL, "storageUri": "pvc://flywheel-artifacts/gen2/rl/model"}}}}
    back = RollBackCanary(inference_service="chat", mode="knative", control_policy="org/base-model")
    patch = canary.rollback_patch(back, storage=PVC, isvc=isvc)
    assert patch == {
        "metadata": {"annotations": {"characterflywheel.io/canary-of": None,
                                     canary.STABLE_REPLICAS_ANNOTATION: '{"minReplicas": 2}'}},
        "spec": {"predictor": {"canaryTrafficPercent": 0, "minReplicas": 0,
                               "model": {**MODEL, "storageUri": "hf://org/base-model"}}}}
    rolled_back = upstream.merge_patch(isvc, patch)
    again = canary.deploy_patch(deploy("knative"), generation="gen3", storage=PVC, isvc=rolled_back)
    assert again["spec"]["predictor"]["minReplicas"] == 2
    assert again["metadata"]["annotations"][canary.STABLE_REPLICAS_ANNOTATION] is None
    assert upstream.merge_patch(rolled_back, again)["spec"]["predictor"]["minReplicas"] == 2


def test_standard_bodies() -> None:
    isvc = {"spec": {"predictor": {"name": "control", "minReplicas": 2, "maxReplicas": 20, "model": MODEL}}}
    patch = canary.deploy_patch(deploy("standard"), generation="gen2", storage=PVC, isvc=isvc)
    assert patch["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert patch["spec"] == {
        "predictor": {"minReplicas": 4, "maxReplicas": 20},  # its own 2 + the canary's 2 (KServe takes 2 out)
        "canary": [{"trafficPercent": 10, "predictor": {
            "name": "candidate-gen2", "minReplicas": 2,  # 10 % of the stable predictor's peak, 20
            "model": {**CANARY_MODEL, "storageUri": "pvc://flywheel-artifacts/gen2/rl/model"}}}],
    }
    deployed = upstream.merge_patch(isvc, patch)
    promote = PromoteCanary(inference_service="chat", mode="standard", candidate_policy="/artifacts/gen2/rl/model")
    assert canary.promote_patch(promote, generation="gen2", storage=PVC, isvc=deployed)["spec"] == {
        "predictor": {"name": "candidate-gen2", "minReplicas": 2, "maxReplicas": 20,
                      "model": {**MODEL, "storageUri": "pvc://flywheel-artifacts/gen2/rl/model"}},
        "canary": None}
    back = RollBackCanary(inference_service="chat", mode="standard", control_policy="x")
    rolled_back = canary.rollback_patch(back, isvc=deployed)
    assert rolled_back["spec"] == {"canary": None, "predictor": {"minReplicas": 2, "maxReplicas": 20}}
    assert upstream.merge_patch(deployed, rolled_back)["spec"] == isvc["spec"]
    assert canary.rollback_patch(back)["spec"] == {"canary": None}  # nothing saved: replicas untouched


@pytest.mark.parametrize("mode", ["standard", "knative"])
def test_new_inference_service_serves_the_parent_with_resources(mode: str) -> None:
    serving = ServingResources(gpus=2, cpu="8", memory="64Gi")
    body = canary.new_inference_service(deploy(mode), generation="gen2", namespace="ml", storage=PVC, serving=serving)
    assert body["apiVersion"] == "serving.kserve.io/v1beta1" and body["kind"] == "InferenceService"
    assert body["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == canary.DEPLOYMENT_MODES[mode]
    assert body["spec"]["predictor"]["model"] == {
        **MODEL, "storageUri": "hf://org/base-model",
        "resources": {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
                      "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}}
    assert ("canary" in body["spec"]) == (mode == "standard"), "Knative: the candidate joins after the rollout"


def test_observe_standard_publishes_each_arm_service() -> None:
    isvc: dict[str, Any] = {"metadata": {"name": "chat", "namespace": "ml"}, "spec": {"predictor": {"name": "control"}},
                            "status": {
        "canaryStatuses": [{"name": "candidate-gen2", "ready": False, "trafficPercent": 10}],
        "conditions": [{"type": "CanaryReady", "status": "False", "message": "pulling image"}]}}
    seen = canary.observe(isvc, mode="standard", generation="gen2", traffic_percent=10)
    assert not seen.ready and seen.message == "pulling image"
    isvc["status"]["canaryStatuses"][0]["ready"] = True
    seen = canary.observe(isvc, mode="standard", generation="gen2", traffic_percent=10)
    assert seen.ready and seen.traffic_percent == 10
    assert seen.revisions == {"predictor": "control", "canary": "candidate-gen2"}
    assert seen.endpoints == {"control": "http://chat-control-predictor.ml.svc.cluster.local",
                              "treatment": "http://chat-candidate-gen2-predictor.ml.svc.cluster.local"}
    assert not canary.observe(None, mode="standard", generation="gen2", traffic_percent=10).ready


def test_observe_knative_needs_the_split_on_a_ready_latest_revision_and_tag_urls() -> None:
    component = {"latestCreatedRevision": "r2", "latestReadyRevision": "r1", "previousRolledoutRevision": "r1",
                 "traffic": [{"revisionName": "r1", "latestRevision": True, "percent": 100}]}
    isvc: dict[str, Any] = {"metadata": {"generation": 2}, "status": {
        "observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}],
        "components": {"predictor": component}}}
    assert not canary.observe(isvc, mode="knative", generation="g", traffic_percent=10).ready
    latest = {"revisionName": "r2", "latestRevision": True, "percent": 10, "tag": "latest"}
    prev = {"revisionName": "r1", "latestRevision": False, "percent": 90, "tag": "prev"}
    component.update(latestReadyRevision="r2", traffic=[latest, prev])
    seen = canary.observe(isvc, mode="knative", generation="g", traffic_percent=10)
    assert not seen.ready and "enable-tag-routing" in (seen.message or ""), "no per-arm URL, no sticky arms"
    latest["url"], prev["url"] = "http://latest-chat.ml", "http://prev-chat.ml"
    seen = canary.observe(isvc, mode="knative", generation="g", traffic_percent=10)
    assert seen.ready and seen.traffic_percent == 10 and seen.revisions["previousRolledoutRevision"] == "r1"
    assert seen.endpoints == {"treatment": "http://latest-chat.ml", "control": "http://prev-chat.ml"}
    isvc["metadata"]["generation"] = 3  # KServe has not caught up with a newer spec
    assert not canary.observe(isvc, mode="knative", generation="g", traffic_percent=10).ready


def test_knative_candidate_waits_for_the_parent_rollout() -> None:
    """KServe splits only once a revision has rolled out; before that the candidate would take 100 %."""
    isvc: dict[str, Any] = {"metadata": {"generation": 1}, "status": {}}
    assert not canary.ready_for_candidate(isvc, "knative")
    isvc["status"] = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}],
                      "components": {"predictor": {"latestRolledoutRevision": "chat-predictor-00001"}}}
    assert canary.ready_for_candidate(isvc, "knative")
    assert canary.ready_for_candidate({}, "standard")


@pytest.mark.parametrize(("job", "state"), [
    ({"spec": {"suspend": True}, "status": {}}, "Pending"),
    ({"spec": {}, "status": {}}, "Pending"),
    ({"spec": {}, "status": {"startTime": "2026-11-23T10:00:00Z", "active": 1}}, "Running"),
    ({"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}],
                             "completionTime": "2026-11-23T11:00:00Z"}}, "Succeeded"),
    ({"spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                             "message": "too long"}]}}, "Failed"),
])
def test_job_states(job: dict[str, Any], state: str) -> None:
    seen = job_observation({"metadata": {"name": "j"}, **job})
    assert seen.state == state
    if state == "Failed":
        assert seen.message == "DeadlineExceeded: too long"


def pod(message: str | None, exit_code: int = 0, index: str = "0") -> dict[str, Any]:
    terminated = {"exitCode": exit_code, **({"message": message} if message is not None else {})}
    return {"metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": index}},
            "status": {"containerStatuses": [{"name": "stage", "state": {"terminated": terminated}}]}}


def test_result_from_pods_prefers_a_successful_message() -> None:
    result = result_for("eval")
    message = compact_result(result)
    assert result_from_pods([pod(None), pod(message, exit_code=1, index="1")]) is None
    read = result_from_pods([pod("garbage", index="1"), pod(message, index="2")])
    assert read is not None and read.details["offline_metrics"] == result.details["offline_metrics"]


def test_compact_result_drops_what_the_planner_does_not_read_and_enforces_the_limit() -> None:
    result = result_for("eval").model_copy(update={"input_digests": {"curate": "sha256:x"},
                                                   "details": {**result_for("eval").details, "big": "x" * 9000}})
    parsed = parse_message(compact_result(result))
    assert parsed is not None and parsed.input_digests == {} and set(parsed.details) == {"offline_metrics"}
    huge = StageResult(stage="sft", metrics={f"m{i}": float(i) for i in range(400)})
    with pytest.raises(ValueError, match=str(MESSAGE_LIMIT)):
        compact_result(huge)
    assert parse_message(None) is None and parse_message("OOMKilled") is None


def test_termination_program_copies_the_result(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text(result_for("sft").model_dump_json())
    config = tmp_path / "stage.yaml"
    config.write_text(f"stage: sft\nname: sft\ngeneration: g\noutputDir: {out}\npolicy: p\n"
                      "data: {userTraffic: {uri: /logs}}\n")
    log = tmp_path / "termination-log"
    assert main([str(config), str(log)]) == 0
    assert parse_message(log.read_text()) == result_for("sft").model_copy(update={"input_digests": {}})
    (out / "result.json").unlink()
    assert main([str(config), str(log)]) == 1


def test_only_node_zero_publishes_and_other_nodes_succeed_without_a_result(tmp_path, monkeypatch) -> None:
    """Rank 0 (node 0) writes result.json, maybe after node 1 finished: node 1's writer must not fail the Job."""
    config = tmp_path / "stage.yaml"
    config.write_text(f"stage: sft\nname: sft\ngeneration: g\noutputDir: {tmp_path / 'out'}\npolicy: p\n"
                      "data: {userTraffic: {uri: /logs}}\n")
    log = tmp_path / "termination-log"
    monkeypatch.setenv("PET_NODE_RANK", "1")
    assert main([str(config), str(log)]) == 0
    assert parse_message(log.read_text()) is None
    monkeypatch.setenv("PET_NODE_RANK", "0")
    assert main([str(config), str(log)]) == 1  # node 0 without a result is a failed stage


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


no_nulls = st.dictionaries(st.text(max_size=3), json_values.filter(lambda v: v is not None), max_size=4)


@given(old=no_nulls, new=no_nulls)
def test_merge_patch_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    def strip(value: Any) -> Any:  # statuses never hold nulls (to_wire drops them)
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        return [strip(v) for v in value] if isinstance(value, list) else value

    old, new = strip(old), strip(new)
    assert apply_merge_patch(old, merge_patch(old, new)) == new


def test_client_helpers() -> None:
    assert selector({"b": "2", "a": "1"}) == "a=1,b=2"
    assert matches({"metadata": {"labels": {"a": "1", "b": "2"}}}, {"a": "1"})
    assert not matches({"metadata": {}}, {"a": "1"})
    assert ApiError(0, "Timeout", "").transient and ApiError(503, "x", "").transient
    assert ApiError(409, "Conflict", "").transient and not ApiError(403, "Forbidden", "").transient


def test_operator_command_line() -> None:
    from flywheel_operator.cli import build_parser

    args = build_parser().parse_args(["operator", "--namespace", "a", "--namespace", "b", "--standalone"])
    assert args.namespaces == ["a", "b"] and args.standalone and not args.all_namespaces
    args = build_parser().parse_args(["operator", "--all-namespaces", "--peering", "ha", "--metrics-port", "9000"])
    assert args.all_namespaces and args.peering == "ha" and args.metrics_port == 9000 and args.health_port == 8081
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--namespace", "a", "--all-namespaces"])


def test_operator_reconcile_limit_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from flywheel_operator.cli import build_parser

    args = build_parser().parse_args(["operator", "--namespace", "a"])
    assert args.max_concurrent_reconciles == 16
    args = build_parser().parse_args(["operator", "--namespace", "a", "--max-concurrent-reconciles", "4"])
    assert args.max_concurrent_reconciles == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--namespace", "a", "--max-concurrent-reconciles", "0"])
    assert "--max-concurrent-reconciles: must be at least 1, got 0" in capsys.readouterr().err
