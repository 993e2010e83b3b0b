"""The exporter's store: per-user state folded into per-arm sufficient statistics, kept durable on disk.

Prometheus holds aggregates, not users, so the exporter pre-aggregates per user: it remembers each exposed
user's arm, depth and pre-period covariate, and updates Σdepth, Σdepth², ΣXY incrementally as depth grows.
Every sum only grows (depth and X are non-negative), so each one is a Prometheus counter.

Durability: accepted events are appended to a journal (flushed and fsynced before the client gets its 200),
and the whole store is compacted into a snapshot every `compact_every` events and on shutdown. Each journal
line carries a sequence number and the snapshot records the last one it holds, so a crash between writing the
snapshot and truncating the journal never counts an event twice.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flywheel_operator.api import ArmStats
from flywheel_operator.gate.events import EngagementEvent, Event, ExposureEvent, parse_event

DEFAULT_GUARDRAILS = ("instruction-violations", "false-refusals", "errors")
"""Guardrails exported at 0 from a user's first exposure, so "no events yet" reads as 0, not as missing."""
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
"""Upper bounds (seconds) of the response-latency histogram: chat responses take from 0.1 s to tens of s."""
SNAPSHOT_VERSION = 1


@dataclass
class ArmTotals:
    """Sufficient statistics of one (generation, arm)."""

    users: int = 0
    engaged: int = 0
    depth_sum: float = 0.0
    depth_sum_squares: float = 0.0
    pre_sum: float = 0.0
    pre_sum_squares: float = 0.0
    pre_cross_sum: float = 0.0
    responses: int = 0
    guardrails: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DEFAULT_GUARDRAILS, 0))
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0

    def to_arm_stats(self) -> ArmStats:
        return ArmStats(
            users=self.users,
            engaged_users=self.engaged,
            depth_sum=self.depth_sum,
            depth_sum_squares=self.depth_sum_squares,
            pre_sum=self.pre_sum,
            pre_sum_squares=self.pre_sum_squares,
            pre_cross_sum=self.pre_cross_sum,
            responses=self.responses,
            guardrails={name: float(count) for name, count in self.guardrails.items()},
        )


@dataclass
class UserState:
    """What the exporter remembers of one exposed user."""

    arm: str
    depth: int = 0
    pre: float = 0.0


