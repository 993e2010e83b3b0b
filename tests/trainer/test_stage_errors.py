"""Bad configs fail at once, naming the field; outputs are all-or-nothing; digests are stable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from flywheel_operator.api import StageConfig
from flywheel_trainer import cli
from flywheel_trainer.outputs import StageError, atomic_output_dir, combined_digest, sha256_path
from flywheel_trainer.runtime import local_path, model_source, training_kwargs


def _raw(tmp_path: Path, **overrides: object) -> dict:
    raw = {
        "stage": "sft",
        "name": "sft",
        "generation": "gen1",
        "outputDir": str(tmp_path / "out"),
        "policy": str(tmp_path / "no-such-model"),
        "data": {"userTraffic": {"uri": str(tmp_path)}},
    }
    raw.update(overrides)
    return raw


def test_an_unknown_setting_fails_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_raw(tmp_path, settings={"sft": {"learningRat": 0.1}})))
    with pytest.raises(StageError, match=r"settings\.sft\.learningRat: Extra inputs are not permitted"):
        cli.load_config(config)
    assert cli.main(["sft", "--config", str(config)]) == 2


def test_a_config_for_another_stage_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps(_raw(tmp_path)))
    with pytest.raises(StageError, match="configures stage 'sft', but 'rl' was asked for"):
        cli.load_config(config, stage="rl")


def test_the_command_line_reports_a_missing_model_by_field(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_raw(tmp_path)))
    done = subprocess.run(
        [sys.executable, "-m", "flywheel_trainer.cli", "sft", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 2
    assert "policy: no model at" in done.stderr and "no-such-model" in done.stderr
    assert not (tmp_path / "out").exists()


def test_missing_model_paths_and_uncached_hub_ids_name_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StageError, match=r"settings\.sft\.rejectionSampling\.candidateModels\[0\]: no model"):
        model_source(str(tmp_path / "absent"), field="settings.sft.rejectionSampling.candidateModels[0]")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(StageError, match=r"policy: model 'meta-llama/Llama-9-70B'.*HF_HUB_OFFLINE=1"):
        model_source("meta-llama/Llama-9-70B", field="policy")


def test_uris_map_to_local_paths(tmp_path: Path) -> None:
    assert local_path("pvc://artifacts/gen1/curate", field="x") == Path("/artifacts/gen1/curate")
    assert local_path(f"file://{tmp_path}", field="x") == tmp_path
    with pytest.raises(StageError, match=r"data\.userTraffic\.uri: the scheme 'ftp' of 'ftp://h/k' is not readable"):
        local_path("ftp://h/k", field="data.userTraffic.uri")


def test_missing_upstream_artifacts_name_the_stage(tmp_path: Path) -> None:
    from flywheel_trainer.upstream import artifact_path

    config = StageConfig.model_validate(_raw(tmp_path, upstream={"curate": {"pairs": str(tmp_path / "gone")}}))
    with pytest.raises(StageError, match=r"upstream\.sft\.model is missing"):
        artifact_path(config, "sft", "model")
    with pytest.raises(StageError, match=r"upstream\.curate\.pairs: .* does not exist"):
        artifact_path(config, "curate", "pairs")


def test_a_failed_stage_leaves_nothing_and_a_rerun_replaces_the_output(tmp_path: Path) -> None:
    final = tmp_path / "stage"
    with pytest.raises(RuntimeError), atomic_output_dir(final) as out:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(final) as out:
        (out / "a.txt").write_text("first")
    with atomic_output_dir(final) as out:
        (out / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_digests_follow_content_not_names_order(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    (tmp_path / "d" / "y").write_text("2")
    first = sha256_path(tmp_path / "d")
    assert sha256_path(tmp_path / "d") == first
    (tmp_path / "d" / "y").write_text("3")
    assert sha256_path(tmp_path / "d") != first
    assert combined_digest({"a": "1", "b": "2"}) == combined_digest({"b": "2", "a": "1"})
    assert combined_digest({"a": "1", "b": "2"}) != combined_digest({"a": "2", "b": "1"})


def test_cpu_runs_get_no_bf16_and_no_deepspeed(tmp_path: Path) -> None:
    kwargs = training_kwargs(tmp_path, seed=1, deepspeed_stage=3, max_steps=None, learning_rate=1e-5)
    assert kwargs["use_cpu"] and not kwargs["bf16"] and "deepspeed" not in kwargs and kwargs["max_steps"] == -1
