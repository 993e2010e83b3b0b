"""bench/rm_levers.py changes one thing at a time: each variant's stage configs are the generation's own with
exactly its change, writing only under the variant's folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.local.bench_modules import load_bench


def _generation(tmp_path: Path) -> Path:
    directory = tmp_path / "runs" / "default" / "gen2"
    (directory / "configs").mkdir(parents=True)
    curated = str(directory / "curate")
    reward = {
        "outputDir": str(directory / "reward-pointwise"), "seed": 1, "rewardModel": "pointwise",
        "upstream": {"curate": {"pairs": f"{curated}/pairs.jsonl"}},
        "settings": {"rewardModels": [
            {"name": "pointwise", "kind": "pointwise", "maxSteps": 300, "learningRate": 1e-3},
            {"name": "pairwise", "kind": "pairwise", "maxSteps": 300, "learningRate": 1e-3},
        ]},
    }
    curate = {"outputDir": curated, "seed": 1, "data": {"userTraffic": {"uri": "sim://users", "sampleSize": 2500}}}
    (directory / "configs" / "gen2-reward-pointwise-1.json").write_text(json.dumps(reward))
    (directory / "configs" / "gen2-curate-1.json").write_text(json.dumps(curate))
    return directory


@pytest.mark.parametrize("name", [v.name for v in load_bench("rm_levers").VARIANTS])
def test_each_variant_changes_only_its_own_setting(tmp_path: Path, name: str) -> None:
    bench = load_bench("rm_levers")
    variant = next(v for v in bench.VARIANTS if v.name == name)
    directory = _generation(tmp_path)
    original = json.loads((directory / "configs" / "gen2-reward-pointwise-1.json").read_text())
    target = tmp_path / "levers" / "gen2" / name
    backbones = {shape: tmp_path / f"backbone-{shape[0]}-{shape[1]}" for shape in ((0, 0), (128, 2), (128, 4))}
    curate, reward = bench.variant_configs(directory, variant, target, backbones)

    assert reward["outputDir"] == str(target / "reward")
    assert reward["seed"] == original["seed"] + variant.seed_offset
    pointwise, pairwise = reward["settings"]["rewardModels"]
    assert pairwise == original["settings"]["rewardModels"][1]  # the other models are untouched
    expected = {**original["settings"]["rewardModels"][0], **variant.settings}
    if variant.backbone is not None:
        expected["baseModel"] = str(backbones[variant.backbone])
    assert pointwise == expected
    if variant.user_sample is None:
        assert curate is None and reward["upstream"] == original["upstream"]
    else:
        assert curate["outputDir"] == str(target / "curate")
        assert curate["data"]["userTraffic"]["sampleSize"] == variant.user_sample
        assert reward["upstream"]["curate"]["pairs"] == f"{target / 'curate'}/pairs.jsonl"


def test_a_backbone_is_generation_0s_recipe_at_another_shape(tmp_path: Path, monkeypatch) -> None:
    import flywheel_sim
    from flywheel_sim import load_world

    from tests.local.bench_modules import ROOT

    built = []
    monkeypatch.setattr(flywheel_sim, "build_generation0", lambda world, cache: built.append(world) or cache)
    world = load_world(ROOT / "examples" / "local" / "world.yaml")
    bench = load_bench("rm_levers")
    bench.backbone_dir(world, (0, 0), tmp_path)
    bench.backbone_dir(world, (128, 4), tmp_path)
    assert built[0] == world
    changed = built[1].generation0.model_dump()
    assert (changed.pop("hidden_size"), changed.pop("num_layers")) == (128, 4)
    same = world.generation0.model_dump()
    same.pop("hidden_size"), same.pop("num_layers")
    assert changed == same and built[1].characters == world.characters
