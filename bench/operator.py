"""Operator benchmark: N concurrent generations against kmock's emulator, the operator as a real subprocess.

`flywheel operator --namespace flywheel --standalone` logs in through a kubeconfig that points at the emulator;
this process plays the kubelet: each stage Job runs for a random time (`--job-seconds LOW HIGH`, uniform; 5-15 s
by default, so that 200 generations really are in flight at once, their Jobs finishing at ~20 a second), then it
finishes it (a pod with the result in the termination message, then the Job's status). Measured:

- handoff latency: from a Job's completion (the kubelet's status PATCH, as the emulator stores it) to the
  creation of the next stage's Job (as the emulator stores it; for sft: from the later reward model's
  completion). Both clocks are read in the emulator, and every handoff of every generation is counted;
- API requests per generation (everything the operator sent: kopf's requests and the backend's);
- the operator process's peak RSS, and the CPU seconds of the operator and of this process (emulator and
  kubelet) during the run: on a small machine they share the cores.

Runs, all in the same invocation: the baseline (one generation alone, Jobs finished at once); N generations
(the target: p99 < 1 s); a saturation run where every Job finishes the moment it appears, one at a time
(`--kubelets`): a closed loop in which the kubelet outpaces the operator, so its latency is the operator's backlog
over its throughput (reported as handoffs per second); and the saturation run again without the operator's
admission gate (`--max-concurrent-reconciles` past N: every reconcile at once, as kopf alone would;
operator/flywheel_operator/kube/admission.py), which is where the gate matters. Usage:
    python bench/operator.py [--generations 200] [--job-seconds 5 15] [--kubelets 1] [--no-ungated]
                             [--no-saturation] [--out bench/results/operator.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kmock  # noqa: E402
from flywheel_operator.kube.admission import MAX_CONCURRENT_RECONCILES  # noqa: E402

from tests.operator.cluster import NAMESPACE, WORLD_AGENT, Cluster, generation_body, running_cluster  # noqa: E402

HANDOFFS = [
    (["curate"], ["reward-pointwise", "reward-pairwise"]),
    (["reward-pointwise", "reward-pairwise"], ["sft"]),
    (["sft"], ["rl"]),
    (["rl"], ["eval"]),
]
"""Which Jobs' completion hands off to which Jobs (sft waits for both reward models: from the later one)."""
KUBELETS = 1
JOB_SECONDS = [5.0, 15.0]
UNGATED = 100_000
"""`--max-concurrent-reconciles` of the comparison run: every reconcile admitted at once (kopf's own behaviour)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kubeconfig(url: str, directory: str) -> str:
    path = os.path.join(directory, "kubeconfig")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "bench", "namespace": NAMESPACE}}],
    }
    Path(path).write_text(yaml.safe_dump(config))
    return path


async def _run(generations: int, kubelet: Kubelet, reconciles: int = MAX_CONCURRENT_RECONCILES) -> dict[str, Any]:
    async with running_cluster(world_timeout=300) as cluster:
        clock = Clock()
        cluster.emulator.on_stored = clock.stored
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "KUBECONFIG": _kubeconfig(cluster.url, tmp), "PYTHONUNBUFFERED": "1"}
            command = [
                sys.executable,
                "-m",
                "flywheel_operator.cli",
                "operator",
                "--namespace",
                NAMESPACE,
                "--standalone",
                "--metrics-port",
                str(_free_port()),
                "--health-port",
                str(_free_port()),
                "--max-concurrent-reconciles",
                str(reconciles),
            ]
            log = open(os.environ.get("OPERATOR_LOG", os.path.join(tmp, "operator.log")), "w")  # noqa: SIM115
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                return await _drive(cluster, process, generations, kubelet, clock)
            finally:
                # The emulator runs on this event loop and the operator talks to it while it shuts down:
                # wait without blocking the loop.
                process.terminate()
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    await asyncio.to_thread(process.wait)
                log.close()


class Clock:
    """Times taken by the emulator as it stores the writes: an operator's Job create, a kubelet's Job status."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.new_jobs: asyncio.Queue[str] = asyncio.Queue()

    def stored(self, request: Any, now: float) -> None:
        if request.resource is None or request.resource.plural != "jobs":
            return
        if request.action == kmock.action.CREATE and request.headers.get("User-Agent") != WORLD_AGENT:
            name = request.data["metadata"]["name"]
            if name not in self.created:
                self.created[name] = now
                self.new_jobs.put_nowait(name)
        elif request.action == kmock.action.UPDATE and request.subresource == "status":
            conditions = ((request.data or {}).get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
                self.finished.setdefault(request.name, now)

    def handoffs(self, names: list[str]) -> list[float]:
        """Next Job's creation minus the finish of the Job(s) it waited for, every handoff of every generation."""
        found = []
        for generation in names:
            for previous, followers in HANDOFFS:
                done = [self.finished[job] for p in previous if (job := f"{generation}-{p}-1") in self.finished]
                if len(done) < len(previous):
                    continue
                for follower in followers:
                    created = self.created.get(f"{generation}-{follower}-1")
                    if created is not None:
                        found.append(created - max(done))
        return found


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass(frozen=True)
class Kubelet:
    """How the simulated kubelet runs stage Jobs: each for a uniform random time in `runtime` seconds, then at most
    `parallel` are being finished at once."""

    runtime: tuple[float, float]
    parallel: int

    def describe(self) -> str:
        low, high = self.runtime
        return "Jobs finish at once" if high == 0 else f"Jobs run {low:g}-{high:g} s"


async def _kubelet(cluster: Cluster, clock: Clock, kubelet: Kubelet, failures: list[BaseException]) -> None:
    """Runs every stage Job the operator creates, then finishes it (pod with the result, then the Job's status)."""
    rng = random.Random(0)
    gate = asyncio.Semaphore(kubelet.parallel)
    running: set[asyncio.Task[None]] = set()

    async def run(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        async with gate:
            await cluster.finish_job(name)

    def done(task: asyncio.Task[None]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    try:
        while True:
            name = await clock.new_jobs.get()
            task = asyncio.create_task(run(name, rng.uniform(*kubelet.runtime)))
            running.add(task)
            task.add_done_callback(done)
    finally:
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _drive(
    cluster: Cluster, process: subprocess.Popen[bytes], generations: int, kubelet: Kubelet, clock: Clock
) -> dict[str, Any]:
    names = [f"bench{i:03d}" for i in range(generations)]
    rss = psutil.Process(process.pid)
    peak = 0
    # The operator's start-up (imports, login, the generations' and Jobs' watches) is not measured.
    deadline = time.monotonic() + 120
    while cluster.emulator.watches < 2:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the operator did not start watching; exit code {process.poll()}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    requests_before = cluster.emulator.requests
    kinds_before = collections.Counter(cluster.emulator.requests_by_kind)
    cpu_before = _cpu(rss), _cpu(psutil.Process())
    load_before = os.getloadavg()[0]
    failures: list[BaseException] = []
    worker = asyncio.create_task(_kubelet(cluster, clock, kubelet, failures))
    started = time.monotonic()
    try:
        for name in names:
            await cluster.apply(generation_body(name))
        deadline = started + 1200
        last = [f"{name}-eval-1" for name in names]
        while not all(job in clock.finished for job in last):
            peak = max(peak, rss.memory_info().rss)
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"only {len(clock.finished)} Jobs finished; operator exit code {process.poll()}")
            if failures:
                raise failures[0]  # the kubelet could not finish a Job
            await asyncio.sleep(0.05)
        wall = time.monotonic() - started
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    await asyncio.sleep(1.0)  # let the last status writes land
    peak = max(peak, rss.memory_info().rss)
    cpu = _cpu(rss) - cpu_before[0], _cpu(psutil.Process()) - cpu_before[1]
    requests = cluster.emulator.requests - requests_before
    kinds = cluster.emulator.requests_by_kind - kinds_before
    handoffs = sorted(clock.handoffs(names))
    expected = sum(len(followers) for _, followers in HANDOFFS) * generations
    if len(handoffs) != expected:
        raise RuntimeError(f"{len(handoffs)} handoffs measured, {expected} expected")
    return {
        "generations": generations,
        "kubelet": {"job_seconds": list(kubelet.runtime), "parallel": kubelet.parallel},
        "handoffs_per_second": len(handoffs) / wall,
        "handoffs": len(handoffs),
        "p50_s": statistics.median(handoffs),
        "p99_s": handoffs[min(len(handoffs) - 1, int(0.99 * len(handoffs)))],
        "max_s": handoffs[-1],
        "requests_per_generation": requests / generations,
        "requests_per_generation_by_kind": {k: round(v / generations, 2) for k, v in kinds.most_common()},
        "peak_rss_mib": peak / 2**20,
        "wall_s": wall,
        "operator_cpu_s": cpu[0],
        "emulator_and_kubelet_cpu_s": cpu[1],
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--job-seconds", type=float, nargs=2, default=JOB_SECONDS, metavar=("LOW", "HIGH"),
                        help="how long each stage Job runs, uniform (default: %(default)s)")
    parser.add_argument("--kubelets", type=int, default=KUBELETS,
                        help="Jobs the saturation run's kubelet finishes at once (default: %(default)s)")
    parser.add_argument("--no-ungated", action="store_true",
                        help="skip the saturation run without the operator's admission limit")
    parser.add_argument("--no-saturation", action="store_true", help="skip the saturation run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "operator.json"))
    args = parser.parse_args(argv)
    n = args.generations
    timed = Kubelet(runtime=tuple(args.job_seconds), parallel=UNGATED)
    instant = Kubelet(runtime=(0.0, 0.0), parallel=args.kubelets)
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    runs["baseline"] = ("1 generation, Jobs finish at once", asyncio.run(_run(1, instant)))
    runs["loaded"] = (f"{n} generations, {timed.describe()}", asyncio.run(_run(n, timed)))
    if not args.no_saturation:
        runs["saturation"] = (f"{n}, saturation ({instant.describe()})", asyncio.run(_run(n, instant)))
        if not args.no_ungated:
            runs["ungated"] = (f"{n}, saturation, no admission limit", asyncio.run(_run(n, instant, UNGATED)))
    print(
        f"{'run':44} {'handoffs':>8} {'per s':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'req/gen':>8} "
        f"{'RSS MiB':>8} {'wall s':>7} {'load':>5}"
    )
    for label, r in runs.values():
        print(
            f"{label:44} {r['handoffs']:8d} {r['handoffs_per_second']:6.1f} {r['p50_s']:7.3f} {r['p99_s']:7.3f} "
            f"{r['max_s']:7.3f} {r['requests_per_generation']:8.1f} {r['peak_rss_mib']:8.1f} {r['wall_s']:7.1f} "
            f"{max(r['load_average_1m']):5.2f}"
        )
    loaded, baseline = runs["loaded"][1], runs["baseline"][1]
    print("requests per generation: " + ", ".join(
        f"{kind.removeprefix('method.')} {count:g}" for kind, count in loaded["requests_per_generation_by_kind"].items()
    ))
    verdict = "meets" if loaded["p99_s"] < 1.0 else "misses"
    print(
        f"p99 handoff with {n} generations in flight: {loaded['p99_s']:.3f} s, {verdict} the 1 s target "
        f"({loaded['p99_s'] / baseline['p99_s']:.1f}x the single-generation baseline)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {key: {"label": label, **r} for key, (label, r) in runs.items()}
    result.update({"target_p99_s": 1.0, "meets_target": loaded["p99_s"] < 1.0})
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("operator", args.out)  # provenance
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
