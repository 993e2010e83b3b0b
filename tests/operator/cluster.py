"""A Kubernetes API emulator (kmock) plus the parts of a cluster the operator relies on: a kubelet that finishes
Jobs (pod with a termination message, Job conditions) and KServe writing InferenceService status.

The world is changed through HTTP, like the real components do, so kopf's watches see every change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import attrs
import kmock
import kmock._internal.dsl as kmock_dsl
import kopf
from flywheel_operator.api import GROUP, KIND, PLURAL, VERSION, OnlineReading
from flywheel_operator.kube.backend import KubernetesBackend
from flywheel_operator.kube.client import KubeClient, resource_path
from flywheel_operator.kube.handlers import configure, register
from flywheel_operator.kube.manifests import CONTAINER, GENERATION_LABEL
from flywheel_operator.kube.policy import StagePolicy
from flywheel_operator.kube.reconciler import Reconciler
from flywheel_operator.kube.termination import compact_result
from flywheel_operator.metrics import OperatorMetrics
from flywheel_operator.planner import Event

from tests.operator import upstream
from tests.planner.harness import reading, result_for

NAMESPACE = "flywheel"
WORLD_AGENT = "test-world"


def _request_in_view(view: kmock_dsl.View, request: kmock.Request) -> bool:
    """`request in view` without iterating the view. kmock answers it by running the view's criteria over every
    request in its log until it meets this one, once per registered reaction for every request served: with
    hundreds of requests in flight most of the emulator's time went there. A plain filter chain contains the
    request exactly when every filter's criteria accept it and its root logged it; other views keep kmock's way."""
    while True:
        kind = type(view)
        if kind is kmock_dsl.Filter:
            if not view.criteria(request):
                return False
            view = view._source
        elif isinstance(view, kmock_dsl.Chained) and kind.__iter__ is kmock_dsl.Chained.__iter__:
            view = view._source  # a pass-through link (a priority)
        elif isinstance(view, kmock_dsl.Root):
            return any(logged is request for logged in view._requests)
        else:
            return _kmock_contains(view, request)


_kmock_contains = kmock_dsl.View.__contains__


def _contains(self: kmock_dsl.View, item: Any) -> bool:
    return _request_in_view(self, item) if isinstance(item, kmock.Request) else _kmock_contains(self, item)


kmock_dsl.View.__contains__ = _contains  # type: ignore[method-assign]

RESOURCES: dict[str, kmock.ResourceInfo] = {
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch", "get"}
    ),
    f"{GROUP}/{VERSION}/{PLURAL}": kmock.ResourceInfo(
        kind=KIND,
        namespaced=True,
        verbs={"list", "watch", "get", "patch", "create", "delete"},
        subresources={"status"},
    ),
    f"{GROUP}/{VERSION}/flywheels": kmock.ResourceInfo(
        kind="Flywheel", namespaced=True, verbs={"list", "watch", "get", "patch", "create"}, subresources={"status"}
    ),
    "batch/v1/jobs": kmock.ResourceInfo(
        kind="Job", namespaced=True, verbs={"list", "watch", "get", "create", "patch"}, subresources={"status"}
    ),
    "v1/pods": kmock.ResourceInfo(
        kind="Pod", namespaced=True, verbs={"list", "watch", "get", "create", "patch"}, subresources={"status"}
    ),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs={"list", "get", "create"}),
    "v1/services": kmock.ResourceInfo(kind="Service", namespaced=True, verbs={"list", "get", "create"}),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"list", "create"}),
    "serving.kserve.io/v1beta1/inferenceservices": kmock.ResourceInfo(
        kind="InferenceService", namespaced=True, verbs={"list", "get", "create", "patch"}, subresources={"status"}
    ),
}


@attrs.define(kw_only=True)
class FaultyEmulator(kmock.KubernetesEmulator):
    """The emulator, failing a share of the operator's non-watch requests: 409 (writes only), 500 or a response
    slower than the client waits. A 409 on POST is answered after the object was created (a retried create); the others
    change nothing (the 500s) or change it late (the timeouts). The test's own kubelet/KServe calls never fail."""

    fault_rate: float = 0.0
    delay: float = 0.0
    faults: dict[str, int] = attrs.field(factory=lambda: {"409": 0, "500": 0, "timeout": 0})
    requests: int = 0
    requests_by_kind: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """The operator's requests by method and resource ("PATCH flywheelgenerations/status"): what a generation costs."""
    generated: int = 0
    on_create: Callable[[kmock.Request], None] | None = None
    """Called after an operator's create was stored (the fault tests kill the operator there)."""
    on_stored: Callable[[kmock.Request, float], None] | None = None
    """Called after any create or update was stored, the world's included, with the `time.monotonic()` at which
    the request reached the emulator (kmock stores it right away, under its lock): the benchmark's clock."""
    on_request: Callable[[str, float], None] | None = None
    """Called with the kind (as in `requests_by_kind`) and the `time.monotonic()` of every operator request but
    watches: the benchmark's timeline of what the operator asked for while handoffs were slow."""
    watches: int = 0
    permissions: set[tuple[str, str, str]] = attrs.field(factory=set)
    """(API group, resource[/subresource], RBAC verb) of every operator request, kopf's included: what its Role
    must grant (tests/operator/test_rbac.py compares it with the chart's)."""
    validate: bool = True
    """Check the operator's writes as the API server and KServe's webhooks do (tests/operator/upstream.py)."""
    default_deployment_mode: str = "Knative"
    """KServe's `defaultDeploymentMode` (inferenceservice-config): Knative, where the webhook adds no annotation."""
    violations: list[str] = attrs.field(factory=list)
    """Writes the real cluster would have refused (answered 422 here); a test fails when any is left."""
    _random: random.Random = attrs.field(factory=random.Random)
    _index: dict[tuple[str | None, ...], dict[int, tuple[str | None, Any]]] = attrs.field(factory=dict, init=False)
    """(namespace, object) by id(object): of each resource, and of each resource and label key=value."""
    _indexed: int = attrs.field(default=0, init=False)

    async def _handle(self, request: kmock.Request) -> Any:
        arrived = time.monotonic()
        try:
            response = await self._serve(request)
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                self._reindex(request)
                if self.on_stored is not None:
                    self.on_stored(request, arrived)
            return response
        finally:
            self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        """Drop a served request from kmock's request log. kmock keeps every request for assertions and matches
        each new one by scanning that whole log (`request in reaction`), so a long run slows down quadratically;
        nothing here asserts on the log (the counters above are what the tests and the benchmark read), so only
        the requests in flight (open watches, mostly) stay in it."""
        for log in (self._requests, *(payload._requests for payload in self._payloads)):
            for index in range(len(log) - 1, -1, -1):
                if log[index] is request:
                    del log[index]
                    break

    async def _serve(self, request: kmock.Request) -> Any:
        watching = request.action == kmock.action.WATCH
        world = request.headers.get("User-Agent") == WORLD_AGENT
        if not watching and not world:
            kind = _request_kind(request)
            self.requests += 1
            self.requests_by_kind[kind] += 1
            if self.on_request is not None:
                self.on_request(kind, time.monotonic())
        self.watches += watching
        if not world:
            self.permissions |= rbac_permissions(request)
        if request.action == kmock.action.CREATE and request.resource is not None:
            self._name_generated(request)
            self._stamped(request)
        if watching or world:
            return await super()._handle(request)
        if self.validate:
            await self._admit(request)
        if request.resource is None or self._random.random() >= self.fault_rate:
            response = await super()._handle(request)
            if request.action == kmock.action.CREATE and self.on_create is not None:
                self.on_create(request)
            return response
        writing = request.action in (kmock.action.CREATE, kmock.action.UPDATE)
        fault = self._random.choice(["409", "500", "timeout"] if writing else ["500", "timeout"])
        self.faults[fault] += 1
        if fault == "500":
            raise kmock.KubernetesError(500, "InternalError", "injected fault")
        if fault == "timeout":
            await asyncio.sleep(self.delay)
            return await super()._handle(request)
        if request.action == kmock.action.CREATE:
            with contextlib.suppress(kmock.KubernetesError):
                await super()._handle(request)
        raise kmock.KubernetesError(409, "Conflict", "injected fault")

    async def _admit(self, request: kmock.Request) -> None:
        """Refuse (422) a create or merge patch of a foreign kind whose result breaks its upstream schema or KServe's
        webhook rules; apply KServe's defaulting to what is stored."""
        if (
            request.resource is None
            or request.subresource
            or request.action not in (kmock.action.CREATE, kmock.action.UPDATE)
            or request.resource.plural not in VALIDATED
            or not isinstance(request.data, dict)
        ):
            return
        async with self._lock:
            if request.action == kmock.action.CREATE:
                meta = request.data.get("metadata") or {}
                old = self._stored(request, request.namespace or meta.get("namespace"), meta.get("name"))
                old_raw = None if old is None or old.deleted else copy.deepcopy(old.raw)
                if old_raw is not None:
                    return  # AlreadyExists (409) is the API server's answer, not a validation
                new = copy.deepcopy(request.data)
            else:
                old = self._stored(request, request.namespace, request.name)
                if old is None or old.deleted:
                    return
                old_raw = copy.deepcopy(old.raw)
                new = upstream.merge_patch(old_raw, request.data)
        resource = request.resource
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        info = self.resources.get(f"{api_version}/{resource.plural}")
        new.setdefault("apiVersion", api_version)
        if info is not None:
            new.setdefault("kind", info.kind)  # the API server knows both from the URL (kopf's Events omit them)
        stored, problems = upstream.check_write(new, old_raw, default_mode=self.default_deployment_mode)
        if problems:
            name = request.name or (new.get("metadata") or {}).get("name")
            what = f"{request.method.value} {request.resource.plural}/{name}"
            self.violations.append(f"{what}: {'; '.join(problems)}")
            raise kmock.KubernetesError(422, "Invalid", f"{what} is invalid: {'; '.join(problems)}")
        annotations = (stored.get("metadata") or {}).get("annotations")
        if annotations != (new.get("metadata") or {}).get("annotations"):  # the defaulting webhook's mutation
            request.data.setdefault("metadata", {})["annotations"] = annotations

    # kmock finds the object of every request by scanning all stored objects, and serves every list whole,
    # ignoring labelSelector. With hundreds of generations that makes each request O(all objects) and each Job
    # list return every Job of every generation, unlike an API server. The reads below look the object up by its
    # key and filter lists by label as the API server does; the writes stay kmock's own.
    async def _serve_list(self, request: kmock.Request) -> Any:
        if request.resource is None or request.resource not in self.resources:
            return await super()._serve_list(request)
        selector = LabelSelector.parse(request.params.get("labelSelector"))
        async with self._lock:
            self._catch_up()
            kind = _kind(request.resource)
            candidates = self._index.get(kind if selector.first is None else (*kind, *selector.first), {})
            items = [
                obj.raw
                for namespace, obj in candidates.values()
                if (request.namespace is None or namespace == request.namespace)
                and not obj.deleted
                and selector.selects(obj.raw)
            ]
        return {"metadata": {"resourceVersion": "..."}, "items": items}

    def _add(self, kind: tuple[str | None, ...], namespace: str | None, obj: Any) -> None:
        entry = (namespace, obj)
        self._index.setdefault(kind, {})[id(obj)] = entry
        if not obj.deleted:
            for label in ((obj.raw.get("metadata") or {}).get("labels") or {}).items():
                self._index.setdefault((*kind, *label), {})[id(obj)] = entry

    def _catch_up(self) -> None:
        """Index the objects stored since the last call: kmock only ever adds keys (a deletion is a tombstone in
        the object's history), so they are the last ones; objects removed by hand start the index over."""
        stored = len(self._objects)
        if stored < self._indexed:
            self._index.clear()
            self._indexed = 0
        if stored > self._indexed:
            for (resource, namespace, _), obj in itertools.islice(self._objects.items(), self._indexed, None):
                self._add(_kind(resource), namespace, obj)
            self._indexed = stored

    def _reindex(self, request: kmock.Request) -> None:
        """A create or update may have changed an indexed object's labels: index it under the new ones too
        (entries under old labels stay; lists check every label again)."""
        if request.resource is None:
            return
        namespace, name = request.namespace, request.name
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.get("metadata") or {}
            namespace, name = namespace or meta.get("namespace"), name or meta.get("name")
        obj = self._stored(request, namespace, name)
        if obj is not None and id(obj) in self._index.get(_kind(request.resource), {}):
            self._add(_kind(request.resource), namespace, obj)

    def _stored(self, request: kmock.Request, namespace: str | None, name: str | None) -> Any:
        try:
            return self._objects[request.resource, namespace, name]
        except KeyError:
            return None

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> Any:
        meta = request.data.get("metadata", {})
        async with self._lock:
            obj = self._stored(request, request.namespace or meta.get("namespace"), request.name or meta.get("name"))
        assert obj is not None  # stored by KubernetesEmulator._handle before the fallback runs
        return obj.raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        async with self._lock:
            obj = self._stored(request, request.namespace, request.name)
        assert obj is not None  # patched by KubernetesEmulator._handle before the fallback runs
        return obj.last.raw

    def _stamped(self, request: kmock.Request) -> None:
        """What the API server sets on every created object: a uid and a creation time (owner references of what
        a Flywheel's generations create point at the uid)."""
        meta = request.data.setdefault("metadata", {})
        if not meta.get("uid"):
            self.generated += 1
            meta["uid"] = f"uid-{self.generated:06d}"
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def _name_generated(self, request: kmock.Request) -> None:
        """What the API server does for `metadata.generateName` (kopf's Events use it)."""
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            self.generated += 1
            meta["name"] = f"{meta['generateName']}{self.generated:06d}"


