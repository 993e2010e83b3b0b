"""Generation 0: a transformers model directory, cached by content hash, that speaks the world's language and
breaks about half of the instructions — room for the flywheel to climb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from flywheel_sim import (
    DEFAULT_WORLD,
    GOOD_STYLE,
    ModelPolicy,
    ScriptedPolicy,
    World,
    build_generation0,
    generation0_key,
    oracle,
    parse_world,
    simulate_traffic,
)
from flywheel_sim.generation0 import META_FILE, Gen0Settings
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_directory_loads_with_transformers_and_records_its_build(gen0_dir: Path, gen0_world: World) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gen0_dir)
    model = AutoModelForCausalLM.from_pretrained(gen0_dir)
    assert tokenizer.chat_template and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.hidden_size == gen0_world.generation0.hidden_size
    meta = json.loads((gen0_dir / META_FILE).read_text())
    assert meta["final_loss"] < meta["first_loss"] / 3
    assert 0.4 < meta["corpus"]["compliance"] < 0.6  # the corpus breaks about half of the instructions
    assert gen0_dir.name == f"gen0-{meta['key'][:16]}"


def test_cache_hit_returns_the_same_build_without_training(gen0_dir: Path, gen0_world: World) -> None:
    stamp = (gen0_dir / "model.safetensors").stat().st_mtime_ns
    assert build_generation0(gen0_world, gen0_dir.parent) == gen0_dir
    assert (gen0_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in gen0_dir.parent.iterdir() if p.name.startswith(".gen0-")]  # no leftovers


def test_key_follows_content_not_formatting(gen0_world: World) -> None:
    settings = Gen0Settings(steps=gen0_world.generation0.steps, seed=0)
    same = parse_world(json.loads(json.dumps(gen0_world.model_dump(mode="json", by_alias=True))))
    assert generation0_key(same, settings) == generation0_key(gen0_world, settings)
    assert generation0_key(gen0_world, Gen0Settings(steps=settings.steps + 1, seed=0)) != generation0_key(
        gen0_world, settings
    )
    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    data["generation0"].update(dialogues=600, steps=200)
    data["characters"][0]["topics"].append("whales")
    assert generation0_key(parse_world(data), settings) != generation0_key(gen0_world, settings)


def test_generation0_is_improvable(gen0_dir: Path, world: World) -> None:
    gen0 = ModelPolicy.for_world(gen0_dir, world, name="gen0")
    truth = oracle(world, gen0, seed=0)
    good = oracle(world, ScriptedPolicy(world, style=GOOD_STYLE, compliance=1.0), seed=0)
    assert truth["compliance"] < 0.75  # plenty of broken instructions left to fix
    assert truth["mean_words"] > 3  # it answers in words, not noise
    assert good["session_depth"] > truth["session_depth"]
    assert good["depth"] > truth["depth"] and good["breadth"] > truth["breadth"]


def test_model_traffic_is_deterministic(gen0_dir: Path, world: World) -> None:
    def run() -> list[dict]:
        policy = ModelPolicy.for_world(gen0_dir, world, name="gen0")
        return simulate_traffic(world, {"control": policy}, days=1, seed=9, max_people=40).records

    first = run()
    assert first and first == run()
