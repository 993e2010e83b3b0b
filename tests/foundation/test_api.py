"""The API models: defaults, the examples, and malformed manifests rejected with the field named."""

from __future__ import annotations

import jsonschema
import pytest
from flywheel_operator import api
from flywheel_operator.api import FlywheelGeneration, parse_duration
from flywheel_operator.api.durations import DURATION_PATTERN
from flywheel_operator.crd import as_json_schema, crd
from flywheel_operator.validation import problems_of
from hypothesis import given
from hypothesis import strategies as st

from tests.foundation.manifests import DELETE, EXAMPLES, load, minimal, set_path

SCHEMA = as_json_schema(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_public_surface_is_pinned():
    assert sorted(api.__all__) == sorted(name for name in api.__all__ if hasattr(api, name))
    assert {
        "FlywheelGeneration",
        "FlywheelGenerationSpec",
        "FlywheelGenerationStatus",
        "StageConfig",
        "OnlineReading",
        "ArmStats",
        "OfflineMetrics",
    } <= set(api.__all__)


def test_defaults_follow_the_report():
    spec = FlywheelGeneration.model_validate(minimal()).spec
    assert (spec.offline_gate.win_rate_band.min, spec.offline_gate.win_rate_band.max) == (0.50, 0.65)
    assert spec.offline_gate.max_win_rate_divergence == 0.10
    assert spec.canary.traffic_percent == 10
    assert spec.stages.rl.algorithm == "grpo"
    assert [m.kind for m in spec.stages.reward_models] == ["pointwise", "pairwise", "user-signal"]
    assert spec.stages.dpo.enabled is False
    assert spec.suspend is False


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_models_and_crd_schema(path):
    manifest = load(path)
    assert problems_of(manifest) == []
    jsonschema.validate(manifest, SCHEMA)
    # the wire form of the parsed model is itself valid against the CRD (round trip)
    jsonschema.validate(FlywheelGeneration.model_validate(manifest).to_wire(), SCHEMA)


# (what is wrong, dotted path to change, new value, text the error must name)
MALFORMED = [
    ("generation is a string", "spec.generation", "fifteen", "spec.generation"),
    ("negative generation", "spec.generation", -1, "spec.generation"),
    ("unknown RL algorithm", "spec.stages.rl.algorithm", "ppo", "spec.stages.rl.algorithm"),
    ("band min above max", "spec.offlineGate.winRateBand", {"min": 0.7, "max": 0.6}, "winRateBand"),
    ("band above 1", "spec.offlineGate.winRateBand.max", 1.5, "spec.offlineGate.winRateBand.max"),
    ("negative traffic", "spec.canary.trafficPercent", -5, "spec.canary.trafficPercent"),
    ("traffic above half", "spec.canary.trafficPercent", 80, "spec.canary.trafficPercent"),
    ("missing parent and base", "spec.basePolicy", DELETE, "parent"),
    ("both parent and base", "spec.parent", "gen1", "parent"),
    ("unknown top-level field", "spec.gpus", 8, "spec.gpus"),
    ("misspelt nested field", "spec.canary.trafficPercentage", 10, "spec.canary.trafficPercentage"),
    ("unknown reward model kind", "spec.stages.rewardModels", [{"name": "rm", "kind": "ranking"}], "kind"),
    (
        "user-signal without signal",
        "spec.stages.rewardModels",
        [{"name": "p", "kind": "pointwise"}, {"name": "c", "kind": "user-signal"}],
        "signal",
    ),
    ("no pointwise reward model", "spec.stages.rewardModels", [{"name": "pw", "kind": "pairwise"}], "pointwise"),
    (
        "duplicate reward model names",
        "spec.stages.rewardModels",
        [{"name": "a", "kind": "pointwise"}, {"name": "a", "kind": "pairwise"}],
        "unique",
    ),
    ("bad duration", "spec.canary.minDuration", "two days", "spec.canary.minDuration"),
    ("min duration after max", "spec.canary.minDuration", "8d", "minDuration"),
    ("unknown KServe mode", "spec.canary.mode", "serverless", "spec.canary.mode"),
    ("both pvc and uri", "spec.resources.storage", {"pvc": "a", "uri": "s3://b"}, "exactly one"),
    ("upper-case name", "metadata.name", "Gen15", "metadata.name"),
    ("missing user traffic", "spec.data.userTraffic", DELETE, "spec.data.userTraffic"),
    ("missing canary", "spec.canary", DELETE, "spec.canary"),
    ("alpha out of range", "spec.promotion.alpha", 0.9, "spec.promotion.alpha"),
    ("guardrail margin zero", "spec.promotion.guardrails", [{"name": "errors", "margin": 0}], "margin"),
    ("deepspeed stage 1", "spec.resources.deepspeedStage", 1, "spec.resources.deepspeedStage"),
    ("toleration operator", "spec.resources.tolerations", [{"key": "gpu", "operator": "Near"}], "operator"),
    ("rl reward model not pointwise", "spec.stages.rl.rewardModel", "pairwise", "rewardModel"),
    ("wrong kind", "kind", "Deployment", "kind"),
]


@pytest.mark.parametrize(("case", "path", "value", "named"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_manifest_is_rejected_naming_the_field(case, path, value, named):
    manifest = set_path(minimal(), path, value)
    if case == "both parent and base":
        manifest["spec"]["basePolicy"] = "/models/base"
    problems = problems_of(manifest)
    assert problems, f"{case}: accepted"
    text = "\n".join(str(p) for p in problems)
    assert named in text, text


def test_at_least_fifteen_malformed_cases():
    assert len(MALFORMED) >= 15


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from("smhd"))
def test_durations_parse_to_the_right_seconds(amount, unit):
    seconds = parse_duration(f"{amount}{unit}").total_seconds()
    assert seconds == amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


@given(st.text(max_size=8).filter(lambda t: not __import__("re").fullmatch(DURATION_PATTERN, t)))
def test_bad_durations_are_refused_with_the_form(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.floats(0, 1), st.floats(0, 1))
def test_band_accepted_exactly_when_ordered(low, high):
    manifest = set_path(minimal(), "spec.offlineGate.winRateBand", {"min": low, "max": high})
    assert (problems_of(manifest) == []) == (low < high)
