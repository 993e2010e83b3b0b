"""The exporter's store: per-user state folded into per-arm sufficient statistics, kept durable on disk.

Prometheus holds aggregates, not users, so the exporter pre-aggregates per user: it remembers each exposed
user's arm, depth, pre-period covariate and the distinct days they were active on (up to `engaged_min_days` of
them: that is all breadth needs), and updates Σdepth, Σdepth², ΣXY and the engaged count incrementally. Every sum
only grows (depth and X are non-negative, and a user once engaged stays engaged), so each one is a Prometheus
counter.

Engaged means active on at least `engaged_min_days` distinct days (default 2): the day of exposure is a visit
that every exposed user makes, so only coming back tells the arms apart (docs/metrics.md, "breadth").

Two durable stores fold events with these rules. `SqliteStore` (the exporter's default, `--state`) keeps each
user as a row of an SQLite database in WAL mode and commits every batch as one fsynced transaction: it scales to
millions of users and restarts in about a second (docs/metrics.md, section 10). `DurableStore` (`--snapshot`,
the store of earlier versions and of the local runner) keeps everything in memory:

Durability: accepted events are appended to a journal (flushed and fsynced before the client gets its 200),
and the whole store is compacted into a snapshot every `compact_every` events and on shutdown. Each journal
line carries a sequence number and the snapshot records the last one it holds, so a crash between writing the
snapshot and truncating the journal never counts an event twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flywheel_operator.api import ArmStats
from flywheel_operator.api.readings import LOG_DEPTH_UNIT
from flywheel_operator.gate.events import EngagementEvent, Event, ExposureEvent, parse_event

LOG = logging.getLogger("flywheel.exporter")

DEFAULT_GUARDRAILS = ("instruction-violations", "false-refusals", "errors")
"""Guardrails exported at 0 from a user's first exposure, so "no events yet" reads as 0, not as missing."""
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
"""Upper bounds (seconds) of the response-latency histogram: chat responses take from 0.1 s to tens of s."""
SNAPSHOT_VERSION = 2
"""2: users carry their active days and the snapshot its `engaged_min_days`; 1 (engaged = depth > 0) still loads
with engaged_min_days=1, the rule it was counted with."""
DEFAULT_ENGAGED_MIN_DAYS = 2
"""A single visit is exposure; coming back on another day is engagement (the report's breadth)."""
UNDATED = -1
MAX_USER_DEPTH = 10**12
"""Most turns one user may accumulate: depth² stays an exact, finite float, so applying a checked event cannot fail
half-way."""
"""Active day of a user whose turns so far came without `day`: one day, not yet known which."""


# --- issue 25: the log-scale depth sums (h25) ---------------------------------------------------------------
LOG_UNITS = round(1 / LOG_DEPTH_UNIT)
"""Units of log(1 + depth) per 1 (65536): the log-scale sums are whole numbers of units, so they are exact."""


def log_depth_units(depth: float) -> int:
    """A user's log(1 + depth) in whole units of 1/65536 (rounded half up). The SQL source computes the same
    `FLOOR(LN(1 + depth) * 65536 + 0.5)` (gate.sqlsource), so both give the same integers."""
    return math.floor(math.log(1.0 + depth) * LOG_UNITS + 0.5)


def log_depth_sums(units: int, squared_units: int) -> tuple[float, float]:
    """(Σ log(1 + depth), Σ log(1 + depth)²) from the integer sums of units and squared units."""
    return float(units) * LOG_DEPTH_UNIT, float(squared_units) * LOG_DEPTH_UNIT * LOG_DEPTH_UNIT


