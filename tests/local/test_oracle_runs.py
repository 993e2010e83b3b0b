"""The report's oracle, computed side by side and kept by content (issue 29), gives exactly the figures of computing
every model in this process one after another: parallel processes, the cache of generation 0's draws and the
prefetch in the runner's side worker change where the draws are computed, never what they are."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
from flywheel_local import oracle_runs
from flywheel_local.report import ORACLE_FILE, compute_oracle
from flywheel_local.sources import generation0
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_sim import DEFAULT_WORLD

DRAWS = 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def parent(cache: Path) -> Path:
    return generation0("sim://generation-0?steps=20", DEFAULT_WORLD, cache)


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another model, outside the cache (as a trained candidate is)."""
    return generation0("sim://generation-0?steps=24", DEFAULT_WORLD, tmp_path_factory.mktemp("elsewhere"))


def _run_dir(root: Path, parent: Path, candidate: Path) -> Path:
    generation = root / "gen1"
    (generation / "canary").mkdir(parents=True)
    status = FlywheelGenerationStatus(phase="Promoted", policy=str(parent), candidate_policy=str(candidate))
    (generation / "status.json").write_text(status.model_dump_json())
    (generation / "canary" / "canary.json").write_text(json.dumps({"revealed_days": 1, "people": 300}))
    return root


@pytest.fixture(scope="module")
def one_after_another(parent: Path, candidate: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """oracle.json computed the plain way: one process, no cache."""
    run = _run_dir(tmp_path_factory.mktemp("plain"), parent, candidate)
    compute_oracle(run, DEFAULT_WORLD, draws=DRAWS, workers=1)
    return (run / "gen1" / ORACLE_FILE).read_text()


def test_models_side_by_side_and_cached_give_the_same_oracle(parent: Path, candidate: Path, cache: Path,
                                                             one_after_another: str, tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "parallel", parent, candidate)
    compute_oracle(run, DEFAULT_WORLD, draws=DRAWS, workers=2, cache_dir=cache)
    found = json.loads((run / "gen1" / ORACLE_FILE).read_text())
    assert (run / "gen1" / ORACLE_FILE).read_text() == one_after_another
    assert len(found["parent"]["draws"]) == DRAWS and found["ab_window"]["draws"]
    key = oracle_runs.expected_key(DEFAULT_WORLD, parent, DRAWS)
    assert (cache / f"oracle-{key[:16]}.pickle").is_file()  # generation 0 lives in the cache: kept there
    assert oracle_runs.cache_entry(cache, candidate, oracle_runs.expected_key(DEFAULT_WORLD, candidate, DRAWS)) is None


def test_a_later_report_reads_generation_0_from_the_cache(parent: Path, candidate: Path, cache: Path,
                                                          one_after_another: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    oracle_runs.expected_for([str(parent)], DEFAULT_WORLD, DRAWS, cache_dir=cache)  # kept (or already there)
    computed: list[str] = []
    real = oracle_runs.compute_expected

    def compute(model_dir: str, world_file: str, draws: int) -> list:
        computed.append(model_dir)
        return real(model_dir, world_file, draws)

    monkeypatch.setattr(oracle_runs, "compute_expected", compute)
    run = _run_dir(tmp_path / "later", parent, candidate)
    compute_oracle(run, DEFAULT_WORLD, draws=DRAWS, workers=1, cache_dir=cache)
    assert computed == [str(candidate)]
    assert (run / "gen1" / ORACLE_FILE).read_text() == one_after_another


def test_a_prefetch_in_a_side_worker_is_waited_for_and_read(parent: Path, one_after_another: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tmp_path / "cache"
    shutil.copytree(parent, fresh / parent.name)
    model = fresh / parent.name
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert oracle_runs.prefetch(model, DEFAULT_WORLD, fresh, pool=pool, draws=DRAWS)
        assert not oracle_runs.prefetch(model, DEFAULT_WORLD, fresh, pool=pool, draws=DRAWS)  # handed over once
        monkeypatch.setattr(oracle_runs, "compute_expected", lambda *args: pytest.fail("computed again"))
        expected = oracle_runs.expected_for([str(model)], DEFAULT_WORLD, DRAWS, cache_dir=fresh)[str(model)]
    from flywheel_sim import load_world
    from flywheel_sim.oracle import summarise

    world = load_world(DEFAULT_WORLD)
    figures = [summarise(world, e, seed=world.seed, draw=d) for d, e in enumerate(expected)]
    assert figures == json.loads(one_after_another)["parent"]["draws"]


def test_a_candidate_prefetched_outside_the_cache_is_handed_to_the_report(
        parent: Path, candidate: Path, cache: Path, one_after_another: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidate's draws, computed in the runner's side worker while its eval ran, are the report's: not kept
    anywhere on disk, not computed again, and the oracle.json of computing everything in one process."""
    oracle_runs.expected_for([str(parent)], DEFAULT_WORLD, DRAWS, cache_dir=cache)  # generation 0 kept
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert oracle_runs.prefetch(candidate, DEFAULT_WORLD, cache, pool=pool, draws=DRAWS)
        assert not oracle_runs.prefetch(candidate, DEFAULT_WORLD, cache, pool=pool, draws=DRAWS)  # handed over once
        monkeypatch.setattr(oracle_runs, "compute_expected", lambda *args: pytest.fail("computed again"))
        run = _run_dir(tmp_path / "prefetched", parent, candidate)
        compute_oracle(run, DEFAULT_WORLD, draws=DRAWS, workers=1, cache_dir=cache)
    assert (run / "gen1" / ORACLE_FILE).read_text() == one_after_another
    assert not list(cache.glob(f"oracle-{oracle_runs.expected_key(DEFAULT_WORLD, candidate, DRAWS)[:16]}*"))


def test_a_prefetch_of_other_draws_is_not_used(candidate: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Draws handed back for another number of draws (or a failed prefetch) are computed again."""

    class Done:
        def __init__(self, value: object) -> None:
            self.value = value

        def get(self, timeout: float) -> object:
            return self.value

    class Pool:
        def apply_async(self, function: object, args: tuple) -> Done:
            return Done(["not", "the", "draws"])

    assert oracle_runs.prefetch(candidate, DEFAULT_WORLD, cache, pool=Pool(), draws=DRAWS)
    computed: list[str] = []
    monkeypatch.setattr(oracle_runs, "compute_expected", lambda model, world, draws: computed.append(model) or [1, 2])
    found = oracle_runs.expected_for([str(candidate)], DEFAULT_WORLD, DRAWS, cache_dir=cache)
    assert computed == [str(candidate)] and found[str(candidate)] == [1, 2]


def test_work_handed_over_is_waited_for_once() -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert oracle_runs.hand_over("key-a", pool, sorted, [3, 1, 2])
        assert not oracle_runs.hand_over("key-a", pool, sorted, [9])
        assert oracle_runs.wait_for("key-a") == [1, 2, 3]
    assert oracle_runs.wait_for("key-a") is None  # taken
    assert oracle_runs.wait_for("never-handed-over") is None


def test_fewer_than_two_oracle_draws_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flywheel_local.commands import report_command

    (tmp_path / "gen1").mkdir()
    (tmp_path / "gen1" / "status.json").write_text(FlywheelGenerationStatus(phase="Promoted").model_dump_json())
    assert report_command(str(tmp_path), oracle_draws=1) == 2
    assert "--oracle-draws must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
