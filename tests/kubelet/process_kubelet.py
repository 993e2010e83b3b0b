"""A process kubelet: runs the pods of a rendered Job as local processes, with their real command and env.

The emulator tests check what the operator *creates*; this fixture checks that what it creates *runs*. It plays
the Job controller and the kubelet for one object set (the ConfigMaps, Services and Jobs the operator rendered):

- pods: one per completion (Indexed Jobs get the completion-index annotation, `JOB_COMPLETION_INDEX` and the
  host name `<job>-<index>`); a suspended Job has no pods; `backoffLimit: 0` fails the Job at the first failed
  pod, whose siblings are then stopped, as the Job controller does;
- volumes: a ConfigMap becomes a directory of its keys, an emptyDir a fresh directory, a claim one directory
  shared by every pod (ReadWriteMany). There is no chroot, so a container path under a mount (in the command,
  the env or `terminationMessagePath`) is translated to its host directory;
- env: plain values and the downward API's `metadata.*` field references; anything else is refused loudly;
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


@dataclass
class JobRun:
    """A Job's outcome: `Complete` when every pod exited 0, otherwise `Failed`."""

    name: str
    state: str
    pods: list[PodRun]
    seconds: float

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

    def run_job(self, name: str, namespace: str | None, *, timeout: float) -> JobRun:
        job = self._find("Job", namespace, name)
        if job is None:
            raise LookupError(f"no Job {namespace}/{name} in the object set")
        spec = job["spec"]
        if spec.get("suspend"):
            raise RuntimeError(f"Job {name} is suspended: nothing admits it here, so it has no pods")
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions", 1)
        template = spec["template"]
        pod_spec = template["spec"]
        (container,) = pod_spec["containers"]
        claims = self.root / "claims"
        self.root.mkdir(parents=True, exist_ok=True)
        job_dir = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=self.root))
        ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        started = time.monotonic()
        processes: list[tuple[int, subprocess.Popen[bytes], Path, Path, dict[str, Any]]] = []
        for index in range(completions):
            pod_dir = job_dir / f"pod-{index}"
            pod_dir.mkdir(parents=True)
            mounts = self._mounts(pod_spec, container, namespace, pod_dir, claims)
            annotations = {COMPLETION_INDEX_ANNOTATION: str(index)} if indexed else {}
            pod_name = f"{name}-{index}" if indexed else f"{name}-0"
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
            processes.append((index, process, message_file, log, meta))
        deadline = started + min(timeout, spec.get("activeDeadlineSeconds", timeout))
        failed = False
        while any(p.poll() is None for _, p, *_ in processes):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for _, p, *_ in processes):
                failed = True  # backoffLimit 0 (or the deadline): the Job fails and its other pods are stopped
                for _, process, *_ in processes:
                    if process.poll() is None:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                break
            time.sleep(0.2)
        pods = []
        for index, process, message_file, log, meta in processes:
            message = message_file.read_text(encoding="utf-8") if message_file.exists() else ""
            pods.append(PodRun(name=meta["name"], index=index, exit_code=process.returncode, message=message,
                               log=log.read_text(encoding="utf-8", errors="replace"),
                               body=_pod_body(meta, container["name"], process.returncode, message)))
        ok = not failed and all(p.exit_code == 0 for p in pods)
        return JobRun(name=name, state="Complete" if ok else "Failed", pods=pods,
                      seconds=time.monotonic() - started)

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
            else:
                raise NotImplementedError(f"env {name}: only values and metadata field references run here")
            if name in ADDRESS_VARIABLES:
                value = self._resolve(value, meta, subdomain, job, indexes)
            elif name in PORT_VARIABLES and value.isdigit() and int(value) in ports:
                value = str(ports[int(value)])
            env[name] = _translate(value, mounts)
        return env

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


def _pod_body(meta: dict[str, Any], container: str, exit_code: int | None, message: str) -> dict[str, Any]:
    phase = "Succeeded" if exit_code == 0 else "Failed"
    terminated = {"exitCode": exit_code if exit_code is not None else 137, "message": message}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"phase": phase, "containerStatuses": [{"name": container, "state": {"terminated": terminated}}]}}