# --- end issue 25 -------------------------------------------------------------------------------------------


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
    responses_sum_squares: float = 0.0
    """Σ over users of (the user's responses)², for the user-clustered variance of guardrail rates."""
    guardrail_sum_squares: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DEFAULT_GUARDRAILS, 0.0))
    """Σ over users of (the user's events of each guardrail)²."""
    guardrail_cross_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DEFAULT_GUARDRAILS, 0.0))
    """Σ over users of (the user's events of each guardrail) × (the user's responses)."""
    adopted: int = 0
    """Users first seen through an engagement event naming their arm (their exposure was lost with the state of
    an exporter that restarted without its snapshot); counted in `users`, left out of the SRM test."""
    per_user_sums: bool = True
    """False for totals loaded from a snapshot written before the per-user guardrail sums existed: they cannot be
    rebuilt, so they are not exported (the gate falls back to per-response variances)."""
    depth_log_units: int = 0
    """Σ over users of log(1 + depth) in units of 1/65536 (`log_depth_units`), kept exact as depths grow."""
    depth_log_units_squared: int = 0
    """Σ over users of (the user's `log_depth_units`)²."""

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
            responses_sum_squares=self.responses_sum_squares if self.per_user_sums else None,
            guardrail_sum_squares=dict(self.guardrail_sum_squares) if self.per_user_sums else {},
            guardrail_cross_sums=dict(self.guardrail_cross_sums) if self.per_user_sums else {},
            adopted_users=self.adopted,
            depth_log_sum=log_depth_sums(self.depth_log_units, self.depth_log_units_squared)[0],
            depth_log_sum_squares=log_depth_sums(self.depth_log_units, self.depth_log_units_squared)[1],
        )

    def add_depth(self, before: int, after: int) -> None:
        """A user's depth went from `before` to `after`: the log-scale sums move by the difference of that
        user's terms (integers: no rounding accumulates over millions of updates)."""
        if after != before:
            old, new = log_depth_units(before), log_depth_units(after)
            self.depth_log_units += new - old
            self.depth_log_units_squared += new * new - old * old


@dataclass
class UserState:
    """What the exporter remembers of one exposed user."""

    arm: str
    depth: int = 0
    pre: float = 0.0
    days: list[int] = field(default_factory=list)
    """Distinct days with at least one turn, sorted, kept only until there are `engaged_min_days` of them."""
    responses: int = 0
    """Responses served to the user so far (per-user sums of the guardrail rates)."""
    events: dict[str, int] = field(default_factory=dict)
    """The user's guardrail events so far, by guardrail."""

    def add_day(self, day: int | None, *, enough: int) -> bool:
        """Record activity on `day`; True when this makes `enough` distinct days (the user becomes engaged).

        Days may arrive in any order. An undated event (day None) adds no day of its own unless the user had
        none: it is taken to be on a day already counted, and an undated first day is replaced by the first dated
        one, so mixing dated and undated events never invents a return visit.
        """
        if len(self.days) >= enough:
            return False
        if day is None:
            if self.days:
                return False
            self.days.append(UNDATED)
        elif day in self.days:
            return False
        elif self.days == [UNDATED]:
            self.days[0] = day
            return False
        else:
            self.days = sorted([*self.days, day])
        return len(self.days) >= enough