RBAC_VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "DELETE": "delete"}
OWNER_GROUPS = {KIND: (GROUP, PLURAL), "Flywheel": (GROUP, "flywheels")}


def rbac_permissions(request: kmock.Request) -> set[tuple[str, str, str]]:
    """The RBAC (group, resource, verb) a request needs, as the API server's authorizer derives it; a create with
    `blockOwnerDeletion` also needs `update` on the owner's `finalizers` (OwnerReferencesPermissionEnforcement)."""
    if request.resource is None or request.resource.plural is None or request.action is None:
        return set()  # API discovery (/api/v1, /apis): readable by every authenticated user
    verb = RBAC_VERBS.get(request.action.value) or ("update" if request.method == "PUT" else "patch")
    resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    needed = {(request.resource.group or "", resource, verb)}
    if request.action == kmock.action.CREATE and isinstance(request.data, dict):
        for owner in (request.data.get("metadata") or {}).get("ownerReferences") or []:
            if owner.get("blockOwnerDeletion") and owner.get("kind") in OWNER_GROUPS:
                group, plural = OWNER_GROUPS[owner["kind"]]
                needed.add((group, f"{plural}/finalizers", "update"))
    return needed
VALIDATED = {"jobs", "pods", "configmaps", "services", "events", "inferenceservices"}
"""Foreign kinds whose writes are checked against their upstream schema (our own CRD is tested on its own)."""


