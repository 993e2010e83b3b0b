"""`make run` shows where the time goes (issue 28 point 2): in-process work the user waits on (generation 0,
simulated traffic, the A/B simulation) is announced and timed, a stage's line counts the time its inputs took,
and the run ends with the time of each phase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from flywheel_local import backend as backend_module
from flywheel_local.backend import LocalBackend, RunPaths
from flywheel_local.commands import time_summary
from flywheel_local.runner import load_manifest, stage_time
from flywheel_operator.api import FlywheelGenerationStatus, StageRecord
from flywheel_sim import DEFAULT_WORLD

TINY = Path(__file__).with_name("tiny-generation.yaml")
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _clock(*readings: float):
    values = list(readings)
    return lambda: values.pop(0) if len(values) > 1 else values[0]


def test_traffic_simulation_is_announced_and_timed(tmp_path, monkeypatch):
    generation = load_manifest(TINY)
    notes: list[str] = []
    backend = LocalBackend(generation, RunPaths(tmp_path / "tiny1"), world_file=DEFAULT_WORLD,
                           cache_dir=tmp_path / "cache", note=notes.append)

    def simulate(world, policy, name, parsed, out, *, seed, cache_dir=None, split=False):
        out.mkdir(parents=True, exist_ok=True)
        (out / "events.jsonl").write_text("")
        return out / "conversations.jsonl"

    monkeypatch.setattr("flywheel_local.users.simulate_source", simulate)
    monkeypatch.setattr(backend_module.time, "monotonic", _clock(100.0, 147.0))
    backend._resolve_source(generation.spec.data.user_traffic, "/policy")
    assert notes == ["simulating 2 day(s) of user traffic with the starting policy", "user traffic: 47s"]
    assert backend.timings == {"user traffic": 47.0}
    monkeypatch.setattr(backend_module.time, "monotonic", _clock(200.0, 200.2))
    backend._resolve_source(generation.spec.data.user_traffic, "/policy")  # cached: timed, not announced again
    assert len(notes) == 2 and round(backend.timings["user traffic"], 1) == 47.2


def test_a_stage_line_counts_the_time_its_inputs_took():
    record = StageRecord(name="curate", state="Succeeded", attempts=1, child="gen1-curate-1", created_at=T0,
                         started_at=T0 + timedelta(seconds=47), finished_at=T0 + timedelta(seconds=54))
    assert stage_time(record) == "ran 7s, after 47s preparing its inputs"
    quick = record.model_copy(update={"started_at": T0, "finished_at": T0 + timedelta(seconds=7)})
    assert stage_time(quick) == "ran 7s"


def test_the_run_ends_with_each_phase_it_waited_on():
    records = [
        StageRecord(name="curate", state="Succeeded", attempts=1, child="gen1-curate-1", created_at=T0,
                    started_at=T0 + timedelta(seconds=47), finished_at=T0 + timedelta(seconds=54)),
        StageRecord(name="sft", state="Succeeded", attempts=1, child="gen1-sft-1", created_at=T0,
                    started_at=T0, finished_at=T0 + timedelta(seconds=150)),
    ]
    outcome = SimpleNamespace(status=FlywheelGenerationStatus(stages=records), launched=["gen1-curate-1", "gen1-sft-1"])
    line = time_summary({"generation 0": 12.0, "user traffic": 31.0, "internal traffic": 16.0, "report": 9.0},
                        [outcome], 225.0)
    assert line == ("done in 3.8 min: generation 0 12s, user traffic 31s, internal traffic 16s, curate 7s, "
                    "sft 2.5 min, report 9s")


def test_a_run_of_the_earlier_nested_layout_is_resumed_where_it_is(tmp_path, monkeypatch, capsys):
    """runs/gen1/run.json + runs/gen1/gen1/ (before issue 28): `make run` resumes it instead of starting over."""
    import json

    from flywheel_local import commands

    old = tmp_path / "runs" / "tiny1"
    (old / "tiny1").mkdir(parents=True)
    (old / "run.json").write_text(json.dumps({"first": "tiny1"}))
    manifest = tmp_path / "tiny.yaml"
    root = tmp_path / "runs"
    manifest.write_text(TINY.read_text().replace("storage: {uri: runs}", f"storage: {{uri: {root}}}"))
    seen = {}

    class Stop(Exception):
        pass

    def runner(directory, **kwargs):
        seen["directory"] = directory
        raise Stop

    monkeypatch.setattr(commands, "Runner", runner)
    with pytest.raises(Stop):
        commands.run_command(str(manifest))
    assert seen["directory"] == old
    assert "resuming it there" in capsys.readouterr().out
