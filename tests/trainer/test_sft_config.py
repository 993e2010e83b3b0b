"""The SFT stage's activation (gradient) checkpointing follows `stages.sft.activationCheckpointing`: TRL's
SFTConfig turns it on by default, which costs about a third more compute; a spec whose model fits in memory
without it turns it off. The setting travels spec → planner → the stage's config file → the SFTTrainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flywheel_operator.api import FlywheelGeneration, FlywheelGenerationStatus, StageConfig
from flywheel_operator.planner.pipeline import stage_config
from flywheel_trainer import runtime, sft
from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

EXAMPLE = Path(__file__).parents[2] / "examples" / "gen15.yaml"
CHAT = [{"role": "user", "content": "hello there, how are you today?"}]
REPLY = "I am well, thank you for asking!"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sft-config") / "base"
    tokenizer = train_tokenizer([CHAT[0]["content"], REPLY] * 10, vocab_size=300)
    tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def rendered_config(base: Path, tmp_path: Path, setting: bool | None) -> StageConfig:
    """The sft StageConfig the planner renders from gen15 with `activationCheckpointing` set (None: left out),
    read back from its wire form as the Job reads its config file."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["stages"]["sft"] |= {"maxSteps": 1, "batchSize": 2, "maxLength": 32}
    if setting is not None:
        manifest["spec"]["stages"]["sft"]["activationCheckpointing"] = setting
    generation = FlywheelGeneration.model_validate(manifest)
    config = stage_config(generation, FlywheelGenerationStatus(policy=str(base)), "sft")
    wire = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    return StageConfig.model_validate(wire | {"outputDir": str(tmp_path / "out")})


@pytest.mark.parametrize(("setting", "expected"), [(None, True), (True, True), (False, False)])
def test_sft_activation_checkpointing_follows_the_spec(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: bool | None, expected: bool
) -> None:
    from transformers import AutoTokenizer

    config = rendered_config(base, tmp_path, setting)
    assert config.settings.sft.activation_checkpointing is expected
    monkeypatch.setattr(runtime, "has_cuda", lambda: False)
    rows = [{"prompt": CHAT, "completion": [{"role": "assistant", "content": REPLY}]}] * 2
    trainer = sft.train_sft(config, str(base), AutoTokenizer.from_pretrained(base), rows, tmp_path / "out")
    assert trainer.state.global_step == 1
    assert trainer.args.activation_checkpointing is expected
    assert trainer.args.gradient_checkpointing is expected  # the deprecated alias TRL still reads
    assert trainer.model.is_activation_checkpointing is expected  # what the trained model really did