class EngagementStore:
    """In-memory per-user state and per-arm totals. Not thread-safe on its own: the exporter holds `lock`."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, UserState]] = {}
        self.arms: dict[tuple[str, str], ArmTotals] = {}
        self.sequence = 0
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ events
    def check(self, events: Iterable[Event]) -> list[str]:
        """Reasons the batch cannot be applied to the current state (sticky arms, exposure first), in order."""
        assigned: dict[tuple[str, str], str] = {}
        errors: list[str] = []
        for index, event in enumerate(events, start=1):
            known = self.users.get(event.generation, {}).get(event.user)
            arm = assigned.get((event.generation, event.user)) or (known.arm if known else None)
            if isinstance(event, ExposureEvent):
                if arm is not None and arm != event.arm:
                    errors.append(
                        f"event {index}: user {event.user!r} is already in arm {arm!r} of {event.generation!r}; "
                        "arms are sticky per user, fix the assignment"
                    )
                assigned[(event.generation, event.user)] = event.arm
            elif arm is None:
                errors.append(
                    f"event {index}: user {event.user!r} has no exposure in {event.generation!r}; "
                    "send the exposure event first (only exposed users are counted)"
                )
            elif event.arm is not None and event.arm != arm:
                errors.append(
                    f"event {index}: engagement says arm {event.arm!r} but user {event.user!r} was exposed "
                    f"to {arm!r}; fix the routing or drop `arm`"
                )
        return errors

    def apply(self, event: Event) -> None:
        """Fold one checked event into the totals."""
        self.sequence += 1
        users = self.users.setdefault(event.generation, {})
        if isinstance(event, ExposureEvent):
            if event.user in users:
                return
            users[event.user] = UserState(arm=event.arm, pre=event.pre_depth)
            totals = self._totals(event.generation, event.arm)
            totals.users += 1
            totals.pre_sum += event.pre_depth
            totals.pre_sum_squares += event.pre_depth * event.pre_depth
            return
        self._engage(users[event.user], event)

    def _engage(self, user: UserState, event: EngagementEvent) -> None:
        totals = self._totals(event.generation, user.arm)
        before, after = user.depth, user.depth + event.turns
        if before == 0 and after > 0:
            totals.engaged += 1
        totals.depth_sum += event.turns
        totals.depth_sum_squares += after * after - before * before
        totals.pre_cross_sum += user.pre * event.turns
        user.depth = after
        totals.responses += event.served
        for name, count in event.guardrails.items():
            totals.guardrails[name] = totals.guardrails.get(name, 0) + count
        for latency in event.latency_seconds:
            totals.latency_sum += latency
            totals.latency_count += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if latency <= bound:
                    totals.latency_buckets[i] += 1

    def _totals(self, generation: str, arm: str) -> ArmTotals:
        return self.arms.setdefault((generation, arm), ArmTotals())

    # ------------------------------------------------------------------------------------------- reads
    def arm_stats(self, generation: str) -> tuple[ArmStats | None, ArmStats | None]:
        """(control, treatment) of one generation; None for an arm nobody was exposed to."""
        control = self.arms.get((generation, "control"))
        treatment = self.arms.get((generation, "treatment"))
        return (control.to_arm_stats() if control else None, treatment.to_arm_stats() if treatment else None)

    # -------------------------------------------------------------------------------------- snapshots
    def to_dict(self) -> dict:
        return {
            "version": SNAPSHOT_VERSION,
            "sequence": self.sequence,
            "users": {
                generation: {user: [s.arm, s.depth, s.pre] for user, s in users.items()}
                for generation, users in self.users.items()
            },
            "arms": [{"generation": g, "arm": a, **asdict(t)} for (g, a), t in self.arms.items()],
        }

    @classmethod
    def from_dict(cls, data: dict) -> EngagementStore:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {data.get('version')!r} is not {SNAPSHOT_VERSION}")
        store = cls()
        store.sequence = int(data["sequence"])
        store.users = {
            generation: {user: UserState(arm=a, depth=int(d), pre=float(p)) for user, (a, d, p) in users.items()}
            for generation, users in data["users"].items()
        }
        for row in data["arms"]:
            row = dict(row)
            key = (row.pop("generation"), row.pop("arm"))
            store.arms[key] = ArmTotals(**row)
        return store


class DurableStore:
    """An EngagementStore backed by a snapshot file and a journal next to it (`<snapshot>.journal`)."""

    def __init__(self, snapshot: Path | None, *, compact_every: int = 10_000) -> None:
        self.snapshot = snapshot
        self.journal = snapshot.with_name(snapshot.name + ".journal") if snapshot else None
        self.compact_every = compact_every
        if snapshot is not None:
            snapshot.parent.mkdir(parents=True, exist_ok=True)
        self.store = self._load()
        self._since_compaction = 0

    def _load(self) -> EngagementStore:
        if self.snapshot is None:
            return EngagementStore()
        store = (
            EngagementStore.from_dict(json.loads(self.snapshot.read_text()))
            if self.snapshot.exists()
            else EngagementStore()
        )
        assert self.journal is not None
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a crash mid-write: its batch was never acknowledged
                if record["sequence"] > store.sequence:
                    store.apply(parse_event(json.dumps(record["event"])))
        return store

    def submit(self, events: list[Event]) -> list[str]:
        """Check, journal and apply a batch atomically; returns the reasons it was refused (then nothing counted)."""
        with self.store.lock:
            errors = self.store.check(events)
            if errors:
                return errors
            if self.journal is not None:
                lines = [
                    json.dumps({"sequence": self.store.sequence + i, "event": e.model_dump(mode="json")})
                    for i, e in enumerate(events, start=1)
                ]
                with self.journal.open("a") as handle:
                    handle.write("\n".join(lines) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            for event in events:
                self.store.apply(event)
            self._since_compaction += len(events)
            if self._since_compaction >= self.compact_every:
                self._compact_locked()
        return []

    def compact(self) -> None:
        """Write the snapshot (atomically) and empty the journal."""
        with self.store.lock:
            self._compact_locked()

    def _compact_locked(self) -> None:
        self._since_compaction = 0
        if self.snapshot is None or self.journal is None:
            return
        temporary = self.snapshot.with_name(self.snapshot.name + ".tmp")
        with temporary.open("w") as handle:
            json.dump(self.store.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.snapshot)
        self.journal.write_text("")
