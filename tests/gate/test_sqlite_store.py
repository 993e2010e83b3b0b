"""The SQLite store (issue 30): the same sums as the in-memory store, event for event; durable per batch; a crash
mid-batch counts nothing of it and nothing twice; a restart reads a few rows, not the users."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flywheel_operator.gate.events import parse_batch, parse_event
from flywheel_operator.gate.store import DurableStore, EngagementStore, SqliteStore
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gate.test_store import engagement, exposure

ROOT = Path(__file__).resolve().parents[2]


def events_of(*lines: str) -> list:
    events, errors = parse_batch("\n".join(lines))
    assert errors == []
    return events


def fold(batches: list[list[str]], min_days: int = 2) -> EngagementStore:
    """What the in-memory store (the reference) makes of the batches it accepts."""
    store = EngagementStore(engaged_min_days=min_days)
    for batch in batches:
        events = events_of(*batch)
        if not store.check(events):
            for event in events:
                store.apply(event)
    return store


def same_state(sqlite: SqliteStore, reference: EngagementStore, experiments: set[str]) -> None:
    for experiment in experiments:
        assert sqlite.arm_stats(experiment) == reference.arm_stats(experiment), experiment
        assert sqlite.crossover_users(experiment) == reference.crossover_users(experiment), experiment
    assert sqlite.unattributed == reference.unattributed


line = st.one_of(
    st.builds(
        exposure,
        st.sampled_from([f"u{i}" for i in range(12)]),
        st.sampled_from(["control", "treatment"]),
        st.integers(0, 8).map(float),
        st.sampled_from(["gen2", "gen3"]),
    ),
    st.builds(
        lambda user, turns, served, bad, day, arm, generation: engagement(
            user,
            turns,
            generation=generation,
            responses=served,
            guardrails={"errors": min(bad, served)} if bad else {},
            day=day,
            **({"arm": arm} if arm else {}),
        ),
        st.sampled_from([f"u{i}" for i in range(12)]),
        st.integers(0, 4),
        st.integers(0, 4),
        st.integers(0, 3),
        st.integers(0, 5),
        st.none() | st.sampled_from(["control", "treatment"]),
        st.sampled_from(["gen2", "gen3"]),
    ),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(line, min_size=1, max_size=12), min_size=1, max_size=8), st.integers(1, 3), st.data())
def test_the_sqlite_store_counts_exactly_what_the_in_memory_store_counts(tmp_path_factory, batches, min_days, data):
    """Every ArmStats field, crossovers and unattributed events equal the reference store's, across a restart
    at any batch (the database is all the state there is)."""
    path = tmp_path_factory.mktemp("state") / "state.db"
    restart_at = data.draw(st.integers(0, len(batches)))
    store = SqliteStore(path, engaged_min_days=min_days)
    for index, batch in enumerate(batches):
        if index == restart_at:
            store.close()
            store = SqliteStore(path, engaged_min_days=min_days)
        assert store.submit(events_of(*batch)) == []
    same_state(store, fold(batches, min_days), {"gen2", "gen3"})
    store.close()
    same_state(SqliteStore(path, engaged_min_days=min_days), fold(batches, min_days), {"gen2", "gen3"})


def test_a_refused_batch_changes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    assert store.submit(events_of(exposure("a"))) == []
    assert store.submit(events_of(exposure("b"))) == []
    before = store.arm_stats("gen2")
    store._db.execute("UPDATE users SET depth = ? WHERE user = 'a'", (10**12 - 1,))
    errors = store.submit(events_of(engagement("b", 2), engagement("a", 1), engagement("a", 1)))
    assert len(errors) == 1 and errors[0].startswith("event 3:") and "turns" in errors[0]
    assert store.arm_stats("gen2") == before and store.user("gen2", "b").depth == 0


def test_a_resent_batch_with_its_idempotency_key_is_counted_once(tmp_path: Path) -> None:
    """The crash between the commit and the 200: the writer resends; the key was committed with the batch."""
    store = SqliteStore(tmp_path / "state.db")
    batch = events_of(exposure("a", pre=2), engagement("a", 3, day=1))
    assert store.submit(batch, batch_key="batch-0001") == []
    store.close()
    again = SqliteStore(tmp_path / "state.db")
    assert again.submit(batch, batch_key="batch-0001") == []
    control, _ = again.arm_stats("gen2")
    assert control is not None and (control.users, control.depth_sum) == (1, 3.0)
    assert again.submit(batch, batch_key="batch-0002") == []  # another key is another batch
    assert again.arm_stats("gen2")[0].depth_sum == 6.0


def test_restarting_under_another_engaged_rule_is_refused_with_the_fix(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "state.db", engaged_min_days=1).close()
    with pytest.raises(ValueError, match="--engaged-min-days 1"):
        SqliteStore(tmp_path / "state.db", engaged_min_days=2)


def test_a_json_snapshot_is_imported_once(tmp_path: Path) -> None:
    from flywheel_operator.gate.exporter import open_store

    snapshot = tmp_path / "snapshot.json"
    legacy = DurableStore(snapshot)
    batch = [exposure("a", pre=1), exposure("b", "treatment"), engagement("a", 2, day=0), engagement("a", 1, day=1)]
    assert legacy.submit(events_of(*batch)) == []
    assert legacy.submit(events_of(exposure("a", "treatment"))) == []  # a crossover, from the journal
    expected = legacy.arm_stats("gen2")
    store = open_store(tmp_path / "state.db", snapshot)
    assert store.arm_stats("gen2") == expected and store.crossover_users("gen2") == 1
    assert not snapshot.with_name("snapshot.json.journal").exists()
    assert snapshot.with_name("snapshot.json.journal.imported").exists()
    assert store.submit(events_of(engagement("b", 4, day=2))) == []
    store.close()
    reopened = open_store(tmp_path / "state.db", snapshot)  # nothing left to import: the database goes on
    assert reopened.arm_stats("gen2")[1].depth_sum == 4.0 and reopened.arm_stats("gen2")[0] == expected[0]


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flywheel_operator.gate.events import parse_batch
    from flywheel_operator.gate.store import SqliteStore

    path, crash_batch, crash_at = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    store = SqliteStore(path, checkpoint_every=0.05)

    class Crashing:
        # SIGKILL inside the batch's transaction: after its user rows are written, before (or after) COMMIT
        def __init__(self, db):
            self.db, self.batch = db, 0
        def execute(self, sql, *args):
            if sql == "COMMIT":
                self.batch += 1
                if self.batch == crash_batch and crash_at == "before-commit":
                    os.kill(os.getpid(), signal.SIGKILL)
            result = self.db.execute(sql, *args)
            if sql == "COMMIT" and self.batch == crash_batch and crash_at == "after-commit":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        def executemany(self, *args):
            return self.db.executemany(*args)

    store._db = Crashing(store._db)
    for line in sys.stdin:
        events, errors = parse_batch(line.replace("\\t", "\\n"))
        assert not errors and store.submit(events) == []
        print("ack", flush=True)
    """
)


