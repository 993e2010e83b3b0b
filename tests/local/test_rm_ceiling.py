"""bench/rm_ceiling.py's baseline (a Bradley–Terry regression on the oracle's own features) and its pairs."""

from __future__ import annotations

from flywheel_sim import load_world, response_utility

from tests.local.bench_modules import ROOT, load_bench


def test_the_features_read_what_the_oracle_utility_reads() -> None:
    """Two answers of the default world that differ only in asking back: the feature difference is in the
    question column alone, and the oracle's utility prefers the question exactly when its weight says so."""
    bench = load_bench("rm_ceiling")
    world = load_world(ROOT / "examples" / "local" / "world.yaml")
    topic = world.characters[0].topics[0]
    plain, asking = f"i like {topic} a lot.", f"i like {topic} a lot?"
    difference = bench.feature_vector(world, 0, topic, asking) - bench.feature_vector(world, 0, topic, plain)
    assert difference[0] == 1.0 and not difference[1:].any()
    utility = response_utility(world, 0, topic, [asking, plain])
    assert utility[0] > utility[1]


def _fixed_answers(chats: list, *, seed: int) -> list[str]:
    """A policy that asks back on one seed and answers flatly on the others, so every opening makes a pair."""
    return ["ahoy matey, shall we sail?" if seed % 2 else "ok." for _ in chats]


def test_held_out_pairs_carry_the_character_as_a_curated_row_gives_it() -> None:
    """Rule features read a pair's character: the oracle's pairs give it in the curated rows' shape."""
    from flywheel_local import rm_oracle

    world = load_world(ROOT / "examples" / "local" / "world.yaml")
    pair = next(p for p in rm_oracle.held_out_pairs(world, _fixed_answers) if p["character"] == 0)
    rex = {key: pair["spec"][key] for key in ("id", "name", "instructions")}
    assert pair["spec"] == world.characters[0].to_log()
    assert rex == {"id": "captain-rex", "name": "Captain Rex",
                   "instructions": [{"kind": "max_words", "value": 20}, {"kind": "include_word", "value": "matey"}]}
