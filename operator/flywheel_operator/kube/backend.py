"""KubernetesBackend: observes a generation's world (Jobs, their results, the canary, the parent, Prometheus) and
carries out the planner's actions. It decides nothing.

Results travel in the stage pod's termination message (see kube/termination.py): once a Job has succeeded, the
backend reads `status.containerStatuses[stage].state.terminated.message` of its pod; when the pods are gone, it reads
the `result.json` the stage published under its output directory. A generation that ends stops its running Jobs.
Every action is idempotent: children have deterministic names, so a second create answers 409 and is taken as done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api import (
    TERMINAL_PHASES,
    FlywheelGeneration,
    FlywheelGenerationStatus,
    OnlineReading,
    StageResult,
)
from flywheel_operator.kube import canary, manifests, revert
from flywheel_operator.kube.client import ApiError, KubeClient, resource_path
from flywheel_operator.kube.termination import parse_message
from flywheel_operator.kube.views import WatchedState
from flywheel_operator.planner import (
    Action,
    DeployCanary,
    JobObservation,
    Observed,
    ParentObservation,
    PromoteCanary,
    RollBackCanary,
    StartStage,
)
from flywheel_operator.planner.core import deploy_action
from flywheel_operator.planner.pipeline import stage_kind, stage_output_dir

log = logging.getLogger(__name__)

PERMANENT_FAILURE_REASON = "PodFailurePolicy"
"""The Job's Failed condition reason when a podFailurePolicy FailJob rule matched (a stage that exited 2)."""

OnlineReader = Callable[[FlywheelGeneration, datetime], Awaitable[OnlineReading]]
"""Reads the per-arm statistics of a generation's A/B test at `now` ("no data" is a reading with an error)."""


async def prometheus_reader(generation: FlywheelGeneration, now: datetime) -> OnlineReading:
    """The gate's reader (PromQL, or SQL with promotion.source.sql; both blocking) in a worker thread; with the
    canary's revisions known, it also reads KServe's serving metrics for the hard SRE guardrails (issue 25)."""
    from flywheel_operator.gate.readers import frozen_promotion, reader_for, serving_revisions

    canary = (generation.status or {}).get("canary") or {}
    revisions = serving_revisions(canary.get("mode", ""), canary.get("revisions") or {})
    reader = reader_for(frozen_promotion(generation.spec.promotion, generation.status))  # the frozen plan's queries
    return await asyncio.to_thread(
        reader.read,
        generation=generation.metadata.name,
        namespace=generation.metadata.namespace or "",
        now=now,
        revisions=revisions,
    )


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def job_observation(job: dict[str, Any], result: StageResult | None = None) -> JobObservation:
    """A batch/v1 Job as the planner sees it: Pending (suspended or not started), Running, Succeeded, Failed."""
    status = job.get("status") or {}
    name = job["metadata"]["name"]
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    started = _parse_time(status.get("startTime"))
    if "Complete" in conditions:
        finished = _parse_time(status.get("completionTime") or conditions["Complete"].get("lastTransitionTime"))
        return JobObservation(name=name, state="Succeeded", started_at=started, finished_at=finished, result=result)
    if "Failed" in conditions:
        failed = conditions["Failed"]
        message = ": ".join(p for p in (failed.get("reason"), failed.get("message")) if p) or "the Job failed"
        # Only the FailJob rule on exit code 2 (manifests.pod_failure_policy) fails a stage Job with this reason.
        permanent = failed.get("reason") == PERMANENT_FAILURE_REASON
        return JobObservation(name=name, state="Failed", started_at=started,
                              finished_at=_parse_time(failed.get("lastTransitionTime")), message=message,
                              permanent=permanent)
    if (job.get("spec") or {}).get("suspend") or not (started or status.get("active")):
        return JobObservation(name=name, state="Pending")
    return JobObservation(name=name, state="Running", started_at=started)


def result_from_pods(pods: list[dict[str, Any]]) -> StageResult | None:
    """The result in the termination message of the stage container of a succeeded pod (index 0 first)."""

    def index(pod: dict[str, Any]) -> int:
        value = (pod.get("metadata", {}).get("annotations") or {}).get(manifests.COMPLETION_INDEX_ANNOTATION, "0")
        return int(value) if str(value).isdigit() else 0

    for pod in sorted(pods, key=index):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == manifests.CONTAINER and terminated.get("exitCode") == 0:
                result = parse_message(terminated.get("message"))
                if result is not None:
                    return result
    return None


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 patch turning `old` into `new`: changed keys, removed keys as null, lists whole."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


