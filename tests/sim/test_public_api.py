"""The public surface of flywheel_sim, and the rule that the trainer and the gates never read the oracle."""

from __future__ import annotations

import re
from pathlib import Path

import flywheel_sim

ROOT = Path(__file__).resolve().parents[2]


def test_public_surface_is_pinned() -> None:
    assert sorted(flywheel_sim.__all__) == sorted(
        [
            "DEFAULT_WORLD",
            "FEATURES",
            "GOOD_STYLE",
            "FunctionPolicy",
            "HttpPolicy",
            "ModelPolicy",
            "Policy",
            "PolicyError",
            "ResponseFeatures",
            "ResponseStyle",
            "ScriptedPolicy",
            "TrafficResult",
            "TrafficSimulation",
            "TrafficState",
            "World",
            "WorldFileError",
            "arm_stats",
            "assign",
            "bucket",
            "build_generation0",
            "emoji_spam",
            "generation0_key",
            "load_world",
            "oracle",
            "parse_world",
            "response_features",
            "response_utility",
            "simulate_traffic",
            "system_message",
            "write_traffic",
        ]
    )
    for name in flywheel_sim.__all__:
        assert getattr(flywheel_sim, name) is not None


def test_trainer_and_gates_never_import_the_oracle() -> None:
    pattern = re.compile(r"flywheel_sim(\.oracle)?\s+import\s+[^\n]*\boracle\b|flywheel_sim\.oracle")
    readers = [*(ROOT / "trainer").rglob("*.py"), *(ROOT / "operator" / "flywheel_operator" / "gate").rglob("*.py")]
    assert readers
    offenders = [str(p.relative_to(ROOT)) for p in readers if pattern.search(p.read_text())]
    assert offenders == []
