"""Operator benchmark: N concurrent generations against kmock's emulator, the operator as a real subprocess.

`flywheel operator --namespace flywheel --standalone` logs in through a kubeconfig that points at the emulator;
this process plays the kubelet: each stage Job runs for a random time (`--job-seconds LOW HIGH`, uniform; 5-15 s
by default, so that 200 generations really are in flight at once, their Jobs finishing at ~20 a second), then it
finishes it (a pod with the result in the termination message, then the Job's status). Measured:

- handoff latency: from the event that unblocked a Job to its creation, both as the emulator stores them. The
  event is the finish (the kubelet's status PATCH) of the Job it waited for: the last Job of the previous step
  (sft: the later reward model), or, for a Job of a step that runs under `resources.maxParallelJobs` (default
  1: the reward models one after the other), the Job of its own step whose finish freed the slot. The steps,
  the limit and the Job names come from the planner (`pipeline_steps`, `child_name`); every handoff of every
  generation is counted;
- capacity waits, apart: how long such a Job was ready (its step's dependencies finished) before a slot freed.
  That is the kubelet's time (the Job ahead of it running), not the operator's; until d32e63f the bench timed
  the second reward model from curate's finish and counted this wait as handoff latency;
- API requests per generation (everything the operator sent: kopf's requests and the backend's);
- the operator process's peak RSS, and the CPU seconds of the operator and of this process (emulator and
  kubelet) during the run: on a small machine they share the cores.

Runs, all in the same invocation: the baseline (one generation alone, Jobs finished at once); N generations
(the target: p99 < 1 s); a saturation run where every Job finishes the moment it appears, one at a time
(`--kubelets`): a closed loop in which the kubelet outpaces the operator, so its latency is the operator's backlog
over its throughput (reported as handoffs per second); and the saturation run again without the operator's
admission gate (`--max-concurrent-reconciles` past N: every reconcile at once, as kopf alone would;
operator/flywheel_operator/kube/admission.py), which is where the gate matters.

`--baseline-rev REV` runs every run twice, back to back: first with the operator of commit REV (its `operator/`
from `git archive`, first on the subprocess's PYTHONPATH; the bench, emulator and kubelet stay this tree's),
then with this tree's, so a change is compared on the same machine under the same load. `--profile` adds one
saturation run per operator under cProfile and reports where the operator's time goes (by cumulative time, and
per handoff). `HANDOFFS_CSV=path` writes every handoff of each run (the last run's stays), `OPERATOR_LOG=path`
the operator's log. Usage:
    python bench/operator.py [--generations 200] [--job-seconds 5 15] [--kubelets 1] [--no-ungated]
                             [--no-saturation] [--no-loaded] [--repeat N] [--baseline-rev REV]
                             [--profile [--profile-dir DIR]] [--out bench/results/operator.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import io
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kmock  # noqa: E402
from flywheel_operator.api import FlywheelGeneration  # noqa: E402
from flywheel_operator.kube.admission import MAX_CONCURRENT_RECONCILES  # noqa: E402
from flywheel_operator.planner import child_name, pipeline_steps  # noqa: E402

from tests.operator.cluster import NAMESPACE, WORLD_AGENT, Cluster, generation_body, running_cluster  # noqa: E402

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


@dataclass(frozen=True)
class OperatorCode:
    """Which operator the subprocess runs: this tree's, or another commit's `operator/` exported by `git archive`
    (put first on its PYTHONPATH), optionally under cProfile."""

    label: str
    path: str | None = None
    profile: str | None = None
    """Write the operator's cProfile statistics here (pstats format) when it exits."""

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.path is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.path, env.get("PYTHONPATH")) if p)
        return env

    def check(self) -> str:
        """The package the subprocess imports: the exported tree's when one is given (else the run is void)."""
        where = subprocess.run(
            [sys.executable, "-c", "import flywheel_operator; print(flywheel_operator.__file__)"],
            env=self.env(), cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        if self.path is not None and not where.startswith(self.path):
            raise RuntimeError(f"the operator of {self.label} should come from {self.path}, but imports {where}")
        return where


THIS_TREE = OperatorCode("this tree")


def export_operator(rev: str, directory: str) -> OperatorCode:
    """`operator/` of commit `rev` under `directory` (git archive), as the baseline operator."""
    commit = subprocess.run(["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "operator"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return OperatorCode(commit, os.path.join(directory, "operator"))


async def _run(
    generations: int, kubelet: Kubelet, operator: OperatorCode = THIS_TREE, reconciles: int = MAX_CONCURRENT_RECONCILES
) -> dict[str, Any]:
    async with running_cluster(world_timeout=300) as cluster:
        clock = Clock()
        cluster.emulator.on_stored = clock.stored
        cluster.emulator.on_request = clock.request
        with tempfile.TemporaryDirectory() as tmp:
            env = {**operator.env(), "KUBECONFIG": _kubeconfig(cluster.url, tmp)}
            profile = ["-m", "cProfile", "-o", operator.profile] if operator.profile else []
            command = [
                sys.executable,
                *profile,
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
                result = await _drive(cluster, process, generations, kubelet, clock)
                return {"operator": operator.label, **result}
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


@dataclass(frozen=True)
class Handoff:
    """One Job's creation, timed from the finish of the Job that unblocked it."""

    generation: str
    job: str
    """The Job the operator created."""
    after: str
    """The Job whose finish let it start: the last of the previous step (`dependency`), or, when the step's Jobs
    run under `resources.maxParallelJobs`, the Job of the same step that freed the slot (`capacity`)."""
    cause: str
    seconds: float
    """Creation minus that finish: the operator's own latency."""
    capacity_wait_s: float = 0.0
    """For `capacity`: how long the Job was ready (its step's dependencies finished) before a slot freed; the
    kubelet's time, not the operator's."""


@dataclass(frozen=True)
class Pipeline:
    """A generation's Jobs as the planner runs them: steps in order, at most `limit` Jobs of a step at once,
    started in order as earlier ones end (planner/core.py `_run_pipeline`)."""

    steps: tuple[tuple[str, ...], ...]
    limit: int

    @classmethod
    def of(cls, generation: FlywheelGeneration | dict[str, Any]) -> Pipeline:
        """From the generation (or its manifest), with the planner's own step list and Job names (first attempts)."""
        if not isinstance(generation, FlywheelGeneration):
            generation = FlywheelGeneration.model_validate(generation)
        name = generation.metadata.name
        steps = tuple(tuple(child_name(name, stage, 1) for stage in stages) for _, stages in pipeline_steps(generation))
        return cls(steps=steps, limit=generation.spec.resources.max_parallel_jobs)


def unblocking(pipeline: Pipeline, created: Mapping[str, float], finished: Mapping[str, float],
               generation: str = "") -> list[Handoff]:
    """Every Job after the first step, timed from the event that unblocked it (`created` and `finished` map Job
    names to instants on one clock). A Job among the first `limit` of its step waited for the previous step's
    last finish; a later one for a slot: the (k - limit + 1)-th finish among the k Jobs of its step started before
    it. When that slot freed after the step was ready, the wait in between is a capacity wait, reported apart."""
    found: list[Handoff] = []
    for previous, step in itertools.pairwise(pipeline.steps):
        ready_job = max(previous, key=lambda job: _at(finished, job, "finish"))
        ready = finished[ready_job]
        for k, job in enumerate(step):
            at = _at(created, job, "creation")
            after, cause, unblocked, waited = ready_job, "dependency", ready, 0.0
            if k >= pipeline.limit:
                slot_at, slot_job = sorted((_at(finished, j, "finish"), j) for j in step[:k])[k - pipeline.limit]
                if slot_at > ready:
                    after, cause, unblocked, waited = slot_job, "capacity", slot_at, slot_at - ready
            found.append(Handoff(generation, job, after, cause, at - unblocked, waited))
    return found


def _at(times: Mapping[str, float], job: str, what: str) -> float:
    try:
        return times[job]
    except KeyError:
        raise RuntimeError(f"no {what} of Job {job} was recorded: the run did not finish every stage") from None


class Clock:
    """Times taken by the emulator as it stores the writes: an operator's Job create, a kubelet's Job status."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.applied: dict[str, float] = {}
        """Generation name -> when the bench's create of it was stored."""
        self.requests: list[tuple[float, str]] = []
        """(instant, kind) of every operator request but watches (the emulator's `on_request`)."""
        self.new_jobs: asyncio.Queue[str] = asyncio.Queue()

    def request(self, kind: str, now: float) -> None:
        self.requests.append((now, kind.removeprefix("method.")))

    def stored(self, request: Any, now: float) -> None:
        if request.resource is None:
            return
        if request.resource.plural == "flywheelgenerations" and request.action == kmock.action.CREATE:
            self.applied.setdefault(request.data["metadata"]["name"], now)
        if request.resource.plural != "jobs":
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

    def handoffs(self, pipelines: Mapping[str, Pipeline]) -> list[Handoff]:
        """Every handoff of every generation, each from the finish that unblocked it (`unblocking`)."""
        return [h for name, p in pipelines.items() for h in unblocking(p, self.created, self.finished, name)]


TAIL_BIN_S = 5.0
TIMELINE_KINDS = {
    "admissions": "first Jobs",
    "POST jobs": "Jobs",
    "PATCH flywheelgenerations/status": "status",
    "PATCH flywheelgenerations": "kopf",
    "POST events": "events",
    "GET pods": "pods",
    "GET inferenceservices": "isvc",
    "GET flywheelgenerations": "gen GET",
}
"""What the timeline counts per bin, and the column names it prints."""


def tail_profile(handoffs: list[Handoff], clock: Clock, pipelines: Mapping[str, Pipeline], started: float,
                 threshold: float = 1.0, bin_s: float = TAIL_BIN_S) -> dict[str, Any]:
    """What the slow handoffs (over `threshold`) coincided with: admissions (a generation's first Job, timed from
    its apply), and, per `bin_s` seconds of the run (by the finish that unblocked each handoff), the handoffs, the
    slow ones and the operator's requests by kind. The creation burst ends when the last generation's first Job
    is created; a slow handoff before that shared the loop with admissions."""
    first_jobs = {name: clock.created[p.steps[0][0]] for name, p in pipelines.items() if p.steps[0][0] in clock.created}
    admissions = [first_jobs[name] - clock.applied[name] for name in first_jobs if name in clock.applied]
    burst_end = max(first_jobs.values(), default=started) - started
    slow = [h for h in handoffs if h.seconds > threshold]
    bins: dict[int, dict[str, Any]] = {}

    def at(instant: float) -> dict[str, Any]:
        index = max(0, int((instant - started) // bin_s))
        return bins.setdefault(index, {"t_s": index * bin_s, "handoffs": 0, "over": 0, "max_s": 0.0,
                                        **{kind: 0 for kind in TIMELINE_KINDS}})

    for h in handoffs:
        row = at(clock.finished[h.after])
        row["handoffs"] += 1
        row["over"] += h.seconds > threshold
        row["max_s"] = round(max(row["max_s"], h.seconds), 3)
    for instant in first_jobs.values():
        at(instant)["admissions"] += 1
    for instant, kind in clock.requests:
        if instant >= started and (kind in TIMELINE_KINDS):
            at(instant)[kind] += 1
    stages: collections.Counter[str] = collections.Counter(
        h.job.removeprefix(f"{h.generation}-").rsplit("-", 1)[0] for h in slow)
    return {
        "threshold_s": threshold,
        "over_threshold": len(slow),
        "over_threshold_during_creation_burst": sum(clock.finished[h.after] - started <= burst_end for h in slow),
        "over_threshold_by_stage": dict(stages.most_common()),
        "creation_burst_s": round(burst_end, 3),
        "admission": {"count": len(admissions), **(_percentiles(admissions) if admissions else {})},
        "bin_s": bin_s,
        "timeline": [bins[i] for i in sorted(bins)],
    }


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
    bodies = {name: generation_body(name) for name in (f"bench{i:03d}" for i in range(generations))}
    pipelines = {name: Pipeline.of(body) for name, body in bodies.items()}
    rss = psutil.Process(process.pid)
    peak = 0
    # The operator's start-up (imports, login, the generations' and Jobs' watches) is not measured.
    deadline = time.monotonic() + 120
    while cluster.emulator.watches < 2:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the operator did not start watching; exit code {process.poll()}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    # The emulator stands in for an API server, which has no stop-the-world pauses of the length of a full
    # collection of this process's heap (0.4-1 s at load: every handoff in flight waited): the start-up's objects
    # (modules, the emulator, the bodies to apply) are kept out of the collector's walks for this run.
    gc.collect()
    gc.freeze()
    requests_before = cluster.emulator.requests
    kinds_before = collections.Counter(cluster.emulator.requests_by_kind)
    cpu_before = _cpu(rss), _cpu(psutil.Process())
    load_before = os.getloadavg()
    failures: list[BaseException] = []
    worker = asyncio.create_task(_kubelet(cluster, clock, kubelet, failures))
    started = time.monotonic()
    try:
        for body in bodies.values():
            await cluster.apply(body)
        deadline = started + 1200
        last = [job for pipeline in pipelines.values() for job in pipeline.steps[-1]]
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
        gc.unfreeze()
    await asyncio.sleep(1.0)  # let the last status writes land
    peak = max(peak, rss.memory_info().rss)
    cpu = _cpu(rss) - cpu_before[0], _cpu(psutil.Process()) - cpu_before[1]
    requests = cluster.emulator.requests - requests_before
    kinds = cluster.emulator.requests_by_kind - kinds_before
    handoffs = clock.handoffs(pipelines)
    if os.environ.get("HANDOFFS_CSV"):  # every handoff, for looking at the tail over time
        with open(os.environ["HANDOFFS_CSV"], "w") as out:
            out.write("finished_at_s,job,after,cause,seconds,capacity_wait_s\n")
            for h in sorted(handoffs, key=lambda h: clock.finished[h.after]):
                out.write(f"{clock.finished[h.after] - started:.4f},{h.job},{h.after},{h.cause},{h.seconds:.4f},"
                          f"{h.capacity_wait_s:.4f}\n")
    expected = sum(len(step) for pipeline in pipelines.values() for step in pipeline.steps[1:])
    if len(handoffs) != expected:
        raise RuntimeError(f"{len(handoffs)} handoffs measured, {expected} expected")
    seconds = [h.seconds for h in handoffs]
    by_stage: dict[str, list[float]] = collections.defaultdict(list)
    for h in handoffs:
        by_stage[h.job.removeprefix(f"{h.generation}-").rsplit("-", 1)[0]].append(h.seconds)
    by_cause = {cause: [h.seconds for h in handoffs if h.cause == cause] for cause in ("dependency", "capacity")}
    return {
        "generations": generations,
        "tail": tail_profile(handoffs, clock, pipelines, started),
        "kubelet": {"job_seconds": list(kubelet.runtime), "parallel": kubelet.parallel},
        "max_parallel_jobs": sorted({pipeline.limit for pipeline in pipelines.values()}),
        "handoffs_per_second": len(handoffs) / wall,
        "handoffs": len(handoffs),
        **_percentiles(seconds),
        "handoffs_by_cause": {cause: {"count": len(v), **_percentiles(v)} for cause, v in by_cause.items() if v},
        "p99_s_by_stage": {stage: _percentiles(v)["p99_s"] for stage, v in by_stage.items()},
        "capacity_waits": {"count": len(waits := [h.capacity_wait_s for h in handoffs if h.cause == "capacity"]),
                           **(_percentiles(waits) if waits else {})},
        "slowest": [
            {"job": h.job, "after": h.after, "cause": h.cause, "seconds": round(h.seconds, 4)}
            for h in sorted(handoffs, key=lambda h: -h.seconds)[:5]
        ],
        "requests_per_generation": requests / generations,
        "requests_per_generation_by_kind": {k: round(v / generations, 2) for k, v in kinds.most_common()},
        "peak_rss_mib": peak / 2**20,
        "wall_s": wall,
        "operator_cpu_s": cpu[0],
        "emulator_and_kubelet_cpu_s": cpu[1],
        "load_average_1m": [load_before[0], os.getloadavg()[0]],
        "load_average_1_5_15m_at_start": list(load_before),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_s": ordered[-1],
    }


def profile_table(path: str, handoffs: int, top: int = 25) -> dict[str, Any]:
    """The operator's cProfile statistics as a table: the functions with the most cumulative time (the event
    loop's own frames left out), and those with the most time of their own; ms per handoff for comparison."""
    import pstats

    stats = pstats.Stats(path)
    raw = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]

    def where(key: tuple[str, int, str]) -> str:
        file, line, name = key
        for marker in ("site-packages/", "/operator/", "/lib/python3"):
            if marker in file:
                file = file.split(marker, 1)[1]
                break
        return f"{file}:{line}({name})" if line else name

    loop = ("asyncio/", "selectors.py", "{method 'run' of '_contextvars", "{built-in method builtins.exec}",
            "runpy.py", "cProfile.py", "{method 'poll' of 'select", "{method 'control' of 'select",
            "<frozen importlib", "{built-in method _imp")  # the event loop's frames, and start-up's imports

    def row(key: tuple[str, int, str], value: tuple[Any, ...]) -> dict[str, Any]:
        _, calls, own, cumulative, _ = value
        return {"function": where(key), "calls": calls, "own_s": round(own, 3), "cumulative_s": round(cumulative, 3),
                "cumulative_ms_per_handoff": round(1000 * cumulative / handoffs, 3)}

    ranked = sorted(raw.items(), key=lambda item: -item[1][3])
    by_cumulative = [row(k, v) for k, v in ranked if not any(m in where(k) or m in k[0] for m in loop)][:top]
    by_own = [row(k, v) for k, v in sorted(raw.items(), key=lambda item: -item[1][2])[:top]]
    return {"profiled_s": round(total, 3), "handoffs": handoffs, "by_cumulative": by_cumulative, "by_own": by_own}


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
    parser.add_argument("--no-loaded", action="store_true", help="skip the run with Jobs of --job-seconds")
    parser.add_argument("--repeat", type=int, default=1,
                        help="saturation runs of each operator, alternating (default: %(default)s)")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="also run the operator of commit REV (git archive of its operator/), each run right "
                             "before this tree's: the before/after of a change on the same machine and load")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed runs, one saturation run per operator under cProfile: the table of "
                             "where the operator's time goes (cProfile slows it: not timed)")
    parser.add_argument("--profile-dir", metavar="DIR",
                        help="keep the cProfile statistics (pstats files, one per operator) in DIR")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "operator.json"))
    args = parser.parse_args(argv)
    n = args.generations
    timed = Kubelet(runtime=tuple(args.job_seconds), parallel=UNGATED)
    instant = Kubelet(runtime=(0.0, 0.0), parallel=args.kubelets)
    with tempfile.TemporaryDirectory() as tmp:
        operators = [THIS_TREE]
        if args.baseline_rev:
            operators.insert(0, export_operator(args.baseline_rev, tmp))
        for operator in operators:
            print(f"operator of {operator.label}: {operator.check()}", flush=True)
        plan: list[tuple[str, str, int, Kubelet, int]] = [("baseline", "1 generation, Jobs finish at once", 1,
                                                            instant, MAX_CONCURRENT_RECONCILES)]
        if not args.no_loaded:
            plan.append(("loaded", f"{n} generations, {timed.describe()}", n, timed, MAX_CONCURRENT_RECONCILES))
        for rep in range(args.repeat if not args.no_saturation else 0):
            suffix = "" if rep == 0 else f"_{rep + 1}"
            plan.append((f"saturation{suffix}", f"{n}, saturation ({instant.describe()})", n, instant,
                         MAX_CONCURRENT_RECONCILES))
            if not args.no_ungated:
                plan.append((f"ungated{suffix}", f"{n}, saturation, no admission limit", n, instant, UNGATED))
        runs: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {op.label: {} for op in operators}
        for key, label, generations, kubelet, reconciles in plan:
            for operator in operators:  # back to back: the baseline's operator first, then this tree's
                result = asyncio.run(_run(generations, kubelet, operator, reconciles))
                runs[operator.label][key] = (label, result)
                print(f"{key:14} {operator.label:10} p99 {result['p99_s']:.3f} s  load "
                      f"{max(result['load_average_1m']):.2f}", flush=True)
        profiles = {}
        if args.profile:
            for operator in operators:
                if args.profile_dir:
                    Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
                stats = os.path.join(args.profile_dir or tmp, f"operator-{operator.label.replace(' ', '-')}.pstats")
                profiled = OperatorCode(operator.label, operator.path, profile=stats)
                result = asyncio.run(_run(n, instant, profiled))
                profiles[operator.label] = {"run": f"{n}, saturation ({instant.describe()}), under cProfile",
                                            "p99_s_under_profile": result["p99_s"],
                                            **profile_table(stats, result["handoffs"])}
    this = runs[THIS_TREE.label]
    _print_table(this, operators, runs)
    for key in this:
        if key.startswith("saturation"):
            for operator in operators:
                _print_tail(*runs[operator.label][key], operator.label)
    loaded, baseline = this.get("loaded", this["baseline"])[1], this["baseline"][1]
    print("requests per generation: " + ", ".join(
        f"{kind.removeprefix('method.')} {count:g}" for kind, count in loaded["requests_per_generation_by_kind"].items()
    ))
    verdict = "meets" if loaded["p99_s"] < 1.0 else "misses"
    print(
        f"p99 handoff with {loaded['generations']} generations in flight: {loaded['p99_s']:.3f} s, {verdict} the "
        f"1 s target ({loaded['p99_s'] / baseline['p99_s']:.1f}x the single-generation baseline)"
    )
    for label, profile in profiles.items():
        print(f"\nprofile of the operator of {label} ({profile['run']}; {profile['profiled_s']:.1f} s profiled):")
        print(f"{'cumulative s':>12} {'ms/handoff':>10} {'calls':>8}  function")
        for row in profile["by_cumulative"]:
            print(f"{row['cumulative_s']:12.2f} {row['cumulative_ms_per_handoff']:10.2f} {row['calls']:8d}  "
                  f"{row['function']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {key: {"label": label, **r} for key, (label, r) in this.items()}
    saturation = [r["p99_s"] for key, (_, r) in this.items() if key.startswith("saturation")]
    result.update({"target_p99_s": 1.0, "meets_target": loaded["p99_s"] < 1.0,
                   "saturation_meets_target": bool(saturation) and max(saturation) < 1.0})
    loads = [load for _, r in this.values() for load in r["load_average_1m"]]
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "load_average_1m_range": [min(loads), max(loads)],
        "note": "the operator, the emulator and the kubelet share these cores with whatever else runs (the load "
                "average): above the core count, latencies are the machine's as much as the operator's; compare "
                "the runs of one invocation (--baseline-rev) and the CPU seconds per handoff",
    }
    for operator in operators[:-1]:
        result["baseline_operator"] = {
            "commit": operator.label,
            "note": "the same runs with that commit's operator/, each right before this tree's, same machine",
            **{key: {"label": label, **r} for key, (label, r) in runs[operator.label].items()},
        }
    if profiles:
        result["profiles"] = profiles
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("operator", args.out)  # provenance
    return 0


def _print_tail(label: str, result: dict[str, Any], operator: str) -> None:
    """Where the slow handoffs of a run fell: the creation burst, and the timeline of handoffs and requests."""
    tail = result["tail"]
    admission = tail["admission"]
    print(f"\n{label}, operator of {operator}: {tail['over_threshold']} handoffs over {tail['threshold_s']:g} s "
          f"({tail['over_threshold_during_creation_burst']} during the creation burst, which ended at "
          f"{tail['creation_burst_s']:.1f} s; by stage {tail['over_threshold_by_stage']}); apply to first Job "
          f"p50 {admission.get('p50_s', 0):.2f} s, p99 {admission.get('p99_s', 0):.2f} s")
    columns = list(TIMELINE_KINDS.values())
    print(f"{'t s':>5} {'handoffs':>8} {'> ' + format(tail['threshold_s'], 'g') + ' s':>6} {'max s':>6} "
          + " ".join(f"{c:>10}" for c in columns))
    for row in tail["timeline"]:
        print(f"{row['t_s']:5.0f} {row['handoffs']:8d} {row['over']:6d} {row['max_s']:6.2f} "
              + " ".join(f"{row[kind]:10d}" for kind in TIMELINE_KINDS))


def _print_table(this: dict[str, tuple[str, dict[str, Any]]], operators: list[OperatorCode],
                 runs: dict[str, dict[str, tuple[str, dict[str, Any]]]]) -> None:
    print(
        f"\n{'run':44} {'operator':10} {'handoffs':>8} {'per s':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
        f"{'cap.wait p99':>12} {'req/gen':>8} {'op CPU s':>8} {'RSS MiB':>8} {'wall s':>7} {'load':>5}"
    )
    for key in this:
        for operator in operators:
            label, r = runs[operator.label][key]
            waits = r["capacity_waits"]
            wait = f"{waits['p99_s']:12.3f}" if waits["count"] else f"{'-':>12}"
            print(
                f"{label:44} {operator.label:10} {r['handoffs']:8d} {r['handoffs_per_second']:6.1f} "
                f"{r['p50_s']:7.3f} {r['p99_s']:7.3f} {r['max_s']:7.3f} {wait} {r['requests_per_generation']:8.1f} "
                f"{r['operator_cpu_s']:8.1f} {r['peak_rss_mib']:8.1f} {r['wall_s']:7.1f} "
                f"{max(r['load_average_1m']):5.2f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
