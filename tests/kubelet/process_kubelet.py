"""A process kubelet: runs the pods of a rendered Job as local processes, with their real command and env.

The emulator tests check what the operator *creates*; this fixture checks that what it creates *runs*. It plays
the Job controller and the kubelet for one object set (the ConfigMaps, Services and Jobs the operator rendered):

- pods: one per completion (Indexed Jobs get the completion-index annotation, `JOB_COMPLETION_INDEX` and the
  host name `<job>-<index>`); a suspended Job has no pods;
- failures, as the Job controller counts them: the `podFailurePolicy` rules in order (`FailJob` on exit codes
  fails the Job at once with reason `PodFailurePolicy`; `Ignore` on a pod condition replaces the pod without
  counting it; `Count` and no match count), then `backoffLimit` (or `backoffLimitPerIndex` with
  `maxFailedIndexes` for an Indexed Job): a pod within the limit is replaced, otherwise the Job fails
  (`BackoffLimitExceeded` / `FailedIndexes`) and its other pods are stopped;
- evictions: `run_job(evict={index: n})` evicts the first n pods of that index (SIGTERM, then SIGKILL after the
  grace period) and gives them a `DisruptionTarget` condition, as a preemption or a node drain does;
- volumes: a ConfigMap becomes a directory of its keys, an emptyDir a fresh directory, a claim one directory
  shared by every pod (ReadWriteMany). There is no chroot, so a container path under a mount (in the command,
  the env or `terminationMessagePath`) is translated to its host directory;
- env: plain values, the downward API's `metadata.*` field references and `secretKeyRef` into a Secret of the
  object set (a missing Secret or key skips an `optional` one and fails the pod's start otherwise, as
  CreateContainerConfigError does); anything else is refused loudly;
- DNS: a pod's name `<job>-<index>.<subdomain>` (with or without `.<namespace>.svc.cluster.local`) resolves to
  127.0.0.1 only when the object set holds a headless Service of that name in the namespace whose selector
  matches the pod's labels, as cluster DNS does. Rendezvous addresses (`ADDRESS_VARIABLES`) are rewritten
  through that map; a name it does not hold is rewritten under the reserved `.invalid` domain (RFC 6761), so
  the program's own lookup fails as it would in the cluster;
- ports: all pods share this machine's network, so each Job's declared container ports are mapped to free local
  ports, and `PORT_VARIABLES` equal to a declared port are rewritten to it;
- the termination message: read from the pod's `terminationMessagePath` file into the pod's container status,
  where the operator's backend reads results (`result_from_pods`).

Resources, node selectors, tolerations and the security context are not enforced: there is one node.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
ADDRESS_VARIABLES = frozenset({"PET_MASTER_ADDR", "MASTER_ADDR", "PET_RDZV_ENDPOINT"})
"""Env variables that hold a host name (or host:port) the program resolves."""
PORT_VARIABLES = frozenset({"PET_MASTER_PORT", "MASTER_PORT"})
"""Env variables that hold a port some pod listens on."""
LOOPBACK = "127.0.0.1"
CLUSTER_DOMAIN = "cluster.local"


@dataclass
class PodRun:
    """One pod as the kubelet ran it: the object the backend would list, and its process output."""

    name: str
    index: int
    exit_code: int | None
    message: str
    log: str
    body: dict[str, Any] = field(default_factory=dict)
    disrupted: bool = False
    """Evicted with a DisruptionTarget condition."""
    attempt: int = 0
    """The serial number of the pod in its Job (replacements count up)."""


@dataclass
class JobRun:
    """A Job's outcome: `Complete` when every index succeeded, otherwise `Failed` with the controller's reason."""

    name: str
    state: str
    pods: list[PodRun]
    seconds: float
    reason: str = ""
    message: str = ""

    def body(self, namespace: str | None = None) -> dict[str, Any]:
        """The batch/v1 Job as the API server would show it once finished (what the backend observes)."""
        condition = {"type": self.state, "status": "True", "reason": self.reason, "message": self.message,
                     "lastTransitionTime": "2026-11-23T00:00:00Z"}
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": self.name, "namespace": namespace},
                "spec": {}, "status": {"startTime": "2026-11-23T00:00:00Z", "conditions": [condition],
                                       "failed": sum(p.exit_code != 0 for p in self.pods)}}

    def logs(self) -> str:
        return "\n".join(f"--- pod {p.name} exit {p.exit_code}\n{p.log[-6000:]}" for p in self.pods)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


class ProcessKubelet:
    """Runs the Jobs of one object set; `base_env` plays the image's environment (PATH, PYTHONPATH, …)."""

    def __init__(self, objects: list[dict[str, Any]], root: Path, base_env: dict[str, str]) -> None:
        self.objects = objects
        self.root = root
        self.base_env = base_env

    def _find(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        for body in self.objects:
            meta = body["metadata"]
            if body["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
                return body
        return None

    def resolves(self, host: str, namespace: str | None, pod_labels: dict[str, str], subdomain: str | None,
                 job: str, indexes: int) -> bool:
        """Cluster DNS for pod names: `<hostname>.<subdomain>[.<ns>[.svc[.<domain>]]]` of a pod of `job` whose
        `spec.subdomain` names a headless Service that selects it."""
        if host in ("localhost", LOOPBACK):
            return True
        parts = host.split(".")
        if len(parts) < 2:
            return False
        hostname, service_name, rest = parts[0], parts[1], parts[2:]
        suffixes = ([], [namespace], [namespace, "svc"], [namespace, "svc", *CLUSTER_DOMAIN.split(".")])
        if rest not in suffixes:
            return False
        if hostname not in {f"{job}-{i}" for i in range(indexes)} or service_name != subdomain:
            return False
        service = self._find("Service", namespace, service_name)
        return (
            service is not None
            and service["spec"].get("clusterIP") == "None"
            and _matches(service["spec"].get("selector", {}), pod_labels)
        )

    def run_job(self, name: str, namespace: str | None, *, timeout: float,
                evict: dict[int, int] | None = None) -> JobRun:
        job = self._find("Job", namespace, name)
        if job is None:
            raise LookupError(f"no Job {namespace}/{name} in the object set")
        spec = job["spec"]
        if spec.get("suspend"):
            raise RuntimeError(f"Job {name} is suspended: nothing admits it here, so it has no pods")
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions", 1)
        per_index = spec.get("backoffLimitPerIndex") if indexed else None
        backoff_limit = spec.get("backoffLimit", 2**31 - 1 if per_index is not None else 6)
        max_failed_indexes = spec.get("maxFailedIndexes")
        container = spec["template"]["spec"]["containers"][0]
        self.root.mkdir(parents=True, exist_ok=True)
        job_dir = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=self.root))
        ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        evictions = dict(evict or {})
        started = time.monotonic()
        deadline = started + min(timeout, spec.get("activeDeadlineSeconds", timeout))
        running: dict[int, _Pod] = {}
        finished: list[PodRun] = []
        failures: dict[int, int] = {index: 0 for index in range(completions)}
        succeeded: set[int] = set()
        failed_indexes: set[int] = set()
        counted = 0
        reason = message = ""
        for index in range(completions):
            running[index] = self._start(job, name, namespace, index, 0, job_dir, ports, indexed, completions)
        while running and not reason:
            if time.monotonic() > deadline:
                reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
                break
            for index, pod in list(running.items()):
                if evictions.get(index, 0) > 0 and pod.process.poll() is None:
                    evictions[index] -= 1
                    pod.disrupted = True
                    _stop(pod.process, grace=float(spec["template"]["spec"].get("terminationGracePeriodSeconds", 5)))
                code = pod.process.poll()
                if code is None:
                    continue
                del running[index]
                run = pod.finish()
                finished.append(run)
                if code == 0:
                    succeeded.add(index)
                    continue
                action = _policy_action(spec.get("podFailurePolicy"), container["name"], code, run.disrupted)
                if action == "FailJob":
                    reason = "PodFailurePolicy"
                    message = (f"Container {container['name']} for pod {namespace}/{run.name} failed with exit code "
                               f"{code} matching FailJob rule at index 0")
                    break
                if action != "Ignore":
                    counted += 1
                    failures[index] += 1
                    if per_index is not None and failures[index] > per_index:
                        failed_indexes.add(index)
                        if max_failed_indexes is not None and len(failed_indexes) > max_failed_indexes:
                            reason, message = "MaxFailedIndexesExceeded", "Job has exceeded maxFailedIndexes"
                            break
                        continue
                    if per_index is None and counted > backoff_limit:
                        reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                        break
                running[index] = self._start(job, name, namespace, index, len(finished), job_dir, ports, indexed,
                                             completions)
            time.sleep(0.1)
        if not reason and failed_indexes:
            reason, message = "FailedIndexes", "Job has failed indexes"
        for pod in running.values():  # the Job failed: its other pods are stopped, as the Job controller does
            _stop(pod.process, grace=0)
            finished.append(pod.finish())
        state = "Failed" if reason or len(succeeded) < completions else "Complete"
        return JobRun(name=name, state=state, pods=sorted(finished, key=lambda p: (p.index, p.attempt)),
                      seconds=time.monotonic() - started, reason=reason, message=message)

    def _start(self, job: dict[str, Any], name: str, namespace: str | None, index: int, serial: int, job_dir: Path,
               ports: dict[int, int], indexed: bool, completions: int) -> _Pod:
        """Create and start one pod of `job` (the `serial`-th pod of the Job; each gets its own directory)."""
        template = job["spec"]["template"]
        pod_spec = template["spec"]
        (container,) = pod_spec["containers"]
        pod_dir = job_dir / f"pod-{index}-{serial}"
        pod_dir.mkdir(parents=True)
        mounts = self._mounts(pod_spec, container, namespace, pod_dir, self.root / "claims")
        annotations = {COMPLETION_INDEX_ANNOTATION: str(index)} if indexed else {}
        pod_name = f"{name}-{index}-{serial}" if indexed else f"{name}-{serial}"
        labels = {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": name}
        if indexed:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
        meta = {"name": pod_name, "namespace": namespace, "labels": labels, "annotations": annotations}
        env = self._env(container, meta, mounts, ports, pod_spec.get("subdomain"), job=name,
                        indexes=completions if indexed else 0)
        if indexed:
            env["JOB_COMPLETION_INDEX"] = str(index)
        command = [_translate(arg, mounts) for arg in [*container.get("command", []), *container.get("args", [])]]
        message_file = mounts[container.get("terminationMessagePath", "/dev/termination-log")]
        log = pod_dir / "log"
        work = pod_dir / "workdir"
        work.mkdir()
        with log.open("wb") as out:
            process = subprocess.Popen(command, env={**self.base_env, **env}, cwd=work, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return _Pod(meta=meta, index=index, attempt=serial, container=container["name"], process=process,
                    message_file=message_file, log=log)

    def _mounts(self, pod_spec: dict[str, Any], container: dict[str, Any], namespace: str | None, pod_dir: Path,
                claims: Path) -> dict[str, Path]:
        """Container mount path -> host directory, longest first (a mount inside another wins)."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                config_map = self._find("ConfigMap", namespace, volume["configMap"]["name"])
                if config_map is None:
                    raise LookupError(f"volume {mount['name']}: no ConfigMap {volume['configMap']['name']}")
                host = pod_dir / "volumes" / mount["name"]
                host.mkdir(parents=True)
                for key, text in config_map.get("data", {}).items():
                    (host / key).write_text(text, encoding="utf-8")
            elif "emptyDir" in volume:
                host = pod_dir / "volumes" / mount["name"]
                host.mkdir(parents=True)
            elif "persistentVolumeClaim" in volume:
                host = claims / volume["persistentVolumeClaim"]["claimName"]
                host.mkdir(parents=True, exist_ok=True)
            else:
                raise NotImplementedError(f"volume {mount['name']}: only configMap, emptyDir and claims run here")
            mounts[mount["mountPath"]] = host
        # The kubelet mounts a file of its own at terminationMessagePath and reads it when the container ends.
        message = pod_dir / "termination-log"
        message.touch()
        mounts[container.get("terminationMessagePath", "/dev/termination-log")] = message
        return dict(sorted(mounts.items(), key=lambda item: -len(item[0])))

    def _env(self, container: dict[str, Any], meta: dict[str, Any], mounts: dict[str, Path], ports: dict[int, int],
             subdomain: str | None, *, job: str, indexes: int) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            name = item["name"]
            if "value" in item:
                value = str(item["value"])
            elif "fieldRef" in item.get("valueFrom", {}):
                value = _field(meta, item["valueFrom"]["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in item.get("valueFrom", {}):
                found = self._secret_value(meta["namespace"], item["valueFrom"]["secretKeyRef"])
                if found is None:
                    continue
                value = found
            else:
                raise NotImplementedError(f"env {name}: only values and metadata field references run here")
            if name in ADDRESS_VARIABLES:
                value = self._resolve(value, meta, subdomain, job, indexes)
            elif name in PORT_VARIABLES and value.isdigit() and int(value) in ports:
                value = str(ports[int(value)])
            env[name] = _translate(value, mounts)
        return env

    def _secret_value(self, namespace: str | None, ref: dict[str, Any]) -> str | None:
        """A key of a Secret in the object set; None for a missing optional one."""
        secret = self._find("Secret", namespace, ref["name"])
        data = {**{k: base64.b64decode(v).decode() for k, v in (secret or {}).get("data", {}).items()},
                **(secret or {}).get("stringData", {})}
        if ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise LookupError(f"CreateContainerConfigError: secret {ref['name']!r} or its key {ref['key']!r} not found")

    def _resolve(self, address: str, meta: dict[str, Any], subdomain: str | None, job: str, indexes: int) -> str:
        host, colon, port = address.partition(":")
        known = self.resolves(host, meta["namespace"], meta["labels"], subdomain, job, indexes)
        return f"{LOOPBACK if known else host + '.invalid'}{colon}{port}"


def _field(meta: dict[str, Any], path: str) -> str:
    """The downward API: `metadata.name`, `metadata.namespace`, `metadata.labels['k']`, `metadata.annotations['k']`."""
    if path in ("metadata.name", "metadata.namespace"):
        return str(meta[path.split(".")[1]])
    for part in ("labels", "annotations"):
        prefix = f"metadata.{part}['"
        if path.startswith(prefix) and path.endswith("']"):
            key = path[len(prefix):-2]
            if key not in meta[part]:
                raise LookupError(f"fieldRef {path}: the pod has no such {part[:-1]}")
            return meta[part][key]
    raise NotImplementedError(f"fieldRef {path} is not supported here")


def _translate(value: str, mounts: dict[str, Path]) -> str:
    """Replace container paths of mounts (whole path components, also inside a shell script) with host paths."""
    for container_path, host in mounts.items():
        pattern = rf"(?<![\w./-]){re.escape(container_path.rstrip('/'))}(?=/|$|[\s\"';&|])"
        value = re.sub(pattern, lambda _, path=str(host): path, value)
    return value


def _pod_body(meta: dict[str, Any], container: str, exit_code: int | None, message: str,
              disrupted: bool = False) -> dict[str, Any]:
    phase = "Succeeded" if exit_code == 0 else "Failed"
    terminated = {"exitCode": _exit_code(exit_code), "message": message}
    status: dict[str, Any] = {"phase": phase,
                              "containerStatuses": [{"name": container, "state": {"terminated": terminated}}]}
    if disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                 "message": "Eviction API: evicting"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def _exit_code(returncode: int | None) -> int:
    """A container's exit code as the runtime reports it: 128 + signal for a signalled process."""
    if returncode is None:
        return 137
    return 128 - returncode if returncode < 0 else returncode


def _policy_action(policy: dict[str, Any] | None, container: str, returncode: int, disrupted: bool) -> str:
    """The action of the first podFailurePolicy rule that matches a failed pod (`Count` when none does)."""
    code = _exit_code(returncode)
    for rule in (policy or {}).get("rules", []):
        on_codes = rule.get("onExitCodes")
        if on_codes is not None:
            if on_codes.get("containerName") not in (None, container):
                continue
            inside = code in on_codes["values"]
            if inside == (on_codes["operator"] == "In"):
                return rule["action"]
        for pattern in rule.get("onPodConditions", []):
            if pattern["type"] == "DisruptionTarget" and pattern.get("status", "True") == "True" and disrupted:
                return rule["action"]
    return "Count"


def _stop(process: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM to the pod's process group, SIGKILL after the grace period (the kubelet's termination)."""
    if process.poll() is not None:
        return
    if grace > 0:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass
class _Pod:
    """A running pod: its process and where its termination message and log go."""

    meta: dict[str, Any]
    index: int
    attempt: int
    container: str
    process: subprocess.Popen[bytes]
    message_file: Path
    log: Path
    disrupted: bool = False

    def finish(self) -> PodRun:
        message = self.message_file.read_text(encoding="utf-8") if self.message_file.exists() else ""
        code = self.process.returncode
        return PodRun(name=self.meta["name"], index=self.index, exit_code=code, message=message,
                      log=self.log.read_text(encoding="utf-8", errors="replace"),
                      body=_pod_body(self.meta, self.container, code, message, self.disrupted),
                      disrupted=self.disrupted, attempt=self.attempt)
