"""LocalBackend: carries out the planner's actions on this machine and observes what happened.

- StartStage: the same `flywheel-train STAGE --config FILE` a Job runs, as a subprocess in its own session,
  its config written to `configs/<child>.json` and its stdout and stderr to `logs/<child>.log`. `sim://` URIs
  are resolved here (the planner never sees files): generation 0 is built, simulated traffic is written.
- DeployCanary / PromoteCanary / RollBackCanary: the simulated A/B canary (flywheel_local.canary).
- observe: polls the subprocesses and reads `result.json`; a stage that finished while the runner was away is
  read from its output directory, one that was interrupted is started again under the same child name (like a
  Job whose pod restarted), so a resumed run never re-runs a finished stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api import (
    FlywheelGeneration,
    FlywheelGenerationStatus,
    StageConfig,
    StageResult,
    StageSettings,
    TrafficSource,
    parse_duration,
)
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

from flywheel_local import sources
from flywheel_local.canary import CanaryState, SimulatedCanary, simulated_days

RESULT_FILE = "result.json"
LOG_TAIL_LINES = 8
"""Lines of a failed stage's log quoted in its failure message."""
STOP_GRACE_SECONDS = 10.0
STAGE_THREADS = 1
"""Most torch threads a stage program gets (fewer when stages share the cores): the tiny models' matrices are too
small for a second thread to pay for its synchronisation, and on cores shared with anything else (the runner's
sampling, a second stage, another program) OpenMP threads spin against each other. bench/local.py (2 cores): SFT on
1 thread 81 s, on 2 threads 420 s, at load 10. One thread is also what `bench/flywheel.py --cpus 1` runs every
stage on, so `make run`'s stages compute the committed chain's sums in the same order."""
ALONE_THREADS = 2
"""Most torch threads of a stage program that runs alone on idle cores (stage_threads): SFT 11.4 s on two threads
against 17.2 s on one, RL 15.3 against 21.0 (bench/results/local.json, 2 idle cores). More than two is not measured
(the machines here have two cores); a larger value is a constructor argument (LocalBackend(alone_threads=...))."""
IDLE_SLACK = 0.25
"""A core counts as idle when at least 1 - IDLE_SLACK of it was idle while the runner looked (idle_cores): a
second OpenMP thread on a core that is busy elsewhere spins against it (SFT 252.8 s on two threads against 127.4 on
one at load 6, bench/local.py --only threads)."""
IDLE_WINDOW_SECONDS = 0.5
"""How long the runner looks at the cores before it starts a stage alone."""


@dataclass(frozen=True)
class RunPaths:
    """Where one generation's local files live (docs/local.md, 'Run directory')."""

    root: Path

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def events(self) -> Path:
        return self.root / "events.log"

    def config(self, child: str) -> Path:
        return self.root / "configs" / f"{child}.json"

    def log(self, child: str) -> Path:
        return self.root / "logs" / f"{child}.log"

    def pid(self, child: str) -> Path:
        return self.root / "pids" / f"{child}.pid"

    def traffic(self, source: str) -> Path:
        return self.root / "traffic" / source

    @property
    def canary(self) -> Path:
        return self.root / "canary"


