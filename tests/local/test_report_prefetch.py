"""The report's work is handed to the runner's side worker while the stage programs leave a core free (issue 29):
the reward models' agreement with the oracle once every reward model is trained, the candidate's oracle draws once
the candidate exists; only in a run that writes the report. The report waits for them and reads them
(tests/local/test_oracle_runs.py: the same oracle.json as computing every model in one process)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flywheel_local import oracle_runs
from flywheel_local.backend import LocalBackend, RunPaths
from flywheel_local.rm_oracle import compute_rm_agreement, prefetch_key
from flywheel_local.runner import load_manifest
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.api.status import StageRecord
from flywheel_sim import DEFAULT_WORLD

TINY = Path(__file__).with_name("tiny-generation.yaml")
NOW = datetime(2026, 12, 6, tzinfo=UTC)


class RecordingPool:
    def __init__(self) -> None:
        self.handed: list[tuple[Any, tuple[Any, ...]]] = []

    def apply_async(self, function: Any, args: tuple[Any, ...]) -> Any:
        self.handed.append((function, args))
        return self


def _record(name: str, state: str) -> StageRecord:
    return StageRecord(name=name, state=state, attempts=1, child=f"gen1-{name}-1", created_at=NOW)


def _backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, draws: int | None) -> tuple[LocalBackend, RecordingPool]:
    monkeypatch.setattr(oracle_runs, "_PREFETCHES", {})
    backend = LocalBackend(load_manifest(TINY), RunPaths(tmp_path / "gen1"), world_file=DEFAULT_WORLD,
                           cache_dir=tmp_path / "cache", cpus=2, warm_start=False, oracle_draws=draws)
    pool = RecordingPool()
    monkeypatch.setattr(backend, "_side_worker", lambda: pool)
    return backend, pool


def test_handed_over_as_the_status_allows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, pool = _backend(tmp_path, monkeypatch, draws=4)
    rewards = ["reward-pointwise", "reward-pairwise"]
    backend.status_written(FlywheelGenerationStatus(stages=[_record("curate", "Succeeded")]))
    backend.status_written(FlywheelGenerationStatus(stages=[_record(rewards[0], "Succeeded"),
                                                            _record(rewards[1], "Running")]))
    assert pool.handed == []  # a reward model still trains
    for stage in ("sft", "rl"):  # SFT and RL gain from a second thread: both start on the idle cores
        running = FlywheelGenerationStatus(stages=[_record(r, "Succeeded") for r in rewards]
                                           + [_record(stage, "Running")])
        backend.status_written(running)
        assert pool.handed == []
    candidate = tmp_path / "gen1" / "rl" / "model"
    candidate.mkdir(parents=True)
    (candidate / "config.json").write_text("{}")
    with_candidate = FlywheelGenerationStatus(
        stages=[_record(r, "Succeeded") for r in rewards] + [_record("sft", "Succeeded"), _record("rl", "Succeeded"),
                                                              _record("eval", "Running")],
        candidate_policy=str(candidate))
    backend.status_written(with_candidate)
    backend.status_written(with_candidate)  # once only
    assert len(pool.handed) == 2
    function, args = pool.handed[0]  # eval runs on one thread beside the draws anyway
    assert function is compute_rm_agreement
    assert args[:2] == (backend.paths.root.resolve(), DEFAULT_WORLD)
    assert prefetch_key(backend.paths.root) in oracle_runs._PREFETCHES
    function, args = pool.handed[1]
    assert function is oracle_runs._compute_and_store
    assert args == (str(candidate), str(DEFAULT_WORLD), 4, None)  # outside the cache: handed back, not kept
    assert oracle_runs.expected_key(DEFAULT_WORLD, candidate, 4) in oracle_runs._PREFETCHES


def test_nothing_handed_over_without_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, pool = _backend(tmp_path, monkeypatch, draws=None)
    backend.status_written(FlywheelGenerationStatus(stages=[_record("reward-pointwise", "Succeeded")],
                                                    candidate_policy=str(tmp_path)))
    assert pool.handed == []


def test_a_failed_rl_leaves_the_agreement_to_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, pool = _backend(tmp_path, monkeypatch, draws=4)
    backend.status_written(FlywheelGenerationStatus(stages=[_record("reward-pointwise", "Succeeded"),
                                                            _record("sft", "Succeeded"), _record("rl", "Failed")]))
    assert pool.handed == []


def test_all_reward_models_failed_is_not_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, pool = _backend(tmp_path, monkeypatch, draws=4)
    backend.status_written(FlywheelGenerationStatus(stages=[_record("reward-pointwise", "Failed")]))
    assert pool.handed == []


def test_the_side_worker_measures_the_status_handed_over_not_the_one_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """carry_out hands the agreement over before the runner writes status.json (the reward model that finished
    last still Running there): measured from that file, under a key the report found stale, so the report measured
    every reward model again on the critical path (the 11 s report of bench/results/local.json at 90f2fca).
    Measured from the status handed over, the report finds it current."""
    from flywheel_local import rm_oracle

    backend, pool = _backend(tmp_path, monkeypatch, draws=4)
    measured: list[list[tuple[str, str, str | None]]] = []

    def fake_measure(directory: Path, world: Any, policy_for: Any, status: Any = None) -> dict[str, Any]:
        status = status or FlywheelGenerationStatus.model_validate_json((directory / "status.json").read_text())
        measured.append([(r.name, r.state, r.output_digest) for r in status.stages])
        return {"pairs": 1, "parent": "p", "models": {"pointwise": {"oracle_agreement": 0.5}}}

    monkeypatch.setattr(rm_oracle, "measure_generation", fake_measure)
    rewards = ["reward-pointwise", "reward-pairwise"]

    def done(name: str) -> StageRecord:
        return _record(name, "Succeeded").model_copy(update={"output_digest": f"sha256:{name}",
                                                             "artifacts": {"model": f"/m/{name}"}})

    # the reward model that finished last is still Running in status.json (the others were written Succeeded)
    on_disk = FlywheelGenerationStatus(stages=[done("curate"), done(rewards[0]), _record(rewards[1], "Running")])
    backend.paths.root.mkdir(parents=True)
    backend.paths.status.write_text(on_disk.model_dump_json(by_alias=True, exclude_none=True))
    trained = FlywheelGenerationStatus(stages=[done("curate")] + [done(r) for r in rewards]
                                       + [done("sft"), done("rl"), _record("eval", "Running")],
                                       candidate_policy=str(tmp_path / "missing-candidate"))
    backend.status_written(trained)  # what carry_out does before the runner writes `trained`
    (function, args), = pool.handed
    function(*args)  # what the side worker runs
    assert measured == [[(r.name, r.state, r.output_digest) for r in trained.stages]]
    backend.paths.status.write_text(trained.model_dump_json(by_alias=True, exclude_none=True))  # the runner's write
    compute_rm_agreement(backend.paths.root, DEFAULT_WORLD)  # what the report does after the run
    assert len(measured) == 1  # current: not measured again


@pytest.mark.parametrize("threads", [1, 3])
def test_the_agreement_is_measured_on_the_worlds_serving_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """The reward models' scoring ran on torch's default of every core in the side worker, spinning against the
    stage beside it (make run's gen1: 32.1 CPU-s on 2 threads against 11.9 on 1, rm_oracle.json the same bytes);
    it runs on `serving.threads`, as the same worker's sampling does, and torch's setting is restored after."""
    import torch
    from flywheel_local import rm_oracle
    from flywheel_sim import load_world

    world = load_world(DEFAULT_WORLD)
    world = world.model_copy(update={"serving": world.serving.model_copy(update={"threads": threads})})
    monkeypatch.setattr("flywheel_sim.load_world", lambda _: world)
    seen: list[int] = []

    def fake_measure(directory: Path, world: Any, policy_for: Any, status: Any = None) -> dict[str, Any]:
        seen.append(torch.get_num_threads())
        return {"pairs": 1, "parent": "p", "models": {"pointwise": {"oracle_agreement": 0.5}}}

    monkeypatch.setattr(rm_oracle, "measure_generation", fake_measure)
    done = _record("reward-pointwise", "Succeeded").model_copy(update={"output_digest": "sha256:x"})
    (tmp_path / "gen1").mkdir()
    (tmp_path / "gen1" / "status.json").write_text(
        FlywheelGenerationStatus(stages=[done]).model_dump_json(by_alias=True, exclude_none=True))
    before = torch.get_num_threads()
    compute_rm_agreement(tmp_path, DEFAULT_WORLD)
    assert seen == [threads]
    assert torch.get_num_threads() == before
