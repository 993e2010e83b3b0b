"""The flywheel benchmark's trap probe: its world turns only the emoji pull up, its manifest only the listed knobs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml
from flywheel_operator.local.runner import load_manifest
from flywheel_sim import load_world

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_flywheel", ROOT / "bench" / "flywheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trap_world_changes_only_the_users_emoji_appeal(tmp_path: Path) -> None:
    bench = _bench()
    source = ROOT / "examples" / "local" / "world.yaml"
    path = bench.trap_world(source, tmp_path)
    before, after = yaml.safe_load(source.read_text()), yaml.safe_load(path.read_text())
    for segment in after["users"]["segments"]:
        assert segment["preferences"]["emoji"] == bench.TRAP_EMOJI_APPEAL
        segment["preferences"]["emoji"] = None
    for segment in before["users"]["segments"]:
        segment["preferences"]["emoji"] = None
    assert after == before  # testers, trap, generation 0 settings: all as in the default world
    assert load_world(path).users.segments[0].preferences.emoji == bench.TRAP_EMOJI_APPEAL
    assert bench.trap_world(source, tmp_path).read_text() == path.read_text()  # idempotent (resumable)


def test_trap_probe_selects_by_p_continue_alone() -> None:
    bench = _bench()
    first = load_manifest(ROOT / "examples" / "local" / "gen1.yaml")
    probe = bench.trap_probe(first)
    stages = probe.spec.stages
    assert probe.metadata.name == bench.TRAP_PROBE
    sampling = stages.sft.rejection_sampling
    assert (sampling.pointwise_weight, sampling.instruction_weight, sampling.continue_weight) == (0.0, 0.0, 1.0)
    assert stages.curate.max_emoji_difference == 100 and stages.rl.instruction_reward_weight == 0.0
    signal = [m for m in stages.reward_models if m.kind == "user-signal"]
    assert signal and all(m.epochs == bench.TRAP_PROBE_SIGNAL_EPOCHS for m in signal)
    # everything else stays the example's careful step
    assert stages.rl.kl_beta == first.spec.stages.rl.kl_beta
    assert stages.rl.learning_rate == first.spec.stages.rl.learning_rate
    assert probe.spec.offline_gate == first.spec.offline_gate
