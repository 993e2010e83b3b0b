"""The flywheel benchmark's trap probe: the default world unchanged, the manifest changed only in the listed knobs."""

from __future__ import annotations

from pathlib import Path

from flywheel_local.runner import load_manifest
from hypothesis import given
from hypothesis import strategies as st

from tests.local.bench_modules import ROOT, load_bench


def test_trap_probe_chases_the_immediate_signal_in_the_default_world() -> None:
    bench = load_bench("flywheel")
    assert bench.DEFAULT_WORLD == ROOT / "examples" / "local" / "world.yaml"  # the probe's world is not changed
    first = load_manifest(ROOT / "examples" / "local" / "gen1.yaml")
    probe = bench.trap_probe(first)
    stages = probe.spec.stages
    assert probe.metadata.name == bench.TRAP_PROBE
    sampling = stages.sft.rejection_sampling
    assert (sampling.pointwise_weight, sampling.instruction_weight, sampling.continue_weight) == (0.0, 0.0, 1.0)
    assert stages.curate.max_emoji_difference == 100 and stages.rl.instruction_reward_weight == 0.0
    assert stages.rl.emoji_penalty < 0  # it pays for emojis: the immediate pull
    assert (stages.rl.length_penalty, stages.rl.checkpoint_every) == (0.0, None)
    signal = [m for m in stages.reward_models if m.kind == "user-signal"]
    assert signal and all(m.epochs == bench.TRAP_PROBE_SIGNAL_EPOCHS for m in signal)
    # the gates are the example's: the probe tests them, it does not loosen them
    assert probe.spec.offline_gate == first.spec.offline_gate
    assert probe.spec.promotion == first.spec.promotion


def test_the_oracle_verdict_needs_more_depth_and_no_less_breadth() -> None:
    bench = load_bench("flywheel")
    parent = {"depth": 4.0, "breadth": 0.60}
    assert bench.truly_better(parent, {"depth": 4.2, "breadth": 0.60})
    assert not bench.truly_better(parent, {"depth": 4.2, "breadth": 0.59})
    assert not bench.truly_better(parent, {"depth": 3.9, "breadth": 0.70})
    assert bench.truly_better(parent, {}) is None


def test_the_summary_counts_the_confusion_and_follows_the_deployed_policy() -> None:
    bench = load_bench("flywheel")

    def row(name: str, promoted: bool, better: bool, compliance: float) -> dict:
        return {"generation": name, "promoted": promoted, "truly_better": better,
                "oracle_parent": {"compliance": 0.5, "depth": 4.0},
                "oracle_candidate": {"compliance": compliance, "depth": 5.0},
                "rm_oracle_agreement": {"pointwise": 0.7},
                "rm_oracle_agreement_interval": {"pointwise": [0.65, 0.75]}}

    table = [row("gen1", True, True, 0.7), row("gen2", False, True, 0.9), row("gen3", True, False, 0.8)]
    chain = bench.summary(table)
    assert chain["confusion"] == {"shipped_better": 1, "shipped_worse": 1, "blocked_better": 1, "blocked_worse": 0}
    assert chain["promoted_and_truly_better"] == "1/2" and chain["truly_better_and_promoted"] == "1/2"
    assert [c["instruction_following"] for c in chain["climb"]] == [0.7, 0.7, 0.8]  # a blocked one never deploys
    assert not bench.targets(chain)["every_promoted_truly_better"]


def test_the_seed_replicate_changes_only_the_world_seed_and_counts_agreeing_decisions(tmp_path: Path) -> None:
    import yaml
    from flywheel_sim import load_world

    bench = load_bench("flywheel")
    path = bench.seeded_world(bench.DEFAULT_WORLD, 7, tmp_path)
    original, copy = yaml.safe_load(bench.DEFAULT_WORLD.read_text()), yaml.safe_load(path.read_text())
    assert copy.pop("seed") == 7 and original.pop("seed", 0) != 7
    assert copy == original
    assert load_world(path).seed == 7

    def chain(*decisions: tuple[bool, bool]) -> dict:
        return {"rows": [{"generation": f"gen{i}", "promoted": p, "truly_better": b,
                          "decision": "PROMOTE" if p else "ROLL_BACK", "phase": ""}
                         for i, (p, b) in enumerate(decisions, 1)]}

    same = bench.replicate(chain((True, True), (False, False), (True, True)),
                           chain((True, True), (True, False), (True, True)))
    assert same["same_decision"] == "2/3" and same["same_oracle_verdict"] == "3/3"
    assert same["decisions"][1] == {"generation": "gen2", "first": "ROLL_BACK", "replicate": "PROMOTE"}


def test_the_chain_runs_the_example_flywheel_whose_generation_is_the_example_generation() -> None:
    """bench/flywheel.py turns examples/local/flywheel.yaml (the product path); its first generation, as
    plan_flywheel creates it, is examples/local/gen1.yaml but for the names: the benchmark measures that recipe."""
    from flywheel_local.flywheel import load_flywheel

    bench = load_bench("flywheel")
    flywheel = load_flywheel(ROOT / "examples" / "local" / "flywheel.yaml")
    first = bench.first_generation(flywheel)
    example = load_manifest(ROOT / "examples" / "local" / "gen1.yaml")
    assert first.metadata.name == "gen-1" and first.spec.generation == 1
    assert first.spec.base_policy == example.spec.base_policy and first.spec.parent is None
    ignore = {"resources"}  # the storage directory is named after the Flywheel
    assert first.spec.model_dump(exclude=ignore) == example.spec.model_dump(exclude=ignore)
    assert first.spec.resources.model_dump(exclude={"storage"}) == example.spec.resources.model_dump(
        exclude={"storage"})
    probe = bench.trap_probe(first)
    assert probe.metadata.name == bench.TRAP_PROBE and probe.spec.offline_gate == example.spec.offline_gate


@given(st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), min_size=1, max_size=5))
def test_the_default_worlds_instruction_following_is_judged_on_the_mean_of_three_seeds(ends: list) -> None:
    """Issue 26: deployed instruction following >= 85 % on the default world as a mean over 3 seeds: no verdict
    before 3 chains have an end value, then the mean of the known ones (a missing chain is never counted as 0)."""
    bench = load_bench("flywheel")
    chains = {seed: {"summary": {"generations_finished": 5,
                                 "deployed_end": {} if end is None else {"instruction_following": end}}}
              for seed, end in enumerate(ends)}
    result = bench.default_seeds(chains)
    known = [end for end in ends if end is not None]
    verdict = result["deployed_instruction_following_mean_at_least_85"]
    if len(known) < 3:
        assert verdict is None
    else:
        assert verdict == (sum(known) / len(known) >= 0.85)
    assert result["deployed_instruction_following"]["n"] == len(known)
    assert result["deployed_instruction_following"]["missing"] == len(ends) - len(known)
    assert result["seeds"] == list(range(len(ends)))
