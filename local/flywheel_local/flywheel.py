"""`flywheel run FLYWHEEL.yaml`: a Flywheel on one machine, through the same `plan_flywheel` as the operator.

The run directory plays the API server: `flywheel.json` holds the Flywheel and its status, `<generation>/
manifest.json` each generation the plan created (written before the status, as the operator creates before it
writes), `<generation>/status.json` its status (written by the generation runner). Each turn: list the
generations, plan, create, then run the generation in flight to its decision with the local Runner (the
generation planner, the stage programs, the simulated canary). Stopping at any point and running the same command
again resumes: decided generations are read back, the one in flight continues, none is created twice. Locally
the schedule's waits are simulated (the clock jumps), and `historyLimit` deletes the directories of the oldest
finished generations beyond it, as the operator deletes their FlywheelGenerations (never the latest promoted,
the next parent; the trajectory in `flywheel.json` keeps them all, the report only what is left).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel_operator.api import FlywheelGeneration
from flywheel_operator.api.flywheel import WINDOW_ANNOTATION, Flywheel, FlywheelStatus, window_of
from flywheel_operator.planner.flywheel import (
    CreateGeneration,
    DeleteGeneration,
    FlywheelPlan,
    ObservedGeneration,
    plan_flywheel,
)

from flywheel_local.backend import RunPaths
from flywheel_local.runner import GenerationOutcome, LocalRunError, Runner, read_status

FLYWHEEL_FILE = "flywheel.json"
MANIFEST_FILE = "manifest.json"
EVENTS_FILE = "flywheel-events.log"
STOPPED_PHASES = frozenset({"Paused", "Finished", "Suspended", "Invalid"})


def load_flywheel(path: Path) -> Flywheel:
    """The Flywheel in `path`, every problem named as `flywheel validate` names it."""
    from flywheel_operator.validation import load_documents, problems_of

    try:
        documents = [d for d in load_documents(path) if d is not None]
    except (OSError, ValueError) as exc:
        raise LocalRunError(f"{path}: cannot read the manifest: {exc}") from exc
    if len(documents) != 1:
        raise LocalRunError(f"{path}: expected exactly one Flywheel, found {len(documents)} documents")
    problems = problems_of(documents[0])
    if problems:
        raise LocalRunError(f"{path}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))
    return Flywheel.model_validate(documents[0])


def manifest_kind(path: Path) -> str | None:
    """The `kind` of the single document in `path` (None when unreadable: the loader then says why)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return document.get("kind") if isinstance(document, dict) else None


def read_flywheel_status(run_dir: Path) -> FlywheelStatus | None:
    path = run_dir / FLYWHEEL_FILE
    if not path.is_file():
        return None
    return FlywheelStatus.model_validate(json.loads(path.read_text()).get("status") or {})


class FlywheelRunner:
    """Turns a Flywheel in the run directory of `runner` until a stop rule (or maxGenerations) stops it."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.run_dir = runner.run_dir

    def run(self, flywheel: Flywheel) -> list[GenerationOutcome]:
        self._check_same_flywheel(flywheel)
        outcomes: list[GenerationOutcome] = []
        while True:
            result = self.turn(flywheel)
            status = result.status
            if status.in_flight is not None:
                manifest = self.run_dir / status.in_flight / MANIFEST_FILE
                generation = FlywheelGeneration.model_validate_json(manifest.read_text())
                outcome = self.runner.run_generation(generation)
                outcomes.append(outcome)
                if outcome.status.phase == "Suspended":
                    return outcomes
                continue
            if status.phase == "Waiting" and status.next_start_at is not None:
                self.runner.display.event(f"{flywheel.metadata.name}: {status.message} (simulated wait)")
                self.runner.clock.jump_to(status.next_start_at)
                continue
            return outcomes

    def turn(self, flywheel: Flywheel) -> FlywheelPlan:
        """One reconcile: observe the run directory, plan, create, write the status, log the events."""
        previous = read_flywheel_status(self.run_dir)
        current = flywheel.model_copy(update={"status": previous.to_wire() if previous else None})
        now = self.runner.clock.now()
        result = plan_flywheel(current, self.observe(), now)
        for action in result.actions:
            if isinstance(action, CreateGeneration):
                self._create(action, now)
            elif isinstance(action, DeleteGeneration):
                self._delete(flywheel, action)
        self._write(flywheel, result.status)
        self._log(flywheel, result, now)
        return result

    def observe(self) -> list[ObservedGeneration]:
        observed = []
        for manifest in sorted(self.run_dir.glob(f"*/{MANIFEST_FILE}")):
            body = json.loads(manifest.read_text())
            meta = body.get("metadata") or {}
            created = meta.get("creationTimestamp")
            observed.append(ObservedGeneration(
                name=meta["name"], number=int(body["spec"]["generation"]),
                status=read_status(RunPaths(manifest.parent)), parent=body["spec"].get("parent"),
                window=window_of((meta.get("annotations") or {}).get(WINDOW_ANNOTATION)),
                created_at=datetime.fromisoformat(created) if created else None))
        return observed

    def _create(self, action: CreateGeneration, now: datetime) -> None:
        path = self.run_dir / action.name / MANIFEST_FILE
        if path.is_file():
            return  # AlreadyExists: created by an earlier turn
        body: dict[str, Any] = json.loads(json.dumps(action.body))
        body["metadata"]["creationTimestamp"] = now.isoformat()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(path)

    def _delete(self, flywheel: Flywheel, action: DeleteGeneration) -> None:
        """historyLimit: delete a finished generation's directory, as the operator deletes the FlywheelGeneration
        with its children. Its manifest goes last, so a run stopped halfway still observes the generation and the
        next turn deletes the rest (the planner asks again); a directory already gone is success (NotFound)."""
        root = self.run_dir / action.name
        manifest = root / MANIFEST_FILE
        if not manifest.is_file():
            return
        for child in root.iterdir():
            if child.name == MANIFEST_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        manifest.unlink()
        root.rmdir()
        self.runner.display.event(f"{flywheel.metadata.name}: deleted {action.name}, a finished generation beyond "
                                  f"historyLimit {flywheel.spec.history_limit} (the trajectory keeps it)")

    def _write(self, flywheel: Flywheel, status: FlywheelStatus) -> None:
        path = self.run_dir / FLYWHEEL_FILE
        document = {**flywheel.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True),
                    "status": status.to_wire()}
        tmp = path.with_name(FLYWHEEL_FILE + ".tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(path)

    def _log(self, flywheel: Flywheel, result: FlywheelPlan, now: datetime) -> None:
        if not result.events:
            return
        with (self.run_dir / EVENTS_FILE).open("a", encoding="utf-8") as handle:
            for event in result.events:
                handle.write(f"{now.isoformat()} {event.type} {event.reason}: {event.message}\n")
                self.runner.display.event(f"{flywheel.metadata.name}: {event.message}",
                                          warning=event.type == "Warning")

    def _check_same_flywheel(self, flywheel: Flywheel) -> None:
        path = self.run_dir / FLYWHEEL_FILE
        if path.is_file():
            name = json.loads(path.read_text()).get("metadata", {}).get("name")
            if name != flywheel.metadata.name:
                raise LocalRunError(
                    f"{self.run_dir} holds Flywheel {name!r}, not {flywheel.metadata.name!r}: give another "
                    "--run-dir (or delete the directory to start over)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