def _request_kind(request: kmock.Request) -> str:
    plural = request.resource.plural if request.resource is not None else request.url.path
    return f"{request.method} {plural}" + (f"/{request.subresource}" if request.subresource else "")


def _kind(resource: kmock.resource) -> tuple[str | None, ...]:
    return resource.group, resource.version, resource.plural


@dataclass(frozen=True)
class LabelSelector:
    """The API server's label filter for `k=v`, `k==v`, `k!=v`, `k` and `!k` terms. A set-based selector (`in`,
    `notin`) selects everything: clients filter again (as ours does)."""

    equal: tuple[tuple[str, str], ...] = ()
    unequal: tuple[tuple[str, str], ...] = ()
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or "(" in text:
            return cls()
        equal, unequal, present, absent = [], [], [], []
        for term in (t.strip() for t in text.split(",")):
            if "!=" in term:
                key, value = term.split("!=", 1)
                unequal.append((key.strip(), value.strip()))
            elif "=" in term:
                key, value = term.replace("==", "=").split("=", 1)
                equal.append((key.strip(), value.strip()))
            elif term.startswith("!"):
                absent.append(term[1:].strip())
            elif term:
                present.append(term)
        return cls(tuple(equal), tuple(unequal), tuple(present), tuple(absent))

    @property
    def first(self) -> tuple[str, str] | None:
        """A `k=v` term every selected object has (to look candidates up by)."""
        return self.equal[0] if self.equal else None

    def selects(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return (
            all(labels.get(k) == v for k, v in self.equal)
            and all(labels.get(k) != v for k, v in self.unequal)
            and all(k in labels for k in self.present)
            and not any(k in labels for k in self.absent)
        )


def generation_body(name: str, *, mode: str = "standard", parent: str | None = None, **spec: Any) -> dict[str, Any]:
    """A small generation with second-scale durations, so the canary can decide within a test."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {
            "generation": 2,
            "data": {"userTraffic": {"uri": "/artifacts/logs/user"}, "internalTraffic": {"uri": "/artifacts/logs/int"}},
            "stages": {
                "rewardModels": [{"name": "pointwise", "kind": "pointwise"}, {"name": "pairwise", "kind": "pairwise"}]
            },
            "resources": {"gpusPerNode": 1, "cpu": "2", "memory": "8Gi"},
            "retry": {"maxAttempts": 3, "backoff": "1s", "maxBackoff": "2s"},
            "canary": {
                "inferenceService": "chat",
                "mode": mode,
                "minDuration": "1s",
                "maxDuration": "60s",
                "checkInterval": "1s",
                "readyTimeout": "60s",
            },
        },
    }
    if parent is None:
        body["spec"]["basePolicy"] = "/artifacts/models/base"
    else:
        body["spec"]["parent"] = parent
    body["spec"].update(spec)
    return body


@dataclass
class Readings:
    """The Prometheus seam: a lift per generation, turned into per-arm sums (tests.planner.harness.reading)."""

    lift: dict[str, float] = field(default_factory=dict)
    calls: int = 0

    async def __call__(self, generation: Any, now: datetime) -> OnlineReading:
        self.calls += 1
        return reading(now, self.lift.get(generation.metadata.name, 0.0))


@dataclass
class Cluster:
    emulator: FaultyEmulator
    url: str
    api: KubeClient
    """The kubelet's and KServe's own client (not counted as operator traffic)."""

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        found = {}
        for (resource, _namespace, name), obj in list(self.emulator.objects.items()):
            if resource.plural == plural and not obj.deleted:
                found[name] = obj.raw
        return found

    def generation(self, name: str) -> dict[str, Any]:
        return self.objects(PLURAL)[name]

    def status(self, name: str) -> dict[str, Any]:
        return self.generation(name).get("status") or {}

    async def apply(self, body: dict[str, Any]) -> None:
        await self.api.create(resource_path(PLURAL, NAMESPACE), body)

    def jobs_of(self, generation: str) -> dict[str, dict[str, Any]]:
        return {
            n: j
            for n, j in self.objects("jobs").items()
            if (j["metadata"].get("labels") or {}).get(GENERATION_LABEL) == generation
        }

    async def finish_job(self, name: str, *, ok: bool = True, lift_offline: dict[str, Any] | None = None) -> None:
        """What the kubelet and the Job controller do when the stage pod exits."""
        job = await self.api.get(resource_path("jobs", NAMESPACE, name))
        labels = dict(job["spec"]["template"]["metadata"]["labels"])
        stage = labels["characterflywheel.io/stage"]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        terminated: dict[str, Any] = {"exitCode": 0 if ok else 1, "reason": "Completed" if ok else "Error"}
        if ok:
            result = result_for(stage, **(lift_offline or {}))
            generation = labels[GENERATION_LABEL]
            artifacts = {k: v.replace("/a/", f"/artifacts/{generation}/") for k, v in result.artifacts.items()}
            result = result.model_copy(update={"artifacts": artifacts})
            terminated["message"] = compact_result(result)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-pod", "namespace": NAMESPACE, "labels": {**labels, "job-name": name}},
            "status": {
                "phase": "Succeeded" if ok else "Failed",
                "containerStatuses": [{"name": CONTAINER, "state": {"terminated": terminated}}],
            },
        }
        with contextlib.suppress(Exception):
            await self.api.create(resource_path("pods", NAMESPACE), pod)
        condition = {
            "type": "Complete" if ok else "Failed",
            "status": "True",
            "lastTransitionTime": now,
            **({} if ok else {"reason": "BackoffLimitExceeded", "message": "Job has reached the limit"}),
        }
        status: dict[str, Any] = {"startTime": now, "conditions": [condition]}
        if ok:
            status.update(succeeded=1, completionTime=now)
        else:
            status.update(failed=1)
        await self.api.patch(resource_path("jobs", NAMESPACE, name, "status"), {"status": status})

    async def existing_inference_service(self, mode: str, name: str = "chat") -> None:
        """The production InferenceService serving the parent, as KServe leaves it."""
        predictor: dict[str, Any] = {
            "model": {"modelFormat": {"name": "huggingface"}, "storageUri": "pvc://flywheel-artifacts/models/base"}
        }
        deployment_mode = "Standard" if mode == "standard" else "Knative"
        status = {"conditions": [{"type": "Ready", "status": "True"}], "deploymentMode": deployment_mode}
        if mode == "standard":
            predictor["name"] = "control"
        body = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "annotations": {upstream.DEPLOYMENT_MODE: deployment_mode},
            },
            "spec": {"predictor": predictor},
        }
        await self.api.create(resource_path("inferenceservices", NAMESPACE), body)
        if mode != "standard":
            await self.kserve_rolls_out_parent(name)
        else:
            await self.api.patch(resource_path("inferenceservices", NAMESPACE, name, "status"), {"status": status})

    async def kserve_rolls_out_parent(self, name: str = "chat") -> None:
        """Knative: the InferenceService's first revision has rolled out and takes all traffic."""
        revision = f"{name}-predictor-00001"
        status = {
            "conditions": [{"type": "Ready", "status": "True"}],
            "deploymentMode": "Knative",
            "components": {
                "predictor": {
                    "latestCreatedRevision": revision,
                    "latestReadyRevision": revision,
                    "latestRolledoutRevision": revision,
                    "traffic": [{"revisionName": revision, "latestRevision": True, "percent": 100}],
                }
            },
        }
        await self.api.patch(resource_path("inferenceservices", NAMESPACE, name, "status"), {"status": status})

    async def kserve_rolls_out_canary(self, mode: str, generation: str, name: str = "chat") -> None:
        """KServe's status once the canary serves its share (Knative: tag URLs only with tag routing on)."""
        isvc = self.objects("inferenceservices")[name]
        if mode == "standard":
            canary = isvc["spec"]["canary"][0]
            status = {
                "deploymentMode": "Standard",
                "canaryStatuses": [
                    {"name": canary["predictor"]["name"], "ready": True, "trafficPercent": canary["trafficPercent"]}
                ],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "CanaryReady", "status": "True"}],
            }
        else:
            percent = isvc["spec"]["predictor"]["canaryTrafficPercent"]
            old, new = f"{name}-predictor-00001", f"{name}-predictor-00002"
            tagged = (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/enable-tag-routing") == "true"
            latest = {"revisionName": new, "latestRevision": True, "percent": percent, "tag": "latest"}
            previous = {"revisionName": old, "latestRevision": False, "percent": 100 - percent, "tag": "prev"}
            if tagged:
                latest["url"] = f"http://latest-{name}-predictor.{NAMESPACE}.example.com"
                previous["url"] = f"http://prev-{name}-predictor.{NAMESPACE}.example.com"
            status = {
                "deploymentMode": "Knative",
                "conditions": [{"type": "Ready", "status": "True"}],
                "components": {
                    "predictor": {
                        "latestCreatedRevision": new,
                        "latestReadyRevision": new,
                        "latestRolledoutRevision": old,
                        "previousRolledoutRevision": old,
                        "traffic": [latest, previous],
                    }
                },
            }
        await self.api.patch(resource_path("inferenceservices", NAMESPACE, name, "status"), {"status": status})


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    configure(settings)
    settings.scanning.disabled = True
    settings.peering.standalone = True
    settings.posting.enabled = True
    settings.posting.default_backoffs = [0.05, 0.1]
    settings.watching.server_timeout = 1
    settings.watching.client_timeout = 10
    settings.watching.reconnect_backoff = 0.05
    settings.networking.request_timeout = 2
    settings.networking.error_backoffs = [0.05, 0.1, 0.2, 0.4]
    settings.persistence.consistency_timeout = 0.5
    settings.batching.idle_timeout = 0.5
    settings.batching.exit_timeout = 0.5
    settings.batching.batch_window = 0.02
    return settings


@dataclass
class Operator:
    """The operator as a restartable kopf loop against the emulator, in its own thread and event loop (as in its
    own pod): stopping it never touches the emulator's server tasks."""

    cluster: Cluster
    readings: Readings
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    poll: float = 0.5
    """Short, because the emulator has no KServe to watch: canary readiness is noticed by polling."""
    client_timeout: float = 2.0
    settings: Callable[[], kopf.OperatorSettings] = field(default=lambda: operator_settings())
    policy: StagePolicy = field(default_factory=StagePolicy)
    events: list[tuple[str, Event]] = field(default_factory=list)
    starts: int = 0
    reconciler: Reconciler | None = None
    """The reconciler of the latest start (its views and counters: tests/operator/test_views.py)."""
    requests: int = 0
    """Requests made by the backends of every run so far (kopf's own are counted by the emulator)."""
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[None] | None = None
    _stop: threading.Event | None = None

    def _reconciler(self) -> Reconciler:
        client = KubeClient(server=self.cluster.url, timeout=self.client_timeout)
        backend = KubernetesBackend(client=client, read_online=self.readings)

        def remember(body: dict[str, Any], event: Event) -> None:
            self.events.append((body["metadata"]["name"], event))
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

        return Reconciler(backend=backend, metrics=self.metrics, post_event=remember, policy=self.policy)

    async def start(self) -> None:
        registry = kopf.OperatorRegistry()
        reconciler = self.reconciler = self._reconciler()
        url, timeout = self.cluster.url, self.client_timeout

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

        register(registry, reconciler, login=login, poll=self.poll)
        stop = self._stop = threading.Event()
        started = threading.Event()
        settings = self.settings()

        def main() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._task = loop.create_task(
                kopf.operator(
                    registry=registry, settings=settings, namespaces=[NAMESPACE], standalone=True, stop_flag=stop
                )
            )
            started.set()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(self._task)
            client = reconciler.backend.client
            client.timeout = timeout
            self.requests += client.requests
            with contextlib.suppress(BaseException):
                loop.run_until_complete(client.close())
            # kopf waits for the stop flag in a thread of this loop's executor; after an abrupt stop nobody sets
            # it, and the interpreter would wait for that thread at exit forever.
            stop.set()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            settings.execution.executor.shutdown(wait=False, cancel_futures=True)  # no idle threads at exit

        self._thread = threading.Thread(target=main, name=f"operator-{self.starts}", daemon=True)
        self._thread.start()
        await asyncio.to_thread(started.wait, 10)
        self.starts += 1

    async def stop(self, *, abrupt: bool = False) -> None:
        """Graceful (the stop flag) or abrupt (every task cancelled mid-flight, like a killed pod)."""
        assert self._thread is not None and self._stop is not None and self._loop is not None
        if not abrupt:
            self._stop.set()
            await asyncio.to_thread(self._thread.join, 1.0)  # kopf waits 5 s for daemons spawned while stopping
        if self._thread.is_alive():
            task = self._task
            assert task is not None
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(task.cancel)
        await asyncio.to_thread(self._thread.join, 30)
        assert not self._thread.is_alive(), "the operator did not stop within 30 s"
        self._thread = None

    async def restart(self, *, abrupt: bool = False) -> None:
        await self.stop(abrupt=abrupt)
        await self.start()


@contextlib.asynccontextmanager
async def running_cluster(
    *,
    fault_rate: float = 0.0,
    delay: float = 2.5,
    seed: int = 0,
    world_timeout: float = 10.0,
    allow_violations: bool = False,
) -> AsyncIterator[Cluster]:
    """The emulator on 127.0.0.1; unless `allow_violations`, a write the real cluster would refuse fails the test."""
    emulator = FaultyEmulator(fault_rate=0.0, delay=delay, random=random.Random(seed))
    async with emulator, kmock.Server(emulator) as server:
        for key, info in RESOURCES.items():
            emulator.resources[key] = info
        url = str(server.url).rstrip("/")
        api = KubeClient(server=url, timeout=world_timeout, user_agent=WORLD_AGENT)
        cluster = Cluster(emulator=emulator, url=url, api=api)
        emulator.fault_rate = fault_rate  # set after our own set-up, so only the run itself sees faults
        try:
            yield cluster
            assert allow_violations or not emulator.violations, "writes a real cluster refuses:\n" + "\n".join(
                emulator.violations
            )
        finally:
            emulator.fault_rate = 0.0
            await api.close()


async def eventually(check: Callable[[], Any], *, timeout: float = 30.0, step: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy (waits on the operator, asserts nothing about speed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s: {check}")
        await asyncio.sleep(step)


TERMINAL = ("Promoted", "RolledBack", "Failed")


@dataclass
class World:
    """The kubelet and KServe: finishes every new stage Job and rolls out every requested canary."""

    cluster: Cluster
    mode: str = "standard"
    failing: set[str] = field(default_factory=set)
    """Jobs (by name) whose pod fails instead of succeeding."""
    held: set[str] = field(default_factory=set)
    """Jobs (by name) whose pod keeps running (never finished here)."""
    finished: set[str] = field(default_factory=set)
    rolled_out: set[str] = field(default_factory=set)

    async def step(self, names: list[str]) -> None:
        for name in names:
            for job in sorted(self.cluster.jobs_of(name)):
                if job not in self.finished and job not in self.held:
                    self.finished.add(job)
                    await self.cluster.finish_job(job, ok=job not in self.failing)
            status = self.cluster.status(name)
            if status.get("phase") == "Canary" and name not in self.rolled_out:
                isvc = self.cluster.objects("inferenceservices").get(status["canary"]["inferenceService"])
                if isvc is not None and self.mode == "knative" and not isvc.get("status"):
                    await self.cluster.kserve_rolls_out_parent(isvc["metadata"]["name"])  # created by the operator
                elif isvc is not None and _canary_requested(isvc, self.mode, name):
                    self.rolled_out.add(name)
                    await self.cluster.kserve_rolls_out_canary(self.mode, name, isvc["metadata"]["name"])

    def done(self, names: list[str]) -> bool:
        return all(self.cluster.status(name).get("phase") in TERMINAL for name in names)

    async def run(self, names: list[str], *, timeout: float = 60.0) -> None:
        """Play the world until every generation is terminal."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.done(names):
            if asyncio.get_running_loop().time() > deadline:
                phases = {n: self.cluster.status(n).get("phase") for n in names}
                raise AssertionError(f"generations not terminal within {timeout}s: {phases}")
            await self.step(names)
            await asyncio.sleep(0.02)


def _canary_requested(isvc: dict[str, Any], mode: str, generation: str) -> bool:
    holder = ((isvc.get("metadata") or {}).get("annotations") or {}).get("characterflywheel.io/canary-of")
    if holder != generation:
        return False  # another generation's canary, or none requested yet
    spec = isvc.get("spec") or {}
    if mode == "standard":
        return bool(spec.get("canary"))
    return (spec.get("predictor") or {}).get("canaryTrafficPercent") is not None
