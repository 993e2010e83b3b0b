"""The seeded world generator: the same seed gives the same world, seeds differ, every world is sane, and a
generated world runs through the simulator (generation 0, a model policy, traffic)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from flywheel_sim import (
    ModelPolicy,
    ScriptedPolicy,
    World,
    build_generation0,
    load_world,
    parse_world,
    simulate_traffic,
)
from flywheel_sim.world import DEFAULT_WORLD
from flywheel_sim.worldgen import (
    RANGES,
    THEMES,
    TRAITS,
    TRAP_PULL,
    WorldGenerationError,
    _instruction_problems,
    check_world,
    describe,
    draw_world,
    generate_world,
    grammar_words,
    world_yaml,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
SEED = 100
"""The generated-worlds suite's first seed (bench/flywheel.py GENERATED_SEED)."""


@pytest.fixture(scope="module")
def generated() -> tuple[World, Any]:
    return generate_world(SEED)


def _within(value: float, key: str) -> bool:
    low, high = RANGES[key]
    return low <= value <= high


def test_the_same_seed_gives_the_same_world_and_file(generated) -> None:
    world, check = generated
    again, again_check = generate_world(SEED)
    assert again.digest() == world.digest()
    assert world_yaml(again, again_check) == world_yaml(world, check)
    assert draw_world(SEED, 3) == draw_world(SEED, 3)


def test_the_suite_worlds_are_pinned() -> None:
    """bench/flywheel.py's suite cites these worlds by seed: a change to the generator (or to the default world's
    machinery it copies) that changes them must bump GENERATOR_VERSION, re-pin here and re-run the suite."""
    assert parse_world(draw_world(SEED)).digest()[:12] == "76b8f623900e"


@given(st.integers(min_value=0, max_value=2**31), st.integers(min_value=1, max_value=2**20))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_different_seeds_give_different_worlds(seed: int, step: int) -> None:
    first, second = parse_world(draw_world(seed)), parse_world(draw_world(seed + step))
    assert first.digest() != second.digest()
    assert first.seed == seed and second.seed == seed + step


def test_a_handful_of_seeds_spread_over_the_themes_and_traits() -> None:
    worlds = [parse_world(draw_world(seed)) for seed in range(12)]
    names = {c.name.split()[0] for w in worlds for c in w.characters}
    favourites = {describe(w)["segments"][0]["favourite"] for w in worlds}
    thresholds = {w.trap.threshold for w in worlds}
    assert len(names) >= 10 and favourites == set(TRAITS) and len(thresholds) >= 5


@given(st.integers(min_value=0, max_value=2**31))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_draw_is_structurally_sane(seed: int) -> None:
    data = draw_world(seed)
    world = parse_world(data)  # the world file's own validation
    assert 3 <= len(world.characters) <= 5 and 2 <= len(world.users.segments) <= 3
    favourites = [describe(world)["segments"][i]["favourite"] for i in range(len(world.users.segments))]
    assert len(set(favourites)) == len(favourites)  # each segment weighs another trait most
    shares = [s.share for s in world.users.segments]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0, abs=0.011)
    for segment in world.users.segments:
        p = segment.preferences
        weights = {t: getattr(p, t) for t in TRAITS}
        favourite = max(weights, key=weights.__getitem__)
        assert _within(weights[favourite], "favourite")
        assert all(_within(w, "other") for t, w in weights.items() if t != favourite)
        assert _within(p.emoji, "emoji") and _within(p.length, "length") and _within(p.ideal_length, "ideal_length")
    assert max(s.preferences.emoji for s in world.users.segments) >= TRAP_PULL  # someone the trap pulls
    assert _within(world.trap.threshold, "trap.threshold") and world.trap.return_penalty > 0
    assert not check_world(world, behaviour=False).problems


def test_generated_characters_are_new_and_their_words_free() -> None:
    default = load_world(DEFAULT_WORLD)
    default_words = {w for c in default.characters for w in (*c.topics, *c.persona_words)}
    theme_words = [w for t in THEMES for w in (*t.topics, *t.persona_words)]
    assert len(set(theme_words)) == len(theme_words)  # no word belongs to two themes
    assert not set(theme_words) & default_words and not set(theme_words) & grammar_words()
    assert not {t.title for t in THEMES} & {c.name.split()[0] for c in default.characters}


