"""The world file: the default loads, and bad files are rejected with the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from flywheel_sim import FEATURES, World, WorldFileError, load_world, parse_world
from flywheel_sim.world import Preferences
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def test_default_world_loads_with_checkable_instructions(world: World) -> None:
    assert len(world.characters) >= 3
    assert all(c.instructions for c in world.characters)
    assert world.users.size > world.internal.population.size
    assert set(FEATURES) <= set(Preferences.model_fields)


def test_digest_ignores_formatting(world_data: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(world_data, default_flow_style=True, width=10_000))
    assert load_world(path).digest() == parse_world(world_data).digest()
    world_data["session"]["max_turns"] += 1
    assert parse_world(world_data).digest() != load_world(path).digest()


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ((), "colour"),
        (("session",), "max_turn"),
        (("users", "segments", 0, "preferences"), "emojis"),
        (("characters", 1), "mood"),
    ],
)
def test_unknown_key_is_rejected_by_its_path(world_data: dict[str, Any], where: tuple, key: str) -> None:
    node = world_data
    for part in where:
        node = node[part]
    node[key] = 1
    with pytest.raises(WorldFileError) as caught:
        parse_world(world_data)
    path = ".".join(str(p) for p in (*where, key))
    assert f"{path}: unknown key" in str(caught.value)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    feature=st.sampled_from(["question", "on_topic", "persona", "compliance", "emoji", "length"]),
    value=st.one_of(st.floats(min_value=5.0001, max_value=1e6), st.floats(min_value=-1e6, max_value=-5.0001)),
    segment=st.integers(min_value=0, max_value=1),
)
def test_out_of_range_weight_is_rejected_by_its_path(
    world_data: dict[str, Any], feature: str, value: float, segment: int
) -> None:
    world_data["users"]["segments"][segment]["preferences"][feature] = value
    with pytest.raises(WorldFileError) as caught:
        parse_world(world_data)
    message = str(caught.value)
    assert f"users.segments.{segment}.preferences.{feature}:" in message
    assert repr(value) in message


def test_instruction_is_checked_by_the_trainer_verifiers(world_data: dict[str, Any]) -> None:
    world_data["characters"][0]["instructions"][0] = {"kind": "max_words", "value": "twenty"}
    with pytest.raises(WorldFileError, match=r"characters\.0\.instructions\.0: .*integer"):
        parse_world(world_data)
    world_data["characters"][0]["instructions"][0] = {"kind": "rhyme"}
    with pytest.raises(WorldFileError, match=r"characters\.0\.instructions\.0: .*unknown instruction kind"):
        parse_world(world_data)


def test_cross_field_rules_name_the_fix(world_data: dict[str, Any]) -> None:
    world_data["users"]["favourite_characters"] = len(world_data["characters"]) + 1
    with pytest.raises(WorldFileError, match=r"users\.favourite_characters"):
        parse_world(world_data)
    world_data["users"]["favourite_characters"] = 1
    world_data["characters"][1]["id"] = world_data["characters"][0]["id"]
    with pytest.raises(WorldFileError, match="character ids must be unique"):
        parse_world(world_data)


def test_not_a_mapping_and_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "world.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(WorldFileError, match="must be a YAML mapping"):
        load_world(path)
    path.write_text("characters: [unclosed\n")
    with pytest.raises(WorldFileError, match="not valid YAML"):
        load_world(path)
