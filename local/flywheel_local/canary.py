"""The local canary: a simulated A/B test between the parent (control) and the candidate (treatment).

Both models are served by the trainer image's `ChatPredictor`; the world's users are assigned stickily to an
arm by hash (the spec's `trafficPercent` on the candidate, as many on the control), chat day after day, and
their exposure and engagement go through the gate's engagement store — the exporter's — from which the gate's
local reader takes the per-arm sums. Time is simulated: the runner's clock says how many days have passed
since the canary became Ready, and that many simulated days are revealed to the store.

Days are simulated only when they are due (`flywheel_sim.TrafficSimulation`, one day at a time), so a canary
the gate stops after two days costs two days; only the first test day may be simulated earlier, while eval runs
(`simulate_ahead`: the same day, taken by `deploy` when the deployment is the one planned). Each day's events and
the simulation's state are kept in the canary directory, so a resumed run replays the revealed days into a fresh
store and goes on from there.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flywheel_operator.api import OnlineReading
from flywheel_operator.planner import CanaryObservation, DeployCanary

PRE_DAYS = 1
"""Control-only days before exposure, whose depth is the CUPED covariate."""
STATE_FILE = "canary.json"
STATE_PICKLE = "simulation-state.pickle"
"""The simulation's state after the last simulated day (flywheel_sim.TrafficState)."""
DAY = timedelta(days=1)
AHEAD = "ahead"
"""Where the first test day is simulated before the deployment (SimulatedCanary.simulate_ahead)."""


@dataclass
class CanaryState:
    """What was deployed and how far the experiment has been revealed (canary.json)."""

    experiment: str
    control_policy: str
    candidate_policy: str
    traffic_percent: int
    days: int
    seed: int
    people: int | None = None
    revealed_days: int = 0
    phase: str = "Ready"


def simulated_days(max_duration: timedelta) -> int:
    """Days to simulate for a canary that may run `max_duration` (at least one)."""
    return max(1, math.ceil(max_duration / DAY))


