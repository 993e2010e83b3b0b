"""`flywheel run FILE`: the reconcile loop on one machine — plan, carry out, write status.json, wait.

The planner decides; the LocalBackend carries out. The status document (`<run>/<generation>/status.json`) has
the custom resource's status shape and is written atomically whenever it changes, so running the same command
again resumes where the last run stopped: finished stages are read back, never re-run. With `--generations N`
each promoted candidate becomes the next generation's parent; a rolled-back one does not.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from flywheel_operator import storage
from flywheel_operator.api import TERMINAL_PHASES, FlywheelGeneration, FlywheelGenerationStatus, StageRecord
from flywheel_operator.planner import Event, ParentObservation, plan

from flywheel_local.backend import LocalBackend, RunPaths
from flywheel_local.clock import SimulatedClock
from flywheel_local.progress import Display
from flywheel_local.report import source_commit

RUN_FILE = "run.json"
CLOCK_FILE = "clock.json"
POLL_SECONDS = 0.5
SIMULATED_TIME_PHASES = frozenset({"Canary", "Observing"})
"""Phases in which waiting is simulated (the clock jumps) instead of slept."""


class LocalRunError(Exception):
    """The run cannot start or go on; the message says what to change."""


@dataclass
class GenerationOutcome:
    """How one generation ended (or stopped)."""

    name: str
    status: FlywheelGenerationStatus
    paths: RunPaths
    launched: list[str] = field(default_factory=list)


def load_manifest(path: Path) -> FlywheelGeneration:
    """The FlywheelGeneration in `path`, with every problem named as `flywheel validate` names it."""
    from flywheel_operator.validation import load_documents, other_kind, problems_of

    try:
        documents = [d for d in load_documents(path) if other_kind(d) is None]
    except (OSError, ValueError) as exc:
        raise LocalRunError(f"{path}: cannot read the manifest: {exc}") from exc
    if len(documents) != 1:
        raise LocalRunError(f"{path}: expected exactly one FlywheelGeneration, found {len(documents)}")
    problems = problems_of(documents[0])
    if problems:
        raise LocalRunError(f"{path}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))
    return FlywheelGeneration.model_validate(documents[0])


DEFAULT_RUN_DIR = Path("runs")


def default_run_dir(generation: FlywheelGeneration) -> Path:
    """`resources.storage.uri` when it is a local directory, else `runs`.

    As on a cluster, the storage URI is the root that holds one directory per generation (`<root>/<name>/`),
    so `uri: runs` puts generation gen1 in `runs/gen1/`, its successors beside it.
    """
    uri = generation.spec.resources.storage.uri
    if uri is not None and not storage.scheme(uri):
        return Path(uri)
    return DEFAULT_RUN_DIR


def successor(first: FlywheelGeneration, index: int, parent: str | None) -> FlywheelGeneration:
    """Generation `index` (0-based) of a chained run: number and name advance, the parent is the last promoted.

    With no promoted generation yet, it starts again from the first generation's base policy.
    """
    if index == 0:
        return first
    number = first.spec.generation + index
    name = first.metadata.name
    match = re.fullmatch(r"(.*?)(\d+)", name)
    new_name = f"{match.group(1)}{number}" if match else f"{name}-{index + 1}"
    spec = first.spec.model_copy(
        update={
            "generation": number,
            "parent": parent,
            "base_policy": None if parent is not None else first.spec.base_policy,
        }
    )
    metadata = first.metadata.model_copy(update={"name": new_name})
    return first.model_copy(update={"metadata": metadata, "spec": spec, "status": None})


def read_status(paths: RunPaths) -> FlywheelGenerationStatus | None:
    if not paths.status.is_file():
        return None
    return FlywheelGenerationStatus.model_validate_json(paths.status.read_text())


def _write_status(paths: RunPaths, status: FlywheelGenerationStatus) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.status.with_name("status.json.tmp")
    tmp.write_text(json.dumps(status.to_wire(), indent=2) + "\n")
    tmp.replace(paths.status)


def _log_events(paths: RunPaths, display: Display, events: tuple[Event, ...], now: datetime, name: str) -> None:
    if not events:
        return
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.events.open("a", encoding="utf-8") as handle:
        for event in events:
            handle.write(f"{now.isoformat()} {event.type} {event.reason}: {event.message}\n")
            display.event(f"{name}: {event.message}", warning=event.type == "Warning")


class Runner:
    """Runs generations in `run_dir` with the world in `world_file`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        world_file: Path,
        cache_dir: Path,
        display: Display,
        cpus: int | None = None,
        poll_seconds: float = POLL_SECONDS,
        oracle_draws: int | None = None,
    ) -> None:
        self.run_dir = run_dir.resolve()
        self.oracle_draws = oracle_draws
        """The run ends with the report's oracle of this many draws: compute generation 0's alongside its traffic
        (LocalBackend); None: the run writes no oracle."""
        self.world_file = world_file.resolve()
        self.cache_dir = cache_dir.resolve()
        self.display = display
        self.cpus = cpus
        self.poll_seconds = poll_seconds
        self.clock = SimulatedClock(self.run_dir / CLOCK_FILE)
        self.backend: LocalBackend | None = None
        self.timings: dict[str, float] = {}
        """Seconds of in-process work this run waited on, by phase, over every generation it ran."""

    # --------------------------------------------------------------------------------------------- runs
    def run(self, first: FlywheelGeneration, generations: int = 1) -> list[GenerationOutcome]:
        """Run `generations` chained generations (resuming any that already started)."""
        self._record_run(first, generations)
        outcomes: list[GenerationOutcome] = []
        parent: str | None = first.spec.parent
        for index in range(generations):
            generation = successor(first, index, parent)
            outcome = self.run_generation(generation)
            outcomes.append(outcome)
            if outcome.status.phase == "Promoted":
                parent = outcome.name
            elif outcome.status.phase not in TERMINAL_PHASES:
                break  # suspended
        return outcomes

    def _record_run(self, first: FlywheelGeneration, generations: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / RUN_FILE
        known = json.loads(path.read_text()) if path.is_file() else {}
        record = {
            "first": first.metadata.name,
            "generations": max(generations, int(known.get("generations", 0))),
            "world": str(self.world_file),
            "cache": str(self.cache_dir),
            "commit": source_commit(),
        }
        path.write_text(json.dumps(record, indent=2) + "\n")

    def record_wall_time(self, seconds: float) -> None:
        """Add this invocation's wall time to run.json (the report shows it)."""
        path = self.run_dir / RUN_FILE
        record = json.loads(path.read_text()) if path.is_file() else {}
        record["wallSeconds"] = round(seconds, 1)
        path.write_text(json.dumps(record, indent=2) + "\n")

    def run_generation(self, generation: FlywheelGeneration) -> GenerationOutcome:
        """Plan → act → write status → wait, until the generation is Promoted, RolledBack, Failed or Suspended."""
        name = generation.metadata.name
        paths = RunPaths(self.run_dir / name)
        storage = generation.spec.resources.storage.model_copy(update={"uri": str(self.run_dir), "pvc": None})
        resources = generation.spec.resources.model_copy(update={"storage": storage})
        spec = generation.spec.model_copy(update={"resources": resources})
        previous = read_status(paths)
        generation = generation.model_copy(
            update={"spec": spec, "status": previous.to_wire() if previous is not None else None}
        )
        paths.root.mkdir(parents=True, exist_ok=True)
        (paths.root / "generation.json").write_text(json.dumps(generation.model_dump(mode="json", by_alias=True,
                                                                                     exclude={"status"}), indent=2))
        if previous is not None and previous.phase in TERMINAL_PHASES:
            self.display.event(f"{name}: already {previous.phase} ({_decision_line(previous)})")
            return GenerationOutcome(name, previous, paths)
        if previous is not None:
            self.display.event(f"{name}: resuming at {previous.phase} from {paths.status}")
        backend = LocalBackend(
            generation,
            paths,
            world_file=self.world_file,
            cache_dir=self.cache_dir,
            cpus=self.cpus,
            note=lambda text: self.display.event(f"{name}: {text}"),
            oracle_draws=self.oracle_draws,
        )
        self.backend = backend
        parent = self._parent(generation)
        status = previous or FlywheelGenerationStatus()
        while True:
            now = self.clock.now()
            observed = backend.observe(status, now, parent)
            result = plan(generation, observed)
            self._show_running(result.status, paths)
            backend.carry_out(result.actions, result.status)
            _log_events(paths, self.display, result.events, now, name)
            if result.status != status or previous is None:
                _write_status(paths, result.status)
                backend.status_written(result.status)
                previous = result.status
                self._track(generation, status, result.status)
            self._show_finished(status, result.status)
            status = result.status
            generation = generation.model_copy(update={"status": status.to_wire()})
            if status.phase in TERMINAL_PHASES or status.phase == "Suspended":
                backend.close()
                for phase, seconds in backend.timings.items():
                    self.timings[phase] = self.timings.get(phase, 0.0) + seconds
                return GenerationOutcome(name, status, paths, list(backend.launched))
            if result.actions:
                continue
            self._wait(backend, status, result.requeue_at)

    def _track(self, generation: FlywheelGeneration, before: FlywheelGenerationStatus,
               after: FlywheelGenerationStatus) -> None:
        """Log the gates' results to the generation's MLflow run; register a promoted model (spec.tracking)."""
        tracking = generation.spec.tracking
        if tracking is None or tracking.mlflow is None:
            return
        from flywheel_operator import tracking as tracker

        registered = tracking.mlflow.registered_model or generation.spec.canary.inference_service
        for note in tracker.record(tracking.mlflow, generation.metadata.name, before, after,
                                   registered_model=registered):
            self.display.event(f"{generation.metadata.name}: {note}", warning=note.startswith("tracking:"))

    def _wait(self, backend: LocalBackend, status: FlywheelGenerationStatus, requeue_at: datetime | None) -> None:
        if backend.running():
            self.display.refresh()
            backend.wait(self.poll_seconds)  # wakes when a stage exits
            return
        if requeue_at is None:
            time.sleep(self.poll_seconds)
            return
        if status.phase in SIMULATED_TIME_PHASES:
            self.clock.jump_to(requeue_at)
            return
        remaining = (requeue_at - self.clock.now()).total_seconds()
        time.sleep(min(max(remaining, 0.0), self.poll_seconds))

    def _parent(self, generation: FlywheelGeneration) -> ParentObservation | None:
        parent = generation.spec.parent
        if parent is None:
            return None
        status = read_status(RunPaths(self.run_dir / parent))
        if status is None:
            raise LocalRunError(
                f"spec.parent {parent!r} has no status in {self.run_dir}: locally a parent must be a generation "
                "of the same run directory; give spec.basePolicy instead, or run the parent first"
            )
        return ParentObservation(name=parent, phase=status.phase, promoted_policy=status.promoted_policy)

    def stop(self) -> list[str]:
        """Stop the running stage subprocesses (Ctrl-C); the status on disk is already current."""
        return self.backend.stop() if self.backend is not None else []

    # ------------------------------------------------------------------------------------------ display
    def _show_running(self, status: FlywheelGenerationStatus, paths: RunPaths) -> None:
        for record in status.stages:
            if record.state == "Running":
                self.display.start_task(record.child, record.name, log=paths.log(record.child))

    def _show_finished(self, before: FlywheelGenerationStatus, after: FlywheelGenerationStatus) -> None:
        for record in after.stages:
            old = before.record(record.name)
            if record.state in ("Succeeded", "Failed", "Retrying") and (old is None or old.state == "Running"):
                self.display.finish_task(record.child, ok=record.state == "Succeeded")
                if record.state == "Succeeded":
                    self.display.event(f"{after_name(record)}: {stage_time(record)}")


def after_name(record: StageRecord) -> str:
    """`gen1: stage curate` from the child's name `gen1-curate-1`."""
    generation = record.child.removesuffix(f"-{record.name}-{record.attempts}")
    return f"{generation}: stage {record.name}"


def stage_time(record: StageRecord) -> str:
    """How long a finished stage ran, and how long its inputs took before it started (in-process work such as
    simulated traffic and generation 0, which the stage's own time leaves out)."""
    if record.started_at is None or record.finished_at is None:
        return "finished (its run time was not observed)"
    ran = (record.finished_at - record.started_at).total_seconds()
    waited = (record.started_at - record.created_at).total_seconds()
    return f"ran {ran:.0f}s" + (f", after {waited:.0f}s preparing its inputs" if waited >= 1 else "")


def _decision_line(status: FlywheelGenerationStatus) -> str:
    if status.decision is None:
        return status.message or status.phase
    return f"{status.decision.outcome}: " + "; ".join(status.decision.reasons)
