"""Simulated traffic is computed once per content (issue 29): the canary's pre-period is the generation's first
day of user traffic, generation 0's traffic is kept in the cache by its inputs, and the candidate's arm answers in
a process of its own — each giving exactly what simulating again in this process gives."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from flywheel_local import users
from flywheel_local.canary import SimulatedCanary
from flywheel_local.sources import TrafficUri
from flywheel_operator.planner import DeployCanary
from flywheel_sim import DEFAULT_WORLD, load_world

PEOPLE = 40
SEED = 3


@pytest.fixture(scope="module")
def user_traffic(user_traffic_of: Callable[[int, int], Path]) -> Path:
    return user_traffic_of(PEOPLE, SEED)


def _canary(directory: Path, gen0: Path, user_traffic: Path | None, notes: list[str]) -> SimulatedCanary:
    canary = SimulatedCanary(directory, DEFAULT_WORLD, notes.append, user_traffic=user_traffic)
    action = DeployCanary(inference_service="chat", mode="standard", traffic_percent=50, candidate_policy=str(gen0),
                          control_policy=str(gen0))
    canary.deploy(action, experiment="tiny1", days=2, seed=SEED, people=PEOPLE)
    return canary


def test_the_canary_pre_period_is_the_user_traffics_first_day(gen0: Path, user_traffic: Path, tmp_path: Path):
    reused_notes: list[str] = []
    reused = _canary(tmp_path / "reused", gen0, user_traffic, reused_notes)
    simulated_notes: list[str] = []
    simulated = _canary(tmp_path / "simulated", gen0, None, simulated_notes)
    try:
        assert reused._day_events(0) == simulated._day_events(0)  # exposures carry the pre-period's depth
        assert reused._day_events(1) == simulated._day_events(1)
    finally:
        reused.close()
        simulated.close()
    assert any("pre-period" in n and "reused" in n for n in reused_notes)
    assert any("simulating 1 pre-period day" in n for n in simulated_notes)
    exposures = [e for e in reused._day_events(0) if e["type"] == "exposure"]
    assert exposures and any(e["pre_depth"] > 0 for e in exposures)
    states = [pickle.loads((c.directory / "traffic" / "simulation-state.pickle").read_bytes())
              for c in (reused, simulated)]
    assert states[0].offset == states[1].offset
    assert (states[0].memory == states[1].memory).all() and (states[0].pre_turns == states[1].pre_turns).all()


def test_a_prefix_of_other_inputs_is_not_reused(gen0: Path, user_traffic: Path):
    assert users.control_prefix(user_traffic, DEFAULT_WORLD, gen0, seed=SEED, people=PEOPLE) is not None
    assert users.control_prefix(user_traffic, DEFAULT_WORLD, gen0, seed=SEED + 1, people=PEOPLE) is None
    assert users.control_prefix(user_traffic, DEFAULT_WORLD, gen0, seed=SEED, people=PEOPLE + 1) is None
    other_world = user_traffic.parent / "world.yaml"
    other_world.write_text(DEFAULT_WORLD.read_text().replace("seed: 0", "seed: 5", 1))
    assert users.control_prefix(user_traffic, other_world, gen0, seed=SEED, people=PEOPLE) is None


def test_generation0_traffic_is_copied_from_the_cache(gen0: Path, sim_cache: Path, user_traffic: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    def simulate(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated again although the cache holds the same traffic")

    monkeypatch.setattr(users, "_simulate", simulate)
    again = tmp_path / "again"
    users.simulate_source(DEFAULT_WORLD, gen0, "generation-0", TrafficUri("user", days=2, people=PEOPLE), again,
                          seed=SEED, cache_dir=sim_cache)
    for name in users.TRAFFIC_FILES:
        assert (again / name).read_bytes() == (user_traffic / name).read_bytes()
    records = [json.loads(line) for line in (again / "conversations.jsonl").read_text().splitlines()]
    assert records and {r["generation"] for r in records} == {"generation-0"}


def test_only_the_same_inputs_hit_the_cache(gen0: Path, sim_cache: Path, user_traffic: Path, tmp_path: Path):
    key = users.traffic_key(DEFAULT_WORLD, gen0, name="generation-0", seed=SEED, source="user", days=2,
                            people=PEOPLE)
    assert (sim_cache / f"traffic-{key[:16]}" / users.DONE_FILE).is_file()
    for change in ({"seed": SEED + 1}, {"days": 3}, {"people": PEOPLE + 1}, {"name": "gen-7"}, {"source": "internal"}):
        args = {"name": "generation-0", "seed": SEED, "source": "user", "days": 2, "people": PEOPLE, **change}
        assert users.traffic_key(DEFAULT_WORLD, gen0, **args) != key, change
    copy = tmp_path / "model"
    copy.mkdir()
    for path in gen0.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    args = {"name": "generation-0", "seed": SEED, "source": "user", "days": 2, "people": PEOPLE}
    assert users.traffic_key(DEFAULT_WORLD, copy, **args) == key  # content, not the path
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert users.traffic_key(DEFAULT_WORLD, copy, **args) != key


def test_a_policy_outside_the_cache_is_not_kept_there(gen0: Path, tmp_path: Path):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    users.simulate_source(DEFAULT_WORLD, gen0, "gen-1", TrafficUri("internal", days=1, people=5), tmp_path / "out",
                          seed=SEED, cache_dir=cache)
    assert list(cache.iterdir()) == []
    assert (tmp_path / "out" / "conversations.jsonl").is_file()
    assert not (tmp_path / "out" / users.PREFIX_FILE).exists()  # only user traffic precedes a canary


def test_a_worker_process_answers_as_the_policy_in_process(gen0: Path):
    world = load_world(DEFAULT_WORLD)
    system = {"role": "system", "content": "You are Luna."}
    chats = [[system, {"role": "user", "content": f"tell me about {topic}."}] for topic in ("stars", "moon", "sky")]
    here = users.world_policy("gen0", gen0, world)
    worker = users.PolicyWorker("gen0", gen0, DEFAULT_WORLD)
    try:
        worker.submit(chats, seed=11)
        assert worker.result() == here(chats, seed=11)
        assert worker(chats, seed=12) == here(chats, seed=12)
    finally:
        worker.close()


def test_a_worker_that_cannot_load_says_which_policy(tmp_path: Path):
    from flywheel_sim import PolicyError

    worker = users.PolicyWorker("gen9", tmp_path / "missing", DEFAULT_WORLD)
    try:
        with pytest.raises(PolicyError, match="gen9"):
            worker([[{"role": "user", "content": "hi"}]], seed=1)
    finally:
        worker.close()