class SimulatedCanary:
    """One generation's canary, kept in `directory`; its world is `world_file`."""

    def __init__(self, directory: Path, world_file: Path, note: Callable[[str], None] = lambda text: None, *,
                 user_traffic: Path | None = None) -> None:
        self.directory = directory
        self.world_file = world_file
        self.note = note
        self.user_traffic = user_traffic
        """The generation's user traffic folder: its first day is the pre-period when it had the same inputs."""
        self.state = self._load()
        self._store: Any = None
        self._simulation: Any = None
        self._worker: Any = None
        self._ahead: tuple[threading.Thread, SimulatedCanary, list[str]] | None = None

    # ---------------------------------------------------------------------------------------- actions
    def deploy(self, action: DeployCanary, *, experiment: str, days: int, seed: int, people: int | None) -> None:
        """Record the deployment (idempotent: the same action again changes nothing)."""
        if self.state is not None and self.state.candidate_policy == action.candidate_policy:
            return
        self.state = CanaryState(
            experiment=experiment,
            control_policy=action.control_policy,
            candidate_policy=action.candidate_policy,
            traffic_percent=action.traffic_percent,
            days=days,
            seed=seed,
            people=people,
        )
        self._take_ahead()
        self._save()

    def simulate_ahead(self, plan: CanaryState) -> None:
        """Simulate the first test day of the deployment `plan` in a thread, before it is deployed: the candidate
        exists while eval runs, and a stage program on one thread (`--cpus 1`, or beside the side worker) leaves
        a core to it. The day is the one `deploy` would simulate (its draws are keyed by the plan's seed, day and
        people), written apart (AHEAD); `deploy` takes it when the deployment is the plan and drops it otherwise
        (as when the offline gate fails). Nothing simulated ahead is revealed before the deployment."""
        if self.state is not None or self._ahead is not None or (self.directory / "traffic").exists():
            return
        ahead = SimulatedCanary(self.directory / AHEAD, self.world_file, user_traffic=self.user_traffic)
        shutil.rmtree(ahead.directory, ignore_errors=True)
        ahead.state = plan
        lines: list[str] = []
        ahead.note = lines.append
        thread = threading.Thread(target=self._simulate_quietly, args=(ahead,), name="canary-ahead", daemon=True)
        self._ahead = (thread, ahead, lines)
        thread.start()

    def _simulate_quietly(self, ahead: SimulatedCanary) -> None:
        """The first test day for simulate_ahead's thread; a failure leaves the day to the deployment, which
        simulates it again and reports what fails."""
        try:
            ahead._simulate_next_day()
        except Exception as exc:
            self.note(f"the A/B test's first day could not be simulated ahead ({type(exc).__name__}: {exc}); "
                      "it is simulated when due")
            ahead.close()
            shutil.rmtree(ahead.directory / "traffic", ignore_errors=True)

    def _take_ahead(self) -> None:
        """Adopt the day simulate_ahead simulated when this deployment is its plan (its logs, state and the
        simulation with both policies loaded), else drop it."""
        finished = self._finish_ahead()
        if finished is None:
            return
        ahead, lines = finished
        simulated = ahead.directory / "traffic"
        if (asdict(ahead.state) == asdict(self.state) and (simulated / "day-0.events.jsonl").is_file()
                and not (self.directory / "traffic").exists()):
            simulated.rename(self.directory / "traffic")
            self._simulation, self._worker = ahead._simulation, ahead._worker
            ahead._simulation = ahead._worker = None  # this canary's now: not stopped with the folder
            for line in lines:
                self.note(f"{line} (simulated ahead, while eval ran)")
        self._drop(ahead)

    def _finish_ahead(self) -> tuple[SimulatedCanary, list[str]] | None:
        """The canary simulate_ahead made and its notes, once its thread is done; None when there is none."""
        if self._ahead is None:
            return None
        thread, ahead, lines = self._ahead
        self._ahead = None
        thread.join()
        return ahead, lines

    @staticmethod
    def _drop(ahead: SimulatedCanary) -> None:
        ahead.close()
        shutil.rmtree(ahead.directory, ignore_errors=True)

    def finish(self, phase: str) -> None:
        """Promote or roll back: the experiment stops; its logs stay for the report."""
        if self.state is not None and self.state.phase != phase:
            self.state.phase = phase
            self._save()
        self.close()

    def close(self) -> None:
        """Stop the candidate's policy process (a later day starts it again), and a day simulated ahead that no
        deployment took."""
        finished = self._finish_ahead()
        if finished is not None:
            self._drop(finished[0])
        if self._worker is not None:
            self._worker.close()
            self._worker, self._simulation = None, None

    # -------------------------------------------------------------------------------------- observing
    def observation(self) -> CanaryObservation | None:
        if self.state is None:
            return None
        missing = [p for p in (self.state.control_policy, self.state.candidate_policy) if not _is_model(p)]
        if missing:
            return CanaryObservation(ready=False, message=f"no model directory at {', '.join(missing)}")
        return CanaryObservation(
            ready=True,
            message="parent and candidate served by ChatPredictor in process",
            traffic_percent=self.state.traffic_percent,
            revisions={"control": self.state.control_policy, "candidate": self.state.candidate_policy},
        )

    def reveal(self, elapsed: timedelta) -> int:
        """Reveal every simulated day that has passed after `elapsed` of exposure; returns days revealed."""
        from flywheel_trainer.cli import frozen_imports

        assert self.state is not None, "reveal() before deploy()"
        due = min(self.state.days, int(elapsed / DAY))
        store = self.store()
        # the runner's heap (its libraries, the parent, the population) is no simulated day's garbage: the
        # collector's full passes walk only what the days allocate
        with frozen_imports():
            for index in range(self.state.revealed_days, due):
                errors = store.submit(_parse(self._day_events(index)))
                if errors:
                    raise RuntimeError(f"the exporter store refused simulated day {index}: {errors[:3]}")
                self.state.revealed_days = index + 1
                self._save()
        return self.state.revealed_days

    def reading(self, now: datetime) -> OnlineReading | None:
        """The gate's local reader over the store; None until a day has been revealed."""
        from flywheel_operator.gate.readers import read_local

        if self.state is None or self.state.revealed_days == 0:
            return None
        return read_local(self.store().store, generation=self.state.experiment, now=now)

    def store(self) -> Any:
        """The exporter's durable store, rebuilt from the revealed days (a snapshot is kept for inspection)."""
        from flywheel_operator.gate.store import DurableStore

        if self._store is None:
            snapshot = self.directory / "exporter-snapshot.json"
            for stale in (snapshot, snapshot.with_name(snapshot.name + ".journal")):
                stale.unlink(missing_ok=True)
            self._store = DurableStore(snapshot)
            for index in range(self.state.revealed_days if self.state is not None else 0):
                self._store.submit(_parse(self._day_events(index)))
        return self._store

    # --------------------------------------------------------------------------------------- traffic
    def _day_events(self, index: int) -> list[dict[str, Any]]:
        """The exporter events of test day `index` (0-based), simulating the days up to it when needed."""
        path = self.directory / "traffic" / f"day-{index}.events.jsonl"
        while not path.is_file():
            self._simulate_next_day()
        return _read_jsonl(path)

    def _simulate_next_day(self) -> None:
        """Simulate the next test day (after the pre-period, on the first call), keeping its logs and the state."""
        import pickle

        from flywheel_sim import TrafficSimulation, load_world, write_traffic

        from flywheel_local.users import PolicyWorker, world_policy

        state = self.state
        assert state is not None
        traffic = self.directory / "traffic"
        traffic.mkdir(parents=True, exist_ok=True)
        if self._simulation is None:
            world = load_world(self.world_file)
            control, treatment = f"{state.experiment}-control", f"{state.experiment}-treatment"
            # the candidate answers in a process of its own while the parent answers here: the arms side by side
            self._worker = PolicyWorker(treatment, state.candidate_policy, self.world_file)
            policies = {"control": world_policy(control, state.control_policy, world), "treatment": self._worker}
            saved = traffic / STATE_PICKLE
            self._simulation = TrafficSimulation(
                world,
                policies,
                seed=state.seed,
                traffic_percent=state.traffic_percent,
                pre_days=PRE_DAYS,
                experiment=state.experiment,
                max_people=state.people,
                state=pickle.loads(saved.read_bytes()) if saved.is_file() else None,
            )
        simulation = self._simulation
        if simulation.state.offset == 0 and not self._reuse_pre_period(simulation):
            self.note(f"simulating {PRE_DAYS} pre-period day(s) of the A/B test (the CUPED covariate)")
            for _ in range(PRE_DAYS):
                simulation.next_day()
        index = simulation.state.offset - PRE_DAYS
        self.note(
            f"simulated A/B day {index + 1} of at most {state.days}: {state.traffic_percent}% of users per arm"
        )
        day = simulation.next_day()
        write_traffic(day, traffic / f"day-{index}")
        tmp = traffic / (STATE_PICKLE + ".tmp")
        tmp.write_bytes(pickle.dumps(simulation.state))
        tmp.replace(traffic / STATE_PICKLE)
        events = traffic / f"day-{index}.events.jsonl"
        partial = events.with_name(events.name + ".tmp")
        partial.write_text("".join(json.dumps(e) + "\n" for e in day.events))
        partial.replace(events)  # last: a day counts as simulated only once its events and the state are saved

    def _reuse_pre_period(self, simulation: Any) -> bool:
        """Start after the pre-period from the end state of the generation's user traffic's first day(s), when
        they are the same simulation: the control policy alone serves every user in the pre-period, with the
        seed, day indices, world and people of the user traffic (flywheel_local.users.prefix_key proves it)."""
        import numpy as np
        from flywheel_sim import TrafficState

        from flywheel_local.users import PREFIX_DAYS, control_prefix

        state = self.state
        assert state is not None
        if self.user_traffic is None or PRE_DAYS != PREFIX_DAYS or simulation.start_day != 0:
            return False
        prefix = control_prefix(self.user_traffic, self.world_file, state.control_policy, seed=state.seed,
                                people=state.people)
        if prefix is None or len(prefix["memory"]) != len(simulation.state.memory):
            return False
        n = len(prefix["memory"])
        simulation.state = TrafficState(offset=PRE_DAYS, memory=np.array(prefix["memory"], dtype=float),
                                        pre_turns=np.array(prefix["turns"], dtype=int),
                                        exposed=np.zeros(n, dtype=bool))
        self.note(f"the A/B test's {PRE_DAYS} pre-period day(s) (the CUPED covariate) are the user traffic's first "
                  f"day(s): same world, parent, seed and people, so their end state is reused")
        return True

    # ------------------------------------------------------------------------------------------- disk
    def _load(self) -> CanaryState | None:
        path = self.directory / STATE_FILE
        return CanaryState(**json.loads(path.read_text())) if path.is_file() else None

    def _save(self) -> None:
        assert self.state is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2) + "\n")
        tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _is_model(path: str) -> bool:
    return (Path(path) / "config.json").is_file()


def _parse(lines: list[dict[str, Any]]) -> list[Any]:
    from flywheel_operator.gate.events import parse_event

    return [parse_event(json.dumps(line)) for line in lines]