@dataclass
class KubernetesBackend:
    client: KubeClient
    read_online: OnlineReader = prometheus_reader
    view: WatchedState = field(default_factory=WatchedState)
    """The watch's indexes of generations and Jobs (kube/views.py); unbound (every read listed) without kopf."""
    index_reads: int = 0
    """Observations whose Jobs came from the index rather than a list (tests and debugging)."""
    _results: dict[tuple[str, str], StageResult] = field(default_factory=dict)
    """Results of succeeded Jobs already read (immutable once written)."""

    # ------------------------------------------------------------------------------------------ observe
    async def get_generation(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(resource_path("flywheelgenerations", namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def observe(self, generation: FlywheelGeneration, now: datetime) -> Observed:
        """Only what the planner will look at in the current phase, to keep API calls per generation low."""
        status = FlywheelGenerationStatus.model_validate(generation.status or {})
        if status.phase in TERMINAL_PHASES:
            return Observed(now=now)
        namespace, name = generation.metadata.namespace or "", generation.metadata.name
        jobs: dict[str, JobObservation] = {}
        if status.canary is None:  # the pipeline is not over: a plan may start, or absorb, any stage
            absorbed = {r.child for r in status.stages if r.state == "Succeeded"}
            for stage, observation in await self._jobs(namespace, name, status):
                if observation.state == "Succeeded" and observation.name not in absorbed:
                    result = await self._result(namespace, observation.name)
                    if result is None and stage:  # the pods are gone (PodGC, a scaled-down node): the store has it
                        result = await self._stored_result(generation, observation.name, stage)
                    observation = dataclasses.replace(observation, result=result)
                jobs[observation.name] = observation
        parent = None
        if status.policy is None and generation.spec.parent:
            parent = await self._parent(namespace, generation.spec.parent)
        seen_canary, holder = None, None
        passed = status.offline_gate is not None and status.offline_gate.passed
        if passed and (status.canary is None or status.canary.phase in ("Waiting", "Deploying")):
            isvc = await self._inference_service(namespace, generation.spec.canary.inference_service)
            holder = await self._other_holder(namespace, name, isvc)
            if status.canary is not None and status.canary.phase == "Deploying":
                if isvc is not None and holder is None and not canary.carries(isvc, status.canary.mode, name):
                    await self._deploy(generation, deploy_action(status.canary))  # a step KServe was not ready for
                seen_canary = canary.observe(isvc, mode=status.canary.mode, generation=name,
                                             traffic_percent=status.canary.traffic_percent)
        online = None
        if (
            status.canary is not None
            and status.canary.phase == "Ready"
            and status.online is not None
            and status.online.next_check_at is not None
            and now >= status.online.next_check_at
        ):
            online = await self.read_online(generation, now)
        return Observed(
            now=now, jobs=jobs, canary=seen_canary, online=online, parent=parent, canary_holder=holder
        )

    async def _jobs(
        self, namespace: str, name: str, status: FlywheelGenerationStatus
    ) -> list[tuple[str, JobObservation]]:
        """The generation's Jobs as (stage, observation without result): from the watch's index when it holds
        every Job the status says is running, else listed (the index is unbound, or a Job created a moment ago
        has not come through the watch yet; the planner would take it as lost after JOB_VISIBILITY_GRACE)."""
        indexed = self.view.jobs_of(namespace, name)
        if indexed is not None:
            seen = {entry.observation.name for entry in indexed}
            if all(r.child in seen for r in status.stages if r.state == "Running"):
                self.index_reads += 1
                return [(entry.stage, entry.observation) for entry in indexed]
        listed = await self.client.list(resource_path("jobs", namespace), {manifests.GENERATION_LABEL: name})
        return [(((job.get("metadata") or {}).get("labels") or {}).get(manifests.STAGE_LABEL, ""),
                 job_observation(job)) for job in listed]

    async def _result(self, namespace: str, child: str) -> StageResult | None:
        key = (namespace, child)
        if key not in self._results:
            pods = await self.client.list(resource_path("pods", namespace), {manifests.CHILD_LABEL: child})
            result = result_from_pods(pods)
            if result is None:
                return None
            self._results[key] = result
        return self._results[key]

    async def _stored_result(self, generation: FlywheelGeneration, child: str, stage: str) -> StageResult | None:
        """The result.json the stage published under its output directory (read through the storage seam with the
        operator's own credentials), when no pod of the Job carries it any more; None when unreadable."""
        key = (generation.metadata.namespace or "", child)
        if key in self._results:
            return self._results[key]
        uri = storage.join(stage_output_dir(generation, stage), storage.RESULT_MARKER)
        try:
            result = StageResult.model_validate_json(await asyncio.to_thread(storage.read_text, uri))
        except (storage.StorageError, FileNotFoundError, ValueError) as exc:
            log.warning("stage %s succeeded, its pods are gone and %s is unreadable: %s", child, uri, exc)
            return None
        if result.stage != stage_kind(stage):
            return None
        self._results[key] = result
        return result

    async def stop_active_jobs(self, namespace: str, name: str) -> list[str]:
        """Delete the generation's Jobs that are still running (siblings of a failed stage: the other reward
        models) once it has ended, so they stop holding GPUs; their pods go with them. Returns their names."""
        stopped = []
        for job in await self.client.list(resource_path("jobs", namespace), {manifests.GENERATION_LABEL: name}):
            if job_observation(job).state in ("Pending", "Running"):
                child = job["metadata"]["name"]
                try:
                    await self.client.delete(resource_path("jobs", namespace, child))
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                stopped.append(child)
        return stopped

    async def _parent(self, namespace: str, parent: str) -> ParentObservation | None:
        body = await self.get_generation(namespace, parent)
        if body is None:
            return None
        status = body.get("status") or {}
        return ParentObservation(name=parent, phase=status.get("phase") or "Pending",
                                 promoted_policy=status.get("promotedPolicy"))

    async def _inference_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(resource_path("inferenceservices", namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise
            return None

    async def _other_holder(self, namespace: str, name: str, isvc: dict[str, Any] | None) -> str | None:
        """Another generation whose canary `isvc` carries and that has not ended (a deleted or finished holder
        whose release was lost holds nothing)."""
        other = canary.holder(isvc)
        if other is None or other == name:
            return None
        body = await self.get_generation(namespace, other)
        if body is None or (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return None
        return other

    # ---------------------------------------------------------------------------------------------- act
    async def act(self, generation: FlywheelGeneration, action: Action) -> None:
        namespace, name = generation.metadata.namespace or "", generation.metadata.name
        if isinstance(action, StartStage):
            for plural, body in manifests.children(generation, action):
                await self._create(resource_path(plural, namespace), body)
        elif isinstance(action, DeployCanary):
            await self._deploy(generation, action)
        elif isinstance(action, PromoteCanary | RollBackCanary):
            await self._end_canary(generation, action)
            await revert.release(self.client, namespace, name)  # the canary has ended: deleting needs nothing more

    async def _end_canary(self, generation: FlywheelGeneration, action: PromoteCanary | RollBackCanary) -> None:
        namespace, name = generation.metadata.namespace or "", generation.metadata.name
        storage = generation.spec.resources.storage
        path = resource_path("inferenceservices", namespace, action.inference_service)
        isvc = await self._inference_service(namespace, action.inference_service)
        if isvc is None:
            log.warning("InferenceService %s/%s is gone; nothing to %s", namespace, action.inference_service,
                        type(action).__name__)
            return
        if await self._other_holder(namespace, name, isvc) is not None:
            return  # never deployed here: the canary on it is another generation's
        serving = canary.serving_of(generation.spec)
        patch = (
            canary.promote_patch(action, generation=name, storage=storage, serving=serving, isvc=isvc)
            if isinstance(action, PromoteCanary)
            else canary.rollback_patch(action, storage=storage, serving=serving, isvc=isvc)
        )
        await self.client.patch(path, patch)

    async def _deploy(self, generation: FlywheelGeneration, action: DeployCanary) -> None:
        """Create the InferenceService serving the parent if there is none; add the candidate once KServe can
        split without handing it all traffic (Knative: after the parent's revision rolled out) and only while no
        other live generation's canary is on it."""
        namespace, name = generation.metadata.namespace or "", generation.metadata.name
        storage = generation.spec.resources.storage
        isvc = await self._inference_service(namespace, action.inference_service)
        if isvc is None:
            if not await revert.hold(self.client, generation):  # the finalizer first; being deleted: no canary
                return
            body = canary.new_inference_service(action, generation=name, namespace=namespace, storage=storage,
                                                serving=canary.serving_of(generation.spec))
            await self._create(resource_path("inferenceservices", namespace), body)
            return
        if await self._other_holder(namespace, name, isvc) is not None:
            return  # the planner sees the holder and waits
        if canary.ready_for_candidate(isvc, action.mode):
            if not await revert.hold(self.client, generation):
                return
            path = resource_path("inferenceservices", namespace, action.inference_service)
            patch = canary.deploy_patch(action, generation=name, storage=storage,
                                        serving=canary.serving_of(generation.spec), isvc=isvc)
            version = (isvc.get("metadata") or {}).get("resourceVersion")
            if version:  # two generations claiming the service at once: the API server answers the later one 409
                patch["metadata"]["resourceVersion"] = version
            await self.client.patch(path, patch)

    async def _create(self, path: str, body: dict[str, Any]) -> None:
        try:
            await self.client.create(path, body)
        except ApiError as exc:
            if exc.status != 409:  # AlreadyExists: created by an earlier pass (deterministic names)
                raise

    async def write_status(
        self, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        """Patch the status from `old` to `new`; returns the status the API server stored (`new` if its answer
        carries none)."""
        path = resource_path("flywheelgenerations", namespace, name, "status")
        stored = await self.client.patch(path, {"status": merge_patch(old, new)})
        status = stored.get("status") if isinstance(stored, dict) else None
        return status if isinstance(status, dict) else new