def test_a_generated_world_passes_its_check_with_the_oracle(generated) -> None:
    _, check = generated
    assert check.sane and check.problems == []
    n = check.numbers
    assert n["good.depth"] > n["mixed.depth"] and n["good.breadth"] > n["mixed.breadth"]
    # the trap, against the same people without the emoji pull / without the overuse penalty
    assert n["spam.continue_rate"] > n["spam without the pull.continue_rate"]
    assert n["spam.breadth"] < n["spam without the penalty.breadth"]
    assert n["good.compliance"] >= 0.9


def test_the_default_world_is_sane_by_the_same_check() -> None:
    check = check_world(load_world(DEFAULT_WORLD), generated=False)
    assert check.problems == []


def _broken(**changes: Any) -> World:
    data = draw_world(SEED)
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
    return parse_world(data)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"trap__return_penalty": 0.0}, "trap"),
        ({"users__segments__0__preferences__emoji": -0.4, "users__segments__1__preferences__emoji": -0.4,
          "users__segments__2__preferences__emoji": -0.4}, "trap"),
        ({"users__segments__0__preferences__ideal_length": 60}, "users.segments.0.preferences.ideal_length"),
        ({"users__segments__1__preferences__question": 4.0, "users__segments__0__preferences__question": 4.0},
         "weigh the same trait"),
    ],
)
def test_the_check_names_what_is_wrong(changes: dict[str, Any], named: str) -> None:
    data = draw_world(SEED)
    for key in list(changes):  # worlds of 2 segments: drop changes to a third
        if "__2__" in key and len(data["users"]["segments"]) < 3:
            changes.pop(key)
    problems = check_world(_broken(**changes), behaviour=False).problems
    assert any(named in p for p in problems), problems


def test_instructions_the_grammar_cannot_follow_are_found() -> None:
    world = parse_world(draw_world(SEED))
    character = world.characters[0].model_copy(
        update={"instructions": [type(world.characters[0].instructions[0])(kind="max_words", value=3)]})
    problems = _instruction_problems(character)
    assert problems and "follow" in problems[0] and character.id in problems[0]


def test_a_seed_without_a_sane_world_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import flywheel_sim.worldgen as worldgen

    monkeypatch.setattr(worldgen, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(worldgen, "check_world", lambda world: worldgen.WorldCheck(problems=["trap: made up"]))
    with pytest.raises(WorldGenerationError, match=r"(?s)seed 5: no sane world in 2 draws.*trap: made up"):
        worldgen.generate_world(5)


def test_the_cli_prints_a_loadable_world_and_checks_it(generated, tmp_path: Path) -> None:
    from flywheel_local.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["world", "generate", "--seed", str(SEED)]) == 0
    path = tmp_path / "world.yaml"
    path.write_text(out.getvalue())
    assert out.getvalue().startswith(f"# Generated by `flywheel world generate --seed {SEED}`")
    assert load_world(path).digest() == generated[0].digest()
    checked = io.StringIO()
    with redirect_stdout(checked):
        assert main(["world", "check", str(path), "--generated"]) == 0
    assert checked.getvalue().rstrip().endswith("sane")
    bad = yaml.safe_load(path.read_text())
    bad["trap"]["return_penalty"] = 0.0
    path.write_text(yaml.safe_dump(bad))
    with redirect_stdout(io.StringIO()) as told:
        assert main(["world", "check", str(path)]) == 1
    assert "no trap" in told.getvalue() or "does not cost return" in told.getvalue()


def test_a_generated_world_runs_through_generation_0_and_traffic(generated, tmp_path: Path) -> None:
    world, _ = generated
    data = world.model_dump(mode="json", by_alias=True)
    data["generation0"].update({"dialogues": 200, "steps": 30})
    data["users"]["size"] = 300
    small = parse_world(data)
    gen0 = build_generation0(small, tmp_path / "cache")
    assert (gen0 / "config.json").is_file()
    policies = {"control": ModelPolicy.for_world(gen0, small, name="gen0"), "treatment": ScriptedPolicy(small)}
    result = simulate_traffic(small, policies, days=1, seed=3, max_people=40, out=tmp_path / "traffic")
    assert {s["arm"] for s in result.sessions} == {"control", "treatment"}
    assert {r["character"]["id"] for r in result.records} <= {c.id for c in small.characters}
    assert (tmp_path / "traffic" / "conversations.jsonl").stat().st_size > 0