@pytest.mark.parametrize("crash_at", ["before-commit", "after-commit"])
def test_a_crash_mid_batch_loses_no_acknowledged_batch_and_counts_nothing_twice(tmp_path: Path, crash_at) -> None:
    """A writer process is SIGKILLed inside batch 7's transaction (its user rows written, not committed; or
    committed, not acknowledged). On reopening, the state is exactly the acknowledged batches (plus batch 7 when
    its commit was reached): nothing lost, nothing half-counted, nothing twice."""
    batches = []
    for index in range(12):
        users = [f"u{(index * 37 + k) % 50}" for k in range(20)]
        batches.append(
            [exposure(u, "control" if int(u[1:]) % 2 else "treatment", pre=float(k % 3)) for k, u in enumerate(users)]
            + [
                engagement(u, 1 + k % 3, day=index % 4, responses=2, guardrails={"errors": k % 2})
                for k, u in enumerate(users)
            ]
        )
    path = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "7", crash_at],
        input="".join("\t".join(batch) + "\n" for batch in batches),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    acknowledged = child.stdout.count("ack")
    assert acknowledged == 6
    committed = acknowledged + (crash_at == "after-commit")
    reopened = SqliteStore(path)
    same_state(reopened, fold(batches[:committed]), {"gen2"})
    # the writer resends what was never acknowledged: every batch counts exactly once
    for batch in batches[acknowledged:]:
        assert reopened.submit(events_of(*batch), batch_key=None) == []
    expected = fold(batches) if crash_at == "before-commit" else fold(batches[:7] + batches[6:])
    same_state(reopened, expected, {"gen2"})


def test_a_json_snapshot_counted_under_another_rule_is_not_imported(tmp_path: Path) -> None:
    from flywheel_operator.gate.exporter import open_store

    snapshot = tmp_path / "snapshot.json"
    legacy = DurableStore(snapshot, engaged_min_days=1)
    assert legacy.submit([parse_event(exposure("a"))]) == []
    legacy.compact()
    with pytest.raises(ValueError, match="engaged_min_days=1"):
        open_store(tmp_path / "state.db", snapshot, engaged_min_days=2)
    assert snapshot.exists()  # left in place for a run with the right rule
    assert json.loads(snapshot.read_text())["engaged_min_days"] == 1
