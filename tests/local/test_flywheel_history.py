"""`flywheel run` honours a Flywheel's `historyLimit` as the operator does: the oldest finished generations beyond
it are deleted (locally their directories), never the latest promoted one (the next parent), and the trajectory
keeps them all. The turns run through `FlywheelRunner.turn` (plan_flywheel and the run directory) with each
generation's decision written by hand: no stage runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from flywheel_local.flywheel import MANIFEST_FILE, FlywheelRunner, load_flywheel, read_flywheel_status
from flywheel_operator.api import FinalDecision, FlywheelGenerationStatus
from flywheel_operator.api.flywheel import Flywheel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MANIFEST = Path(__file__).with_name("tiny-flywheel.yaml")
START = datetime(2026, 12, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.moment = START

    def now(self) -> datetime:
        return self.moment

    def jump_to(self, moment: datetime) -> None:
        self.moment = max(self.moment, moment)


def _flywheel(limit: int | None, generations: int) -> Flywheel:
    flywheel = load_flywheel(MANIFEST)
    spec = flywheel.spec.model_copy(update={
        "history_limit": limit,
        "stop_rules": flywheel.spec.stop_rules.model_copy(update={"max_generations": generations,
                                                                  "max_rollbacks_in_a_row": None}),
    })
    return flywheel.model_copy(update={"spec": spec})


def _decide(directory: Path, promoted: bool, clock: Clock) -> None:
    """What the generation runner leaves: a decided status and the stage outputs (a model)."""
    clock.moment += timedelta(days=3)
    (directory / "rl" / "model").mkdir(parents=True)
    (directory / "rl" / "model" / "weights.bin").write_bytes(b"\0" * 16)
    (directory / "logs").mkdir()
    (directory / "logs" / "rl.log").write_text("trained\n")
    outcome = "PROMOTE" if promoted else "ROLL_BACK"
    status = FlywheelGenerationStatus(
        phase="Promoted" if promoted else "RolledBack",
        promoted_policy=str(directory / "rl" / "model") if promoted else None,
        decision=FinalDecision(outcome=outcome, reasons=[f"{outcome} by the test"], at=clock.moment),
    )
    (directory / "status.json").write_text(json.dumps(status.to_wire()))


def _chain(run_dir: Path, flywheel: Flywheel, promotions: list[bool]) -> tuple[list[str], list[str], list[str]]:
    """Turn the Flywheel to its end; returns the generations in order, the parents the created ones named (each
    checked to exist when created), and what the display said."""
    said: list[str] = []
    clock = Clock()
    runner = SimpleNamespace(run_dir=run_dir, clock=clock,
                             display=SimpleNamespace(event=lambda text, warning=False: said.append(text)))
    turning = FlywheelRunner(runner)  # type: ignore[arg-type]
    names: list[str] = []
    parents: list[str] = []
    for _ in range(3 * len(promotions) + 3):
        status = turning.turn(flywheel).status
        if status.in_flight is not None:
            manifest = json.loads((run_dir / status.in_flight / MANIFEST_FILE).read_text())
            parent = manifest["spec"].get("parent")
            if parent is not None:  # the local runner reads the parent's directory (Runner._parent)
                assert (run_dir / parent / "status.json").is_file(), f"{status.in_flight}'s parent {parent} is gone"
                parents.append(parent)
            names.append(status.in_flight)
            _decide(run_dir / status.in_flight, promotions[len(names) - 1], clock)
        elif status.phase == "Waiting" and status.next_start_at is not None:
            clock.jump_to(status.next_start_at)
        else:
            break
    return names, parents, said


def _expected_kept(names: list[str], promotions: list[bool], limit: int | None) -> set[str]:
    """The operator's rule, read from docs/flywheel.md: `limit` finished generations kept, oldest deleted first,
    never the latest promoted one."""
    if limit is None:
        return set(names)
    promoted = [n for n, p in zip(names, promotions, strict=True) if p]
    latest = promoted[-1] if promoted else None
    others = [n for n in names if n != latest]
    kept = set(others[max(len(others) - limit, 0):]) if limit else set()
    return kept | ({latest} if latest else set())


def _left(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if p.is_dir()}


def test_history_limit_deletes_the_oldest_finished_generations_but_never_the_next_parent(tmp_path: Path) -> None:
    promotions = [True, False, False, True, False]
    flywheel = _flywheel(1, len(promotions))
    names, parents, said = _chain(tmp_path, flywheel, promotions)
    assert names == [f"tiny-{n}" for n in range(1, 6)]
    assert parents == ["tiny-1", "tiny-1", "tiny-1", "tiny-4"]  # every parent was still there when needed
    assert _left(tmp_path) == {"tiny-4", "tiny-5"}  # the latest promoted and the newest other one
    assert sum("deleted tiny-" in s and "historyLimit 1" in s for s in said) == 3
    status = read_flywheel_status(tmp_path)
    assert status is not None and [e.name for e in status.trajectory] == names  # the trajectory keeps them all
    assert [e.phase for e in status.trajectory] == ["Promoted", "RolledBack", "RolledBack", "Promoted", "RolledBack"]
    assert status.last_promoted == "tiny-4"


def test_without_a_history_limit_every_generation_is_kept(tmp_path: Path) -> None:
    promotions = [False, True, False]
    names, _, said = _chain(tmp_path, _flywheel(None, len(promotions)), promotions)
    assert _left(tmp_path) == set(names)
    assert not any("deleted" in s for s in said)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(promotions=st.lists(st.booleans(), min_size=1, max_size=6), limit=st.one_of(st.none(), st.integers(0, 4)))
def test_what_is_left_is_what_the_operator_would_keep(
    tmp_path_factory: pytest.TempPathFactory, promotions: list[bool], limit: int | None
) -> None:
    run_dir = tmp_path_factory.mktemp("run")
    names, _, _ = _chain(run_dir, _flywheel(limit, len(promotions)), promotions)
    assert len(names) == len(promotions)
    assert _left(run_dir) == _expected_kept(names, promotions, limit)


def test_a_deletion_stopped_halfway_is_finished_by_the_next_turn(tmp_path: Path) -> None:
    """A run stopped while deleting leaves the manifest (it goes last): the generation is still observed, so the
    next turn's plan deletes it again and the rest goes. Lowering historyLimit on a run deletes on its next turn."""
    promotions = [False, True, False]
    _chain(tmp_path, _flywheel(None, len(promotions)), promotions)
    half = tmp_path / "tiny-3"  # as if deleting tiny-3 had stopped after its status and model
    (half / "status.json").unlink()
    (half / "rl" / "model" / "weights.bin").unlink()
    runner = SimpleNamespace(run_dir=tmp_path, clock=Clock(), display=SimpleNamespace(event=lambda *a, **k: None))
    FlywheelRunner(runner).turn(_flywheel(0, len(promotions)))  # type: ignore[arg-type]
    assert _left(tmp_path) == {"tiny-2"}
