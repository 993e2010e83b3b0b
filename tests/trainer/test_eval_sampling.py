"""Issue 26: the eval stage samples as users meet the model (the serving settings), not at its own 0.7 / 48 tokens
that overstated instruction following; and the generated-worlds bench defaults to worlds outside 100-107."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from flywheel_operator.api import EvalSettings, StageConfig, StageSettings
from flywheel_trainer import evaluate, predictor
from flywheel_trainer.serving import SERVING_MAX_NEW_TOKENS, SERVING_TEMPERATURE, eval_sampling
from hypothesis import given
from hypothesis import strategies as st

from tests.local.bench_modules import load_bench

ROOT = Path(__file__).resolve().parents[2]


def test_eval_settings_leave_sampling_to_serving_by_default() -> None:
    settings = EvalSettings()
    assert settings.max_new_tokens is None and settings.temperature is None
    assert eval_sampling(settings.max_new_tokens, settings.temperature) == {
        "max_new_tokens": SERVING_MAX_NEW_TOKENS,
        "temperature": SERVING_TEMPERATURE,
    }


def test_the_predictor_serves_with_the_same_defaults() -> None:
    defaults = inspect.signature(predictor.ChatPredictor.__init__).parameters
    assert defaults["max_new_tokens"].default == SERVING_MAX_NEW_TOKENS
    assert defaults["temperature"].default == SERVING_TEMPERATURE


@given(tokens=st.integers(1, 512) | st.none(), temperature=st.floats(0.05, 3.0) | st.none())
def test_set_eval_sampling_wins_over_serving(tokens: int | None, temperature: float | None) -> None:
    chosen = eval_sampling(tokens, temperature)
    assert chosen["max_new_tokens"] == (SERVING_MAX_NEW_TOKENS if tokens is None else tokens)
    assert chosen["temperature"] == (SERVING_TEMPERATURE if temperature is None else temperature)


def test_eval_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="temperature"):
        EvalSettings(temperature=0)


class _Sampled(Exception):
    pass


def _eval_config(tmp_path: Path, eval_settings: dict[str, Any]) -> StageConfig:
    for name in ("parent", "sft"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    row = {"prompt": [{"role": "user", "content": "hi"}], "character": {"name": "Ada", "instructions": []}}
    for source in ("user", "internal"):
        (tmp_path / f"eval_{source}.jsonl").write_text(json.dumps(row) + "\n")
    return StageConfig.model_validate({
        "stage": "eval", "name": "eval", "generation": "g", "output_dir": str(tmp_path / "out"),
        "policy": str(tmp_path / "parent"), "data": {"userTraffic": {"uri": str(tmp_path / "eval_user.jsonl")}},
        "settings": {"eval": eval_settings},
        "upstream": {"sft": {"model": str(tmp_path / "sft")},
                     "curate": {s: str(tmp_path / f"{s}.jsonl") for s in ("eval_user", "eval_internal")}},
    })


@pytest.mark.parametrize(
    ("eval_settings", "expected"),
    [({}, (SERVING_MAX_NEW_TOKENS, SERVING_TEMPERATURE)), ({"maxNewTokens": 48, "temperature": 0.7}, (48, 0.7))],
)
def test_the_eval_stage_samples_with_the_resolved_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eval_settings: dict[str, Any], expected: tuple[int, float]
) -> None:
    seen: dict[str, Any] = {}

    def respond(source: str, prompts: list, **kwargs: Any) -> tuple[list[str], int]:
        seen.update(kwargs)
        raise _Sampled

    monkeypatch.setattr(evaluate, "respond", respond)
    with pytest.raises(_Sampled):
        evaluate.main(_eval_config(tmp_path, eval_settings))
    assert (seen["max_new_tokens"], seen["temperature"]) == expected


def test_the_local_runner_evaluates_at_the_worlds_serving_settings() -> None:
    from flywheel_local.backend import served_eval_settings
    from flywheel_sim import load_world

    serving = load_world(ROOT / "examples" / "local" / "world.yaml").serving
    served = served_eval_settings(StageSettings(), serving).eval
    assert (served.max_new_tokens, served.temperature) == (serving.max_new_tokens, serving.temperature)
    kept = served_eval_settings(StageSettings(eval=EvalSettings(max_new_tokens=48, temperature=0.7)), serving).eval
    assert (kept.max_new_tokens, kept.temperature) == (48, 0.7)


@pytest.mark.parametrize("example", ["gen1.yaml", "flywheel.yaml"])
def test_the_local_examples_leave_eval_sampling_to_the_world(example: str) -> None:
    import yaml

    text = yaml.safe_load((ROOT / "examples" / "local" / example).read_text())
    spec = text["spec"] if "stages" in text["spec"] else text["spec"]["template"]["spec"]
    assert "maxNewTokens" not in spec["stages"]["eval"] and "temperature" not in spec["stages"]["eval"]


def test_the_generated_suite_defaults_to_worlds_no_setting_was_chosen_on() -> None:
    bench = load_bench("flywheel")
    first = bench.GENERATED_SEED
    suite = range(first, first + bench.GENERATED_COUNT)
    assert not set(suite) & set(range(100, 112)), "worlds 100-111 are development worlds (in sample)"
    assert set(bench.DEVELOPMENT_WORLD_SEEDS) >= set(range(100, 112))