class LocalBackend:
    """Runs one generation's stage programs and canary in `paths.root`, against the world in `world_file`."""

    def __init__(
        self,
        generation: FlywheelGeneration,
        paths: RunPaths,
        *,
        world_file: Path,
        cache_dir: Path,
        cpus: int | None = None,
        note: Callable[[str], None] = lambda text: None,
        oracle_draws: int | None = None,
        warm_start: bool = True,
        stage_threads: int = STAGE_THREADS,
        alone_threads: int = ALONE_THREADS,
    ) -> None:
        self.generation = generation
        self.stage_threads = stage_threads
        """Most torch threads one stage program gets beside others, or on cores given with `cpus`
        (stage_threads_for)."""
        self.alone_threads = alone_threads
        """Most torch threads a stage program gets when it runs alone on idle cores (stage_threads)."""
        self.explicit_cpus = cpus
        """The cores given to this run (`bench/flywheel.py --cpus`): every stage then gets its even share of them,
        at most `stage_threads`, whatever the machine is doing (a reproducible chain); None: measured per stage."""
        self.thread_choices: dict[str, int] = {}
        """Torch threads each child was started on (stage_threads)."""
        self.oracle_draws = oracle_draws
        """Draws of the report's oracle to compute for a starting policy kept in the cache (generation 0) in the
        second process while the user traffic is simulated (flywheel_local.oracle_runs.prefetch); None: none (only
        a run that writes the report with the oracle asks for it)."""
        self.warm_start = warm_start and _warm_available()
        """Fork stage processes from a server that has imported their libraries (flywheel_local.warm)."""
        self._side: Any = None
        self.note = note
        """Where slow in-process work (generation 0, simulated traffic) is announced."""
        self.paths = paths
        self.world_file = world_file
        self.cache_dir = cache_dir
        self.cpus = cpus or usable_cores()
        self.canary = SimulatedCanary(paths.canary, world_file, note, user_traffic=paths.traffic("user"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.configs: dict[str, StageConfig] = {}
        self._resolved: dict[str, str] = {}
        self.launched: list[str] = []
        """Children started by this backend (a resumed run starts only unfinished ones)."""
        self.timings: dict[str, float] = {}
        """Seconds of in-process work the user waited on, by phase (generation 0, traffic, the A/B simulation)."""

    @contextlib.contextmanager
    def timed(self, phase: str, announce: str | None = None) -> Iterator[None]:
        """Time a phase of in-process work the user waits on: announce it, then say how long it took."""
        if announce is not None:
            self.note(announce)
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.timings[phase] = self.timings.get(phase, 0.0) + seconds
            if announce is not None:
                self.note(f"{phase}: {seconds:.0f}s")

    # ------------------------------------------------------------------------------------------ policies
    def resolve_policy(self, uri: str) -> str:
        """A policy reference as a model directory: `sim://generation-0` is built (or read from the cache)."""
        if not sources.is_sim(uri):
            return uri
        if uri not in self._resolved:
            with self.timed("generation 0", f"generation 0 of the simulated world ({uri}; built once, then cached in "
                            f"{self.cache_dir})"):
                self._resolved[uri] = str(sources.generation0(uri, self.world_file, self.cache_dir))
        return self._resolved[uri]

    def _resolve_source(self, source: TrafficSource | None, policy_dir: str, *,
                        split: bool = False) -> TrafficSource | None:
        """The source with its `sim://` URI replaced by its simulated log (simulated here unless on disk); `split`:
        each policy call shares its batches with a second process (users.SplitPolicy, the same logs)."""
        if source is None or not sources.is_sim(source.uri):
            return source
        from flywheel_local.users import simulate_source

        parsed = sources.parse_sim_uri(source.uri)
        if not isinstance(parsed, sources.TrafficUri):
            raise sources.SimUriError(f"{source.uri}: traffic must be sim://users or sim://internal-testers")
        cached = (self.paths.traffic(parsed.source) / "events.jsonl").is_file()
        announce = f"simulating {parsed.days} day(s) of {parsed.source} traffic with the starting policy"
        with self.timed(f"{parsed.source} traffic", None if cached else announce):
            log = simulate_source(
                self.world_file,
                policy_dir,
                self._policy_name(),
                parsed,
                self.paths.traffic(parsed.source),
                seed=self.generation.spec.generation,
                cache_dir=self.cache_dir,
                split=split,
            )
        return source.model_copy(update={"uri": str(log)})

    def _side_worker(self) -> Any:
        """A second process for in-process work that can go alongside this one's (simulated traffic of another
        source, the oracle prefetch): a pool of one when the cores hold two samplers at the world's
        `serving.threads` each (_side_worker_fits), None otherwise. Forked from the warm forkserver once it has
        forked a stage (warm.ready_context: no imports, no model-free start-up cost), else spawned; the first
        generation's traffic forks it from the server as soon as its preload is done (_hand_to_side)."""
        if self._side is None and self._side_worker_fits():
            from flywheel_local import warm

            self._side = _pool_of_one(warm.ready_context())
        return self._side

    def _side_worker_fits(self) -> bool:
        from flywheel_sim import load_world

        from flywheel_local import warm

        threads = load_world(self.world_file).serving.threads
        # cores given (--cpus: a chain, maybe beside others with --jobs): only onto cores that are idle now; the
        # warm server's preload, which this run started a moment ago, counts as this run's (a chain's first
        # generation simulated its sources one after the other: the preload's imports took the core it looked at)
        server = warm.server_pid()
        idle = idle_cores(own=[server] if server else ()) \
            if self.explicit_cpus is not None and threads is not None else None
        return side_worker_fits(threads, self.cpus, usable_cores(), idle=idle)

    def _hand_to_side(self, others: Sequence[sources.TrafficUri], policy_dir: str, oracle: bool) -> list[Any]:
        """Hand the simulation of `others` (and with `oracle`, the starting policy's oracle) to the side worker, made
        here if there is none yet: forked from the warm server even while its preload runs, for a thread beside the
        first source's simulation waits for it (6.5 CPU-s of a spawned worker's imports against 1.5 forked, the
        first generation of `make run`). Returns (source, its AsyncResult) pairs."""
        if self._side is None:
            from flywheel_local import warm

            self._side = _pool_of_one(warm.server_context())
        running = [(parsed, self._side.apply_async(_simulate_source, self._simulation_args(parsed, policy_dir)))
                   for parsed in others]
        if oracle:
            from flywheel_local.oracle_runs import prefetch

            prefetch(policy_dir, self.world_file, self.cache_dir, pool=self._side, draws=self.oracle_draws)
        return running

    def _simulate_sources(self, config: StageConfig, policy_dir: str) -> None:
        """Simulate the config's `sim://` traffic sources that are not on disk yet: the first in this process and
        the others at the same time in the side worker (each source's logs are those of simulating it alone: the
        simulator's draws are keyed by seed, day and source, and the policy samples on `serving.threads`
        threads in either process). With `oracle_draws`, the starting policy's oracle follows them there."""
        from concurrent.futures import ThreadPoolExecutor

        from flywheel_local.users import on_disk

        pending: dict[str, tuple[sources.TrafficUri, TrafficSource]] = {}
        for name in ("user_traffic", "internal_traffic", "eval_prompts_user", "eval_prompts_internal"):
            source = getattr(config.data, name)
            if source is None or not sources.is_sim(source.uri):
                continue
            parsed = sources.parse_sim_uri(source.uri)
            if not isinstance(parsed, sources.TrafficUri):
                raise sources.SimUriError(f"{source.uri}: traffic must be sim://users or sim://internal-testers")
            if parsed.source not in pending and not on_disk(self.world_file, policy_dir, self._policy_name(), parsed,
                                                            self.paths.traffic(parsed.source),
                                                            seed=self.generation.spec.generation,
                                                            cache_dir=self.cache_dir):
                pending[parsed.source] = (parsed, source)
        # the oracle is kept by content for a policy inside the cache only (generation 0): oracle_runs.prefetch
        oracle = self.oracle_draws is not None and Path(policy_dir).resolve().is_relative_to(
            Path(self.cache_dir).resolve())
        wanted = len(pending) > 1 or (pending and oracle)
        if not wanted or (self._side is None and not self._side_worker_fits()):
            return  # _resolve_source simulates them one after another
        (_, first), *others = pending.values()
        for parsed, _ in others:
            self.note(f"simulating {parsed.days} day(s) of {parsed.source} traffic with the starting policy "
                      "(in a second process, alongside)")
        with ThreadPoolExecutor(1) as thread:
            handed = thread.submit(self._hand_to_side, [parsed for parsed, _ in others], policy_dir, oracle)
            # the cores hold two samplers: without the report's oracle to follow, the side worker's work (the
            # shorter internal traffic) leaves its core idle early, so the first source's calls share their
            # batches with a second process too (with it, make run's traffic: 21 s against 22 s, split)
            self._resolve_source(first, policy_dir, split=not oracle)
            running = handed.result()
        for parsed, result in running:
            _, seconds = result.get()
            phase = f"{parsed.source} traffic"
            self.timings[phase] = self.timings.get(phase, 0.0) + seconds
            self.note(f"{phase}: {seconds:.0f}s (alongside)")

    def status_written(self, status: FlywheelGenerationStatus) -> None:
        """Hand the report's work that `status` makes possible to the side worker once the candidate exists (eval
        starts): the reward models' agreement with the oracle (`rm_oracle.json`), then the candidate's oracle draws.
        A stage that starts while the side worker has work gets one thread fewer (stage_threads), and eval, beside
        the draws, gets one anyway; handed as SFT started (before), the check kept SFT on one thread, and as RL
        started, RL (make run's gen1, the same weights on 1 and 2 threads: SFT 18.5 and 12.8 s, RL 13.5 and
        12.0 s), for a check of a few CPU-seconds. A generation whose RL never succeeds leaves both to the
        report. Only with `oracle_draws` (a run that writes the report); the report waits for both and finds them
        done (the same figures as computing them itself: tests/local/test_report_prefetch.py). In every run, the
        A/B test's first day starts while eval runs (_simulate_ahead)."""
        if status.phase == "Evaluating" and status.candidate_policy is not None and status.policy is not None:
            self._simulate_ahead(status)
        if self.oracle_draws is None or status.candidate_policy is None:
            return
        side = self._side_worker()
        if side is None:
            return
        from flywheel_local.oracle_runs import hand_over, prefetch

        rewards = [r for r in status.stages if r.name.startswith("reward-")]
        if any(r.state == "Succeeded" for r in rewards) and all(r.state in ("Succeeded", "Failed") for r in rewards):
            from flywheel_local.rm_oracle import compute_rm_agreement, prefetch_key

            # the status itself, not status.json: the runner writes that after carry_out, which hands this over
            # first (a status.json with the reward models still Running would leave a stale rm_oracle.json)
            root = self.paths.root.resolve()
            hand_over(prefetch_key(self.paths.root), side, compute_rm_agreement, root, self.world_file,
                      {str(root): json.dumps(status.to_wire())})
        from flywheel_local.report import _model_dir

        model = _model_dir(status.candidate_policy, self.paths.root)
        if model is not None and Path(model, "config.json").is_file():
            prefetch(model, self.world_file, self.cache_dir, pool=side, draws=self.oracle_draws)

    def _simulation_args(self, parsed: sources.TrafficUri, policy_dir: str) -> tuple[Any, ...]:
        return (self.world_file, policy_dir, self._policy_name(), parsed, self.paths.traffic(parsed.source),
                self.generation.spec.generation, self.cache_dir)

    def close(self) -> None:
        """Let the side worker finish what it was handed (the oracle prefetch) and end it."""
        if self._side is not None:
            self._side.close()
            self._side.join()
            self._side = None

    def _policy_name(self) -> str:
        parent = self.generation.spec.parent
        return parent if parent is not None else "generation-0"

    def render(self, config: StageConfig) -> StageConfig:
        """The config as the subprocess reads it: every `sim://` URI replaced by the file it stands for."""
        policy = self.resolve_policy(config.policy)
        self._simulate_sources(config, policy)
        data = config.data.model_copy(
            update={
                name: self._resolve_source(getattr(config.data, name), policy)
                for name in ("user_traffic", "internal_traffic", "eval_prompts_user", "eval_prompts_internal")
            }
        )
        update: dict[str, Any] = {"policy": policy, "data": data}
        if config.stage == "eval":  # issue 26: measure what the simulated users meet
            from flywheel_sim import load_world

            update["settings"] = served_eval_settings(config.settings, load_world(self.world_file).serving)
        return config.model_copy(update=update)

    # ------------------------------------------------------------------------------------------- actions
    def carry_out(self, actions: Sequence[Action], status: FlywheelGenerationStatus) -> None:
        starts = [a for a in actions if isinstance(a, StartStage)]
        if starts:
            # the side worker's work that this status makes possible goes first, so that a stage starting alone
            # knows whether it shares the cores with it (status_written hands each piece once)
            self.status_written(status)
        for action in starts:
            self._start(action, parallel=len(starts))
        for action in actions:
            if isinstance(action, DeployCanary):
                self._deploy(action)
            elif isinstance(action, PromoteCanary):
                self.canary.finish("Promoted")
            elif isinstance(action, RollBackCanary):
                self.canary.finish("RolledBack")

    def _deploy(self, action: DeployCanary) -> None:
        resolved = DeployCanary(
            inference_service=action.inference_service,
            mode=action.mode,
            traffic_percent=action.traffic_percent,
            candidate_policy=self.resolve_policy(action.candidate_policy),
            control_policy=self.resolve_policy(action.control_policy),
        )
        with self.timed("A/B simulation"):
            self._deploy_resolved(resolved)

    def _deploy_resolved(self, resolved: DeployCanary) -> None:
        self.canary.deploy(resolved, **self._experiment())

    def _experiment(self) -> dict[str, Any]:
        """The simulated experiment's settings besides the policies (SimulatedCanary.deploy's keywords)."""
        return {"experiment": self.generation.metadata.name, "days": simulated_days(_max_duration(self.generation)),
                "seed": self.generation.spec.generation, "people": _simulated_people(self.generation)}

    def _simulate_ahead(self, status: FlywheelGenerationStatus) -> None:
        """The A/B test's first day while eval runs (SimulatedCanary.simulate_ahead), for the deployment the planner
        asks for once the offline gate passes: the parent against the candidate at the spec's traffic share."""
        assert status.policy is not None and status.candidate_policy is not None
        self.canary.simulate_ahead(CanaryState(
            control_policy=self.resolve_policy(status.policy),
            candidate_policy=self.resolve_policy(status.candidate_policy),
            traffic_percent=self.generation.spec.canary.traffic_percent,
            **self._experiment(),
        ))

    def _start(self, action: StartStage, *, parallel: int) -> None:
        if action.child in self.procs and self.procs[action.child].poll() is None:
            return  # idempotent: this child runs already
        self.warm_up()  # the server imports while the inputs are rendered (traffic simulated)
        config = self.render(action.config)
        path = self.paths.config(action.child)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(config.to_wire(), indent=2) + "\n")
        self.configs[action.child] = config
        self._launch(action.child, config.stage, path, parallel=parallel)

    def _launch(self, child: str, stage: str, config_path: Path, *, parallel: int) -> None:
        self._stop_orphan(child)
        log = self.paths.log(child)
        log.parent.mkdir(parents=True, exist_ok=True)
        threads = self._threads(parallel)
        self.thread_choices[child] = threads
        env = _stage_env(threads)
        with log.open("ab") as handle:
            handle.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} start {child} on {threads} torch thread(s)"
                         f"{' (warm: forked after the imports)' if self.warm_start else ''}\n".encode())
        proc = self._warm(stage, config_path, log, env) if self.warm_start else None
        if proc is None:
            with log.open("ab") as handle:
                proc = subprocess.Popen(
                    [*_train_command(), stage, "--config", str(config_path)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches the runner only; it stops the children itself
                )
        self.procs[child] = proc
        self.launched.append(child)
        pid_file = self.paths.pid(child)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{proc.pid}\n")
        pid_file.with_suffix(".started").write_text(f"{_start_time(proc.pid)}\n")  # names the process for good

    def _threads(self, parallel: int) -> int:
        """Torch threads of a stage started with `parallel - 1` others (stage_threads): the idle cores are looked
        at only for a stage that starts alone on cores not given explicitly."""
        others = len(self.running())
        if self.explicit_cpus is not None or parallel + others > 1:
            return stage_threads(cores=self.cpus, parallel=parallel + others, explicit=self.explicit_cpus is not None,
                                 idle=0.0, side_busy=False, most_shared=self.stage_threads,
                                 most_alone=self.alone_threads)
        side = self._side
        own = [worker.pid for worker in getattr(side, "_pool", [])] if side is not None else []
        return stage_threads(cores=self.cpus, parallel=1, explicit=False, idle=idle_cores(own=own),
                             side_busy=side_busy(), most_shared=self.stage_threads, most_alone=self.alone_threads)

    def _warm(self, stage: str, config_path: Path, log: Path, env: dict[str, str]) -> Any:
        """The stage forked after the imports (flywheel_local.warm), or None to start it cold."""
        from flywheel_local import warm

        try:
            return warm.start([stage, "--config", str(config_path)], log, env)
        except (OSError, EOFError, ValueError, RuntimeError, ImportError) as exc:
            self.warm_start = False
            self.note(f"stages start cold from now on: the warm start failed ({type(exc).__name__}: {exc})")
            return None

    def warm_up(self) -> None:
        """Start the warm-start server's imports now (they run while traffic is simulated)."""
        if not self.warm_start:
            return
        from flywheel_local import warm

        try:
            warm.warm_up(_stage_env(1))
        except (OSError, EOFError, ValueError, RuntimeError, ImportError):
            self.warm_start = False

    def _stop_orphan(self, child: str) -> None:
        """A subprocess left running by a runner that was killed: stop it before starting the child again."""
        pid_file = self.paths.pid(child)
        if child in self.procs or not pid_file.is_file():
            return
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (ValueError, OSError):
            return
        started_file = pid_file.with_suffix(".started")
        started = started_file.read_text().strip() if started_file.is_file() else ""
        # a cold start names its config on its command line; a warm one (forked) is known by its start time
        if str(self.paths.config(child)).encode() in cmdline or (started and started == _start_time(pid)):
            _terminate_group(pid)

    # ------------------------------------------------------------------------------------------ observing
    def observe(
        self, status: FlywheelGenerationStatus, now: datetime, parent: ParentObservation | None
    ) -> Observed:
        jobs = {}
        for record in status.stages:
            if record.state == "Running":
                jobs[record.child] = self._job(record.child, record.name)
        online = None
        if status.online is not None and status.online.started_at is not None and status.canary is not None:
            if status.canary.phase == "Ready":
                with self.timed("A/B simulation"):
                    self.canary.reveal(now - status.online.started_at)
            online = self.canary.reading(now)
        return Observed(now=now, jobs=jobs, canary=self.canary.observation(), online=online, parent=parent)

    def _job(self, child: str, stage: str) -> JobObservation:
        proc = self.procs.get(child)
        output = self._output_dir(child, stage)
        if proc is None:
            if output is not None and storage.exists(storage.join(output, RESULT_FILE)):
                return JobObservation(name=child, state="Succeeded", result=_read_result(output))
            self._relaunch(child)
            return JobObservation(name=child, state="Running")
        code = proc.poll()
        if code is None:
            return JobObservation(name=child, state="Running")
        if code == 0:
            return JobObservation(
                name=child, state="Succeeded", result=_read_result(output) if output is not None else None
            )
        return JobObservation(name=child, state="Failed", message=f"exit code {code}: {self.log_tail(child)}")

    def _output_dir(self, child: str, stage: str) -> str | None:
        config = self.configs.get(child) or self._saved_config(child)
        return config.output_dir if config is not None else None

    def _saved_config(self, child: str) -> StageConfig | None:
        path = self.paths.config(child)
        if not path.is_file():
            return None
        config = StageConfig.model_validate_json(path.read_text())
        self.configs[child] = config
        return config

    def _relaunch(self, child: str) -> None:
        """Start a child that was interrupted (or never started) from its saved config."""
        config = self._saved_config(child)
        if config is None:
            return  # never written: the planner re-requests it after its visibility grace
        with self.paths.log(child).open("ab") as handle:
            handle.write(b"# the runner was stopped while this stage ran; starting it again\n")
        self._launch(child, config.stage, self.paths.config(child), parallel=1)

    def log_tail(self, child: str) -> str:
        try:
            lines = self.paths.log(child).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "no log"
        interesting = [line for line in lines if line.strip() and not line.startswith(("{", "# "))]
        return " | ".join(interesting[-LOG_TAIL_LINES:])[-1500:]

    def running(self) -> list[str]:
        return [child for child, proc in self.procs.items() if proc.poll() is None]

    def wait(self, timeout: float) -> None:
        """Sleep until a running stage exits or `timeout` seconds pass, whichever is first (a finished stage is
        observed at once instead of at the next poll; where pidfds are missing, a plain sleep)."""
        import select

        descriptors = []
        try:
            for child in self.running():
                descriptors.append(os.pidfd_open(self.procs[child].pid))
            if descriptors:
                select.select(descriptors, [], [], timeout)
            else:
                time.sleep(timeout)
        except (AttributeError, OSError):  # no os.pidfd_open (not Linux), or the process is already gone
            time.sleep(timeout)
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    # ------------------------------------------------------------------------------------------ stopping
    def stop(self) -> list[str]:
        """Terminate every running child (SIGTERM to its session, SIGKILL after a grace); returns their names."""
        self.canary.close()
        if self._side is not None:
            from flywheel_local.oracle_runs import forget_prefetches

            forget_prefetches()
            self._side.terminate()
            self._side.join()
            self._side = None
        running = self.running()
        for child in running:
            _terminate_group(self.procs[child].pid, wait=False)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            proc = self.procs[child]
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
        return running


def _simulate_source(world_file: Path, policy_dir: str, policy_name: str, parsed: sources.TrafficUri, out: Path,
                     seed: int, cache_dir: Path) -> tuple[str, float]:
    """flywheel_local.users.simulate_source in the side worker: the log file and the seconds it took there."""
    from flywheel_local.users import simulate_source

    started = time.monotonic()
    log = simulate_source(world_file, policy_dir, policy_name, parsed, out, seed=seed, cache_dir=cache_dir)
    return str(log), time.monotonic() - started


def served_eval_settings(settings: StageSettings, serving: Any) -> StageSettings:
    """`settings` with the eval stage's unset `maxNewTokens` and `temperature` taken from the world's `serving`
    (what the simulated users meet, and what the oracle samples with); set ones are kept (issue 26)."""
    chosen = settings.eval
    served = chosen.model_copy(update={
        "max_new_tokens": serving.max_new_tokens if chosen.max_new_tokens is None else chosen.max_new_tokens,
        "temperature": serving.temperature if chosen.temperature is None else chosen.temperature,
    })
    return settings.model_copy(update={"eval": served})


def _pool_of_one(context: Any) -> Any:
    """A multiprocessing pool of one process started by `context`; spawned where it is None."""
    import multiprocessing

    return (context or multiprocessing.get_context("spawn")).Pool(1)


def _warm_available() -> bool:
    from flywheel_local import warm

    return warm.available()


def side_worker_fits(serving_threads: int | None, cpus: int, machine_cores: int, *, idle: float | None = None) -> bool:
    """Whether a side worker sampling on `serving_threads` threads fits beside the runner's own sampler: two of them
    on the cores, counted as the larger of the `cpus` given (or measured) and the machine's `machine_cores`.
    `cpus` given (`bench/flywheel.py --cpus 1`) caps each stage program's torch threads, so that every stage sums
    in the same order on any machine; it does not make the machine smaller: a chain on one thread per stage still
    simulates its user and internal traffic side by side on two idle cores (the logs are those of simulating each
    source alone: tests/local/test_traffic_alongside.py). `idle`: the cores measured idle (idle_cores; the caller
    measures where cores were given), which must then hold both samplers too (IDLE_SLACK): two chains side by side
    (`--jobs 2`) or a loaded machine leave no idle core, and a second process there only competes (a chain
    generation's traffic 49.7 s one after another against 61.2 s side by side at load 3.5,
    bench/results/local_overlap.json). None: torch's default thread count, which would take every core: no side
    worker."""
    if serving_threads is None:
        return False
    if idle is not None and idle + IDLE_SLACK < 2 * serving_threads:
        return False
    return 2 * serving_threads <= max(cpus, machine_cores)


def stage_threads_for(cpus: int, parallel: int, most: int = STAGE_THREADS) -> int:
    """Torch threads of each of `parallel` stage programs started together on `cpus` cores: an even share of the
    cores, at most `most` (STAGE_THREADS), at least one."""
    if most < 1:
        raise ValueError(f"stage_threads must be at least 1; got {most}")
    return max(1, min(most, cpus // max(1, parallel)))


def stage_threads(*, cores: int, parallel: int, explicit: bool, idle: float, side_busy: bool,
                  most_shared: int = STAGE_THREADS, most_alone: int = ALONE_THREADS) -> int:
    """Torch threads of each of `parallel` stage programs running together on `cores` cores (pure: the caller
    measures). `explicit`: the cores were given (`--cpus`), so every stage gets stage_threads_for's even share,
    capped at `most_shared`, whatever the machine does (byte-identical chains). Otherwise stages side by side get
    that share too (one thread each: STAGE_THREADS); a stage alone gets the cores that were `idle` (measured,
    with this run's side worker counted as idle: idle_cores), less one when the side worker has work
    (`side_busy`, flywheel_local.oracle_runs), rounded down with IDLE_SLACK, between 1 and `most_alone`."""
    if cores < 1:
        raise ValueError(f"cores must be at least 1; got {cores}")
    if explicit or parallel > 1:
        return stage_threads_for(cores, parallel, most_shared)
    if most_alone < 1:
        raise ValueError(f"alone_threads must be at least 1; got {most_alone}")
    free = min(float(cores), max(0.0, idle)) - (1 if side_busy else 0)
    return max(1, min(most_alone, cores, int(free + IDLE_SLACK)))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; os.cpu_count where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_ticks() -> dict[str, tuple[int, int]]:
    """(idle, total) clock ticks of each core in /proc/stat ("cpuN" lines), {} where it is missing."""
    out = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(v) for v in fields[:8]]
            out[name] = (values[3] + values[4], sum(values))
    return out


def _process_ticks(pids: Sequence[int]) -> int:
    """User + system clock ticks of processes `pids` (/proc/PID/stat fields 14 and 15); gone ones count 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def idle_cores(window: float = IDLE_WINDOW_SECONDS, own: Sequence[int] = ()) -> float:
    """Cores of this process's affinity that were idle over `window` seconds (/proc/stat), with the CPU time of
    the `own` processes (this run's side worker, whose work side_busy counts) added back as idle; 0.0 where
    /proc is missing (then a stage alone gets one thread)."""
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        mine = None
    before, own_before = _cpu_ticks(), _process_ticks(own)
    time.sleep(window)
    after, own_after = _cpu_ticks(), _process_ticks(own)
    idle = 0.0
    total_ticks = 0
    for name, (idle_after, total_after) in after.items():
        if (mine is not None and name not in mine) or name not in before:
            continue
        spent = total_after - before[name][1]
        if spent > 0:
            idle += (idle_after - before[name][0]) / spent
            total_ticks += spent
    if not total_ticks:
        return 0.0
    cores = total_ticks / max(1, len([n for n in after if mine is None or n in mine]))
    return idle + (own_after - own_before) / cores


def side_busy() -> bool:
    """Whether this process handed the side worker work it has not finished (flywheel_local.oracle_runs)."""
    from flywheel_local.oracle_runs import pending

    return pending() > 0


def _stage_env(threads: int) -> dict[str, str]:
    """The environment of a stage process on `threads` CPU threads."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }


def _start_time(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22): with the pid, it names
    one process for good (a pid alone may be reused); "" where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _train_command() -> list[str]:
    """`flywheel-train` of this environment (the console script next to the interpreter), else `-m`."""
    script = Path(sys.executable).with_name("flywheel-train")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flywheel_trainer.cli"]


def _read_result(output: str) -> StageResult | None:
    try:
        return StageResult.model_validate_json(storage.read_text(storage.join(output, RESULT_FILE)))
    except (OSError, ValueError, storage.StorageError):
        return None


def _terminate_group(pid: int, *, wait: bool = True) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait:
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _max_duration(generation: FlywheelGeneration) -> timedelta:
    return parse_duration(generation.spec.canary.max_duration)


def _simulated_people(generation: FlywheelGeneration) -> int | None:
    """The canary simulates the same slice of the population as the user traffic (`sim://users?people=N`)."""
    uri = generation.spec.data.user_traffic.uri
    parsed = sources.parse_sim_uri(uri) if sources.is_sim(uri) else None
    return parsed.people if isinstance(parsed, sources.TrafficUri) else None