class EngagementStore:
    """In-memory per-user state and per-arm totals. Not thread-safe on its own: the exporter holds `lock`.

    `engaged_min_days`: distinct active days (days with ≥ 1 turn) that make a user engaged; 1 counts every user
    with a turn.
    """

    def __init__(self, *, engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS) -> None:
        if isinstance(engaged_min_days, bool) or not isinstance(engaged_min_days, int) or engaged_min_days < 1:
            raise ValueError(
                f"engaged_min_days must be a whole number ≥ 1 (distinct active days); got {engaged_min_days!r}"
            )
        self.engaged_min_days = engaged_min_days
        self.users: dict[str, dict[str, UserState]] = {}
        self.arms: dict[tuple[str, str], ArmTotals] = {}
        self.sequence = 0
        self.unattributed = 0
        """Engagement events of users with no known exposure and no `arm`: not counted (see `apply`)."""
        self.crossovers: dict[str, set[str]] = {}
        """Per generation, the users seen in both arms (exposed to one, then served or exposed by the other)."""
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ events
    def check(self, events: Iterable[Event]) -> list[str]:
        """Reasons the batch cannot be applied to the current state (exposure first), in order. A user seen in the
        other arm is no error: `apply` counts the crossover (see `crossover_users`) and keeps the first arm."""
        assigned: dict[tuple[str, str], str] = {}
        depth: dict[tuple[str, str], int] = {}
        errors: list[str] = []
        for index, event in enumerate(events, start=1):
            known = self.users.get(event.experiment, {}).get(event.user)
            arm = assigned.get((event.experiment, event.user)) or (known.arm if known else None)
            if isinstance(event, EngagementEvent):
                key = (event.experiment, event.user)
                depth[key] = depth.get(key, known.depth if known else 0) + event.turns
                if depth[key] > MAX_USER_DEPTH:
                    errors.append(
                        f"event {index}: user {event.user!r} would reach {depth[key]} turns in {event.generation!r}, "
                        f"over the {MAX_USER_DEPTH} a user can have; the events repeat or count something else"
                    )
            if isinstance(event, ExposureEvent):
                assigned.setdefault((event.experiment, event.user), event.arm)
            elif arm is None and event.arm is not None:
                # No exposure known: after an exporter restart that lost its state, the exposure came before it.
                # Refusing would refuse every later batch of a client that logs exposure once; `apply` adopts the
                # user when the event names its arm and otherwise counts the event as unattributed.
                assigned[(event.experiment, event.user)] = event.arm
        return errors

    def apply(self, event: Event) -> None:
        """Fold one checked event into the totals."""
        self.sequence += 1
        users = self.users.setdefault(event.experiment, {})
        if isinstance(event, ExposureEvent):
            if event.user in users:
                if users[event.user].arm != event.arm:
                    self.crossovers.setdefault(event.experiment, set()).add(event.user)
                return
            users[event.user] = UserState(arm=event.arm, pre=event.pre_depth)
            totals = self._totals(event.experiment, event.arm)
            totals.users += 1
            totals.pre_sum += event.pre_depth
            totals.pre_sum_squares += event.pre_depth * event.pre_depth
            return
        user = users.get(event.user)
        if user is None:
            if event.arm is None:
                self.unattributed += 1
                return
            user = users[event.user] = UserState(arm=event.arm)
            totals = self._totals(event.experiment, event.arm)
            totals.users += 1
            totals.adopted += 1
        elif event.arm is not None and event.arm != user.arm:
            self.crossovers.setdefault(event.experiment, set()).add(event.user)
        self._engage(user, event)  # intention to treat: the turns count in the arm the user was first exposed to

    def crossover_users(self, experiment: str) -> int:
        """Users of an experiment seen in both arms: routing that is not sticky (gate.crossover judges the share)."""
        return len(self.crossovers.get(experiment, ()))

    def _engage(self, user: UserState, event: EngagementEvent) -> None:
        totals = self._totals(event.experiment, user.arm)
        before, after = user.depth, user.depth + event.turns
        if event.turns > 0 and user.add_day(event.day, enough=self.engaged_min_days):
            totals.engaged += 1
        totals.depth_sum += event.turns
        totals.depth_sum_squares += after * after - before * before
        totals.add_depth(before, after)
        totals.pre_cross_sum += user.pre * event.turns
        user.depth = after
        totals.responses += event.served
        for name, count in event.guardrails.items():
            totals.guardrails[name] = totals.guardrails.get(name, 0) + count
        self._per_user_sums(totals, user, event)
        for latency in event.latency_seconds:
            totals.latency_sum += latency
            totals.latency_count += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if latency <= bound:
                    totals.latency_buckets[i] += 1

    @staticmethod
    def _per_user_sums(totals: ArmTotals, user: UserState, event: EngagementEvent) -> None:
        """Σ responses², Σ events² and Σ events·responses over users, kept exact as the user's counts grow."""
        before, after = user.responses, user.responses + event.served
        totals.responses_sum_squares += after * after - before * before
        for name in {*user.events, *event.guardrails}:
            old = user.events.get(name, 0)
            new = old + event.guardrails.get(name, 0)
            totals.guardrail_sum_squares[name] = totals.guardrail_sum_squares.get(name, 0.0) + new * new - old * old
            totals.guardrail_cross_sums[name] = totals.guardrail_cross_sums.get(name, 0.0) + new * after - old * before
            if new:
                user.events[name] = new
        user.responses = after

    def _totals(self, generation: str, arm: str) -> ArmTotals:
        totals = self.arms.get((generation, arm))
        if totals is None:  # not setdefault: that would build an ArmTotals on every event
            totals = self.arms[(generation, arm)] = ArmTotals()
        return totals

    # ------------------------------------------------------------------------------------------- reads
    def arm_stats(self, generation: str) -> tuple[ArmStats | None, ArmStats | None]:
        """(control, treatment) of one generation (its experiment key: `namespace/generation` when its events
        carried a namespace); None for an arm nobody was exposed to."""
        control = self.arms.get((generation, "control"))
        treatment = self.arms.get((generation, "treatment"))
        return (control.to_arm_stats() if control else None, treatment.to_arm_stats() if treatment else None)

    # -------------------------------------------------------------------------------------- snapshots
    def to_dict(self) -> dict:
        return {
            "version": SNAPSHOT_VERSION,
            "engaged_min_days": self.engaged_min_days,
            "sequence": self.sequence,
            "users": {
                generation: {
                    user: [s.arm, s.depth, s.pre, list(s.days), s.responses, dict(s.events)]
                    for user, s in users.items()
                }
                for generation, users in self.users.items()
            },
            "arms": [{"generation": g, "arm": a, **asdict(t)} for (g, a), t in self.arms.items()],
            "crossovers": {generation: sorted(users) for generation, users in self.crossovers.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, *, engaged_min_days: int | None = None) -> EngagementStore:
        """A store from `to_dict`'s output. `engaged_min_days`, when given, must be the rule the snapshot was
        counted with: the engaged counters cannot be recounted under another one (the days beyond it are gone)."""
        version = data.get("version")
        if version == 1:
            return cls._from_version_1(data, engaged_min_days)
        if version != SNAPSHOT_VERSION:
            raise ValueError(
                f"snapshot version {version!r} is not {SNAPSHOT_VERSION} (or 1); it was written by another exporter "
                "version: run that version, or start from a new snapshot file"
            )
        counted = int(data["engaged_min_days"])
        if engaged_min_days is not None and engaged_min_days != counted:
            raise ValueError(
                f"the snapshot counted engaged users with engaged_min_days={counted}, not {engaged_min_days}; "
                f"run with --engaged-min-days {counted}, or start from a new snapshot file for a new rule"
            )
        store = cls(engaged_min_days=counted)
        store.sequence = int(data["sequence"])
        store.users = {
            generation: {
                user: UserState(
                    arm=row[0],
                    depth=int(row[1]),
                    pre=float(row[2]),
                    days=[int(day) for day in row[3]],
                    responses=int(row[4]) if len(row) > 4 else 0,
                    events={k: int(v) for k, v in row[5].items()} if len(row) > 5 else {},
                )
                for user, row in users.items()
            }
            for generation, users in data["users"].items()
        }
        store._load_arms(data["arms"])
        store.crossovers = {g: set(users) for g, users in (data.get("crossovers") or {}).items()}
        return store

    @classmethod
    def _from_version_1(cls, data: dict, engaged_min_days: int | None) -> EngagementStore:
        """Version 1 counted engaged = depth > 0 and kept no days: loadable only under that rule (min days 1)."""
        if engaged_min_days not in (None, 1):
            raise ValueError(
                "the snapshot is version 1, whose engaged counts mean 'at least one turn' (engaged_min_days=1) and "
                f"which kept no active days to recount them with engaged_min_days={engaged_min_days}; run with "
                "--engaged-min-days 1 to go on with it, or start from a new snapshot file"
            )
        store = cls(engaged_min_days=1)
        store.sequence = int(data["sequence"])
        store.users = {
            generation: {
                user: UserState(arm=a, depth=int(d), pre=float(p), days=[UNDATED] if int(d) > 0 else [])
                for user, (a, d, p) in users.items()
            }
            for generation, users in data["users"].items()
        }
        store._load_arms(data["arms"])
        return store

    def _load_arms(self, rows: list[dict]) -> None:
        rebuild = []
        for row in rows:
            row = dict(row)
            row.setdefault("per_user_sums", "responses_sum_squares" in row)  # older snapshots lack them
            key = (row.pop("generation"), row.pop("arm"))
            if "depth_log_units" not in row:
                rebuild.append(key)
            self.arms[key] = ArmTotals(**row)
        for generation, arm in rebuild:  # a snapshot from before the log-scale sums: rebuilt from the users' depths
            rebuild_log_sums(
                self.arms[(generation, arm)], (u.depth for u in self.users.get(generation, {}).values() if u.arm == arm)
            )


def rebuild_log_sums(totals: ArmTotals, depths: Iterable[int]) -> None:
    """The log-scale sums of totals saved before they existed, from the arm's users' depths: every user's depth
    is kept, so they come out exactly as if they had been counted all along."""
    units = [log_depth_units(depth) for depth in depths]
    totals.depth_log_units = sum(units)
    totals.depth_log_units_squared = sum(u * u for u in units)


def _replay(store: EngagementStore, record: object, journal: Path) -> bool:
    """Apply one journal record newer than the snapshot; False when it was skipped. A record that no longer
    validates (written by an older exporter that let it through) is skipped with a logged error and its sequence
    number consumed: one poison line must not stop every restart."""
    sequence = None
    try:
        if not isinstance(record, dict):
            raise ValueError("a journal record must be a JSON object with `sequence` and `event`")
        sequence = record.get("sequence")
        if isinstance(sequence, bool) or not isinstance(sequence, int):
            raise ValueError(f"`sequence` must be an integer, got {sequence!r}")
        if sequence <= store.sequence:
            return True
        event = parse_event(json.dumps(record.get("event")))
        errors = store.check([event])
        if errors:
            raise ValueError(errors[0])
    except ValueError as exc:
        LOG.error("skipped journal record of %s that cannot be applied (counted nowhere): %s", journal, exc)
        if isinstance(sequence, int):
            store.sequence = max(store.sequence, sequence)
        return False
    store.apply(event)
    return True


class DurableStore:
    """An EngagementStore backed by a snapshot file and a journal next to it (`<snapshot>.journal`)."""

    def __init__(
        self,
        snapshot: Path | None,
        *,
        compact_every: int = 10_000,
        engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
    ) -> None:
        self.snapshot = snapshot
        self.journal = snapshot.with_name(snapshot.name + ".journal") if snapshot else None
        self.compact_every = compact_every
        self.engaged_min_days = engaged_min_days
        if snapshot is not None:
            snapshot.parent.mkdir(parents=True, exist_ok=True)
        self.skipped = 0
        """Journal records skipped on load because they no longer validate (each logged as an error)."""
        self.store = self._load()
        self.lock = self.store.lock
        self._since_compaction = 0

    def _load(self) -> EngagementStore:
        if self.snapshot is None:
            return EngagementStore(engaged_min_days=self.engaged_min_days)
        if self.snapshot.exists():
            try:
                store = EngagementStore.from_dict(
                    json.loads(self.snapshot.read_text()), engaged_min_days=self.engaged_min_days
                )
            except ValueError as exc:
                raise ValueError(f"cannot load snapshot {self.snapshot}: {exc}") from exc
        else:
            store = EngagementStore(engaged_min_days=self.engaged_min_days)
        assert self.journal is not None
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a crash mid-write: its batch was never acknowledged
                if not _replay(store, record, self.journal):
                    self.skipped += 1
        return store

    def submit(self, events: list[Event], *, batch_key: str | None = None) -> list[str]:
        """Check, journal and apply a batch atomically; returns the reasons it was refused (then nothing counted).
        `batch_key` is not remembered by this store (SqliteStore remembers it)."""
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

    def arm_stats(self, generation: str) -> tuple[ArmStats | None, ArmStats | None]:
        return self.store.arm_stats(generation)

    def crossover_users(self, experiment: str) -> int:
        return self.store.crossover_users(experiment)

    def totals(self) -> tuple[dict[tuple[str, str], ArmTotals], int, dict[str, int]]:
        """Copies of (arm totals, unattributed events, crossover users per experiment), for /metrics."""
        with self.store.lock:
            return (
                {key: ArmTotals(**asdict(t)) for key, t in self.store.arms.items()},
                self.store.unattributed,
                {key: len(users) for key, users in self.store.crossovers.items()},
            )

    def close(self) -> None:
        self.compact()

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


# ------------------------------------------------------------------------------------------------ SQLite store
SQLITE_SCHEMA_VERSION = 1
DEFAULT_CACHE_MIB = 256
"""SQLite page cache of the state database (MiB): the hot users' pages; the rest stays in the OS page cache."""
PAGE_SIZE = 1024
"""Bytes per database page of a new state database. A batch rewrites one page per user it touches, so small
pages keep what is written per batch (fsynced before the reply, then checkpointed) small: with 1 KiB pages ~1 MB
per 1,000-event batch instead of ~4 MB with SQLite's default 4 KiB, which matters on network volumes."""
_LOOKUP_CHUNK = 900
"""Users per `IN (...)` lookup (SQLite's bound on host parameters is at least 999)."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, crossovers INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS arms (
    experiment INTEGER NOT NULL, arm TEXT NOT NULL, totals TEXT NOT NULL, PRIMARY KEY (experiment, arm));
CREATE TABLE IF NOT EXISTS users (
    experiment INTEGER NOT NULL, user TEXT NOT NULL, arm INTEGER NOT NULL, depth INTEGER NOT NULL,
    pre REAL NOT NULL, days TEXT, responses INTEGER NOT NULL, events TEXT, crossed INTEGER NOT NULL,
    PRIMARY KEY (experiment, user)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (key TEXT PRIMARY KEY, accepted INTEGER NOT NULL, at REAL NOT NULL);
"""
_ARMS = ("control", "treatment")
_Row = tuple[int, int, float, str | None, int, str | None, int]
"""A user's stored columns after (experiment, user): arm, depth, pre, days, responses, events, crossed."""


def _encode_user(user: UserState, crossed: bool) -> _Row:
    return (
        _ARMS.index(user.arm),
        user.depth,
        user.pre,
        ",".join(map(str, user.days)) if user.days else None,
        user.responses,
        json.dumps(user.events, separators=(",", ":"), sort_keys=True) if user.events else None,
        int(crossed),
    )


def _decode_user(row: _Row) -> UserState:
    arm, depth, pre, days, responses, events, _ = row
    return UserState(
        arm=_ARMS[arm],
        depth=int(depth),
        pre=float(pre),
        days=[int(day) for day in days.split(",")] if days else [],
        responses=int(responses),
        events=json.loads(events) if events else {},
    )


def _copy_totals(totals: ArmTotals) -> ArmTotals:
    return ArmTotals(**asdict(totals))


class SqliteStore:
    """The exporter's store for millions of users: per-user state in an SQLite database (WAL mode), updated
    incrementally, one transaction per batch.

    A batch reads only its own users' rows, folds its events with EngagementStore's rules (so the sums are those
    of the in-memory store, event for event), and commits the changed user rows, its arms' totals and the
    counters in one transaction that is fsynced before the writer gets its 200: an accepted batch survives a
    crash, and a batch cut off by one is rolled back whole, so a resent batch is counted once. Writers that
    send an `Idempotency-Key` are also safe against a crash between the commit and the reply: a resent key
    is answered from the record of the first one and not applied again.

    Per-arm totals (a few rows) are also kept in memory for /metrics; per-user state is not. Restart reads those
    few rows: ready in well under a second whatever the number of users. The write-ahead log is folded into the
    database by a background thread (`checkpoint_every` seconds), never on the request path, and no step rewrites
    the whole state.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
        cache_mib: int = DEFAULT_CACHE_MIB,
        checkpoint_every: float = 1.0,
        keep_batch_keys: float = 6 * 3600.0,
    ) -> None:
        import sqlite3

        EngagementStore(engaged_min_days=engaged_min_days)  # the same validation and message
        self.path = path
        self.engaged_min_days = engaged_min_days
        self.keep_batch_keys = keep_batch_keys
        self.lock = threading.Lock()
        self.skipped = 0
        target = ":memory:" if path is None else str(path)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new database only: each page is ~20 users
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # WAL fsynced at every commit: a 200 means on disk
        self._db.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
        self._db.execute("PRAGMA busy_timeout=10000")  # wait, never fail, when the checkpointer holds a lock
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in the background thread
        self._db.execute(f"PRAGMA journal_size_limit={64 * 2**20}")  # the log file shrinks back after a burst
        self._db.executescript(_SCHEMA)
        self._load_meta()
        self.arms: dict[tuple[str, str], ArmTotals] = {}
        self.experiment_ids: dict[str, int] = {}
        self.crossovers: dict[str, int] = {}
        for key, ident, crossovers in self._db.execute("SELECT key, id, crossovers FROM experiments"):
            self.experiment_ids[key] = ident
            self.crossovers[key] = crossovers
        names = {ident: key for key, ident in self.experiment_ids.items()}
        for ident, arm, totals in self._db.execute("SELECT experiment, arm, totals FROM arms").fetchall():
            row = json.loads(totals)
            self.arms[(names[ident], arm)] = ArmTotals(**row)
            if "depth_log_units" not in row:  # written before the log-scale sums: rebuilt from the users' depths
                depths = self._db.execute(
                    "SELECT depth FROM users WHERE experiment = ? AND arm = ?", (ident, _ARMS.index(arm))
                )
                rebuild_log_sums(self.arms[(names[ident], arm)], (int(depth) for (depth,) in depths))
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if path is not None and checkpoint_every > 0:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_every,), name="flywheel-checkpoint", daemon=True
            )
            self._checkpointer.start()

    # ------------------------------------------------------------------------------------------ state
    def _load_meta(self) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("version", str(SQLITE_SCHEMA_VERSION)),
                    ("engaged_min_days", str(self.engaged_min_days)),
                    ("sequence", "0"),
                    ("unattributed", "0"),
                ],
            )
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if int(meta["version"]) != SQLITE_SCHEMA_VERSION:
            raise ValueError(
                f"state database {self.path} has schema version {meta['version']}, not {SQLITE_SCHEMA_VERSION}; "
                "run the exporter version that wrote it, or start from a new state file"
            )
        counted = int(meta["engaged_min_days"])
        if counted != self.engaged_min_days:
            raise ValueError(
                f"the state database {self.path} counted engaged users with engaged_min_days={counted}, not "
                f"{self.engaged_min_days}; run with --engaged-min-days {counted}, or start from a new state file "
                "for a new rule"
            )
        self.sequence = int(meta["sequence"])
        self.unattributed = int(meta["unattributed"])

    @property
    def users_count(self) -> int:
        """Users held (all experiments); a full count, for tests and the bench, not the request path."""
        with self.lock:
            return int(self._db.execute("SELECT count(*) FROM users").fetchone()[0])

    def user(self, experiment: str, user: str) -> UserState | None:
        """One user's state (tests, debugging)."""
        with self.lock:
            ident = self.experiment_ids.get(experiment)
            if ident is None:
                return None
            row = self._db.execute(
                "SELECT arm, depth, pre, days, responses, events, crossed FROM users WHERE experiment=? AND user=?",
                (ident, user),
            ).fetchone()
        return _decode_user(row) if row else None

    # ----------------------------------------------------------------------------------------- writes
    def submit(self, events: list[Event], *, batch_key: str | None = None) -> list[str]:
        """Check, apply and commit a batch atomically; returns the reasons it was refused (then nothing counted).
        With `batch_key`, a batch whose key was already committed is not applied again (answered as accepted)."""
        with self.lock:
            if (
                batch_key is not None
                and self._db.execute("SELECT 1 FROM batches WHERE key = ?", (batch_key,)).fetchone()
            ):
                return []
            work, before = self._working_set(events)
            errors = work.check(events)
            if errors:
                return errors
            for event in events:
                work.apply(event)
            self._commit(work, before, batch_key=batch_key, accepted=len(events))
        return []

    def _working_set(self, events: list[Event]) -> tuple[EngagementStore, dict[tuple[str, str], _Row]]:
        """An EngagementStore holding only the batch's users (read from the database) and its experiments' totals;
        with the rows as read, to write back only what changed."""
        wanted: dict[str, set[str]] = {}
        for event in events:
            wanted.setdefault(event.experiment, set()).add(event.user)
        work = EngagementStore(engaged_min_days=self.engaged_min_days)
        work.sequence, work.unattributed = self.sequence, self.unattributed
        before: dict[tuple[str, str], _Row] = {}
        for experiment, users in wanted.items():
            states = work.users.setdefault(experiment, {})
            crossed = work.crossovers.setdefault(experiment, set())
            for arm in _ARMS:
                if (experiment, arm) in self.arms:
                    work.arms[(experiment, arm)] = _copy_totals(self.arms[(experiment, arm)])
            ident = self.experiment_ids.get(experiment)
            if ident is None:
                continue
            names = list(users)
            for start in range(0, len(names), _LOOKUP_CHUNK):
                chunk = names[start : start + _LOOKUP_CHUNK]
                rows = self._db.execute(
                    "SELECT user, arm, depth, pre, days, responses, events, crossed FROM users "
                    f"WHERE experiment = ? AND user IN ({','.join('?' * len(chunk))})",
                    (ident, *chunk),
                )
                for user, *row in rows:
                    before[(experiment, user)] = tuple(row)  # type: ignore[assignment]
                    states[user] = _decode_user(tuple(row))  # type: ignore[arg-type]
                    if row[-1]:
                        crossed.add(user)
        return work, before

    def _commit(
        self,
        work: EngagementStore,
        before: dict[tuple[str, str], _Row],
        *,
        batch_key: str | None,
        accepted: int,
    ) -> None:
        import time

        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = dict(self.experiment_ids)
            crossovers = dict(self.crossovers)
            inserts, updates = [], []
            for experiment, users in work.users.items():
                if experiment not in ids:
                    ids[experiment] = db.execute(
                        "INSERT INTO experiments (key) VALUES (?) RETURNING id", (experiment,)
                    ).fetchone()[0]
                ident = ids[experiment]
                crossed = work.crossovers.get(experiment, set())
                fresh = sum(1 for user in crossed if not (before.get((experiment, user)) or (0,) * 7)[6])
                if fresh:
                    crossovers[experiment] = crossovers.get(experiment, 0) + fresh
                    db.execute("UPDATE experiments SET crossovers = ? WHERE id = ?", (crossovers[experiment], ident))
                for user, state in users.items():
                    row = _encode_user(state, user in crossed)
                    old = before.get((experiment, user))
                    if old is None:
                        inserts.append((ident, user, *row))
                    elif old != row:
                        updates.append((*row, ident, user))
            db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", inserts)
            db.executemany(
                "UPDATE users SET arm = ?, depth = ?, pre = ?, days = ?, responses = ?, events = ?, crossed = ? "
                "WHERE experiment = ? AND user = ?",
                updates,
            )
            db.executemany(
                "INSERT OR REPLACE INTO arms VALUES (?, ?, ?)",
                [(ids[g], a, json.dumps(asdict(t), separators=(",", ":"))) for (g, a), t in work.arms.items()],
            )
            db.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(str(work.sequence), "sequence"), (str(work.unattributed), "unattributed")],
            )
            if batch_key is not None:
                db.execute("INSERT INTO batches VALUES (?, ?, ?)", (batch_key, accepted, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.experiment_ids, self.crossovers = ids, crossovers
        self.arms.update(work.arms)
        self.sequence, self.unattributed = work.sequence, work.unattributed

    # ------------------------------------------------------------------------------------------ reads
    def arm_stats(self, generation: str) -> tuple[ArmStats | None, ArmStats | None]:
        """(control, treatment) of one experiment key; None for an arm nobody was exposed to."""
        control = self.arms.get((generation, "control"))
        treatment = self.arms.get((generation, "treatment"))
        return (control.to_arm_stats() if control else None, treatment.to_arm_stats() if treatment else None)

    def crossover_users(self, experiment: str) -> int:
        return self.crossovers.get(experiment, 0)

    def totals(self) -> tuple[dict[tuple[str, str], ArmTotals], int, dict[str, int]]:
        """Copies of (arm totals, unattributed events, crossover users per experiment), for /metrics."""
        with self.lock:
            return (
                {key: _copy_totals(t) for key, t in self.arms.items()},
                self.unattributed,
                dict(self.crossovers),
            )

    # -------------------------------------------------------------------------------------- upkeep
    def _checkpoint_loop(self, every: float) -> None:
        """Fold the write-ahead log into the database off the request path (a PASSIVE checkpoint waits for no
        writer), and forget batch keys older than `keep_batch_keys`."""
        import sqlite3
        import time

        assert self.path is not None
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout=1000")
        last_prune = 0.0
        try:
            while not self._stop.wait(every):
                try:
                    # the bulk of the copy runs beside the writers; then a short second pass with writes held
                    # copies the frames appended meanwhile, so the log is wholly folded and the next write
                    # starts it over (a log checkpointed only while written to would grow without bound)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    with self.lock:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if time.monotonic() - last_prune > 600:
                        last_prune = time.monotonic()
                        with self.lock:  # a write: never beside the request path's transaction
                            db.execute("DELETE FROM batches WHERE at < ?", (time.time() - self.keep_batch_keys,))
                except sqlite3.OperationalError as exc:  # busy: the next round catches up
                    LOG.debug("checkpoint deferred: %s", exc)
        finally:
            db.close()

    def compact(self) -> None:
        """Fold the whole write-ahead log into the database (at shutdown): the next start reads no log."""
        with self.lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        with self.lock:
            if self.path is not None:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    # ----------------------------------------------------------------------------------------- import
    def import_legacy(self, legacy: EngagementStore) -> int:
        """Copy a JSON-snapshot store (today's `--snapshot`) into an empty database; returns the users copied."""
        with self.lock:
            if self.arms or self._db.execute("SELECT 1 FROM users LIMIT 1").fetchone():
                raise ValueError(f"state database {self.path} is not empty; import a snapshot only into a new one")
            if legacy.engaged_min_days != self.engaged_min_days:
                raise ValueError(
                    f"the snapshot counted engaged users with engaged_min_days={legacy.engaged_min_days}, not "
                    f"{self.engaged_min_days}; run with --engaged-min-days {legacy.engaged_min_days}"
                )
            work = EngagementStore(engaged_min_days=self.engaged_min_days)
            work.users, work.arms = legacy.users, legacy.arms
            work.crossovers, work.sequence, work.unattributed = legacy.crossovers, legacy.sequence, legacy.unattributed
            self._commit(work, {}, batch_key=None, accepted=0)
            return sum(len(users) for users in legacy.users.values())
