"""Stages on object storage: curate → reward → SFT read and write `s3://` URIs on a real S3-compatible HTTP server
(moto's server mode on 127.0.0.1), through the same entry points the Jobs use and the storage seam alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from flywheel_operator import storage
from flywheel_operator.api import StageConfig, StageResult, StorageSpec
from flywheel_operator.kube import canary, termination
from flywheel_trainer import cli
from flywheel_trainer.conversation import load_conversations, write_conversations
from flywheel_trainer.outputs import RESULT_FILE, StageError, combined_digest, read_jsonl, sha256_path
from flywheel_trainer.runtime import model_source


def _upload(local: Path, uri: str) -> str:
    """Put a local file or directory at `uri` the way another system would (not through a stage)."""
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for file in files:
        target = uri if local.is_file() else storage.join(uri, file.relative_to(local).as_posix())
        with file.open("rb") as source, storage.open_uri(target, "wb") as sink:
            sink.write(source.read())
    return uri


def test_the_seam_round_trips_and_digests_like_the_local_files(s3: str, tmp_path: Path) -> None:
    local = tmp_path / "dir"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("alpha")
    (local / "sub" / "b.bin").write_bytes(b"\x00\x01")
    uri = _upload(local, storage.join(s3, "roundtrip"))
    assert storage.list_files(uri) == [f"{s3}/roundtrip/a.txt", f"{s3}/roundtrip/sub/b.bin"]
    assert storage.read_text(f"{uri}/a.txt") == "alpha"
    assert storage.digest(uri) == sha256_path(local)
    assert (storage.localize(uri) / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(storage.MissingObjectError, match=r"s3://flywheel/roundtrip/absent\.txt"):
        storage.read_text(f"{uri}/absent.txt")


def test_a_relative_local_path_lists_and_digests_like_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert storage.list_files("out") == ["out/checkpoint-3/trainer_state.json"]
    assert storage.digest("out") == storage.digest(str(tmp_path / "out"))


def test_a_retried_output_replaces_the_previous_attempt_and_publishes_the_result_last(s3: str, tmp_path: Path) -> None:
    uri = storage.join(s3, "gen1", "retried")
    for attempt, name in ((1, "old.txt"), (2, "new.txt")):
        local = tmp_path / f"attempt{attempt}"
        local.mkdir()
        (local / name).write_text(str(attempt))
        (local / RESULT_FILE).write_text(json.dumps({"attempt": attempt}))
        storage.publish_dir(local, uri)
    assert storage.list_files(uri) == [f"{uri}/new.txt", f"{uri}/{RESULT_FILE}"]
    assert json.loads(storage.read_text(f"{uri}/{RESULT_FILE}")) == {"attempt": 2}


def test_missing_objects_fail_naming_the_field_and_the_uri(s3: str, tmp_path: Path) -> None:
    missing = f"{s3}/nowhere/traffic.jsonl"
    config = StageConfig.model_validate(
        {"stage": "curate", "name": "curate", "generation": "gen1", "outputDir": f"{s3}/gen1/curate",
         "policy": "unused", "data": {"userTraffic": {"uri": missing}}}
    )
    with pytest.raises(StageError, match=r"data\.user_traffic\.uri: 's3://flywheel/nowhere/traffic\.jsonl' does not"):
        cli.run_stage(config)
    with pytest.raises(StageError, match=r"policy: 's3://flywheel/nowhere/model' does not exist"):
        model_source(f"{s3}/nowhere/model", field="policy")
    assert not storage.exists(f"{s3}/gen1/curate")


SETTINGS: dict[str, Any] = {
    "rewardModels": [{"name": "pointwise", "kind": "pointwise", "learningRate": 3e-3, "maxSteps": 6,
                      "batchSize": 16}],
    "sft": {
        "rejectionSampling": {"samplesPerPrompt": 2, "prompts": 8, "maxNewTokens": 12},
        "learningRate": 1e-3,
        "maxSteps": 2,
        "batchSize": 4,
    },
}


@pytest.fixture(scope="module")
def chain_on_s3(
    s3: str, synthetic_log: Path, tiny_parent: Path, single_torch_thread: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, StageResult]:
    """Traffic (a JSONL and a Parquet shard) and the parent policy are put on S3 by 'someone else'; every stage
    reads and writes only s3:// URIs; curate runs through the command line like a Job."""
    records = load_conversations(synthetic_log).to_list()
    shards = tmp_path_factory.mktemp("shards")
    write_conversations(records[: len(records) // 2], shards / "part-0.jsonl")
    write_conversations(records[len(records) // 2 :], shards / "part-1.parquet")
    logs = _upload(shards, f"{s3}/logs/day-1")
    policy = _upload(tiny_parent, f"{s3}/models/parent")
    done: dict[str, StageResult] = {}

    def config(stage: str, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "stage": stage, "name": name, "generation": "gen1", "outputDir": storage.join(s3, "gen1", name),
            "policy": policy, "data": {"userTraffic": {"uri": logs}}, "settings": SETTINGS, "seed": 0,
            "upstream": {n: r.artifacts for n, r in done.items()},
            "upstreamDigests": {n: r.output_digest for n, r in done.items()}, **extra,
        }

    config_file = tmp_path_factory.mktemp("configs") / "curate.yaml"
    config_file.write_text(yaml.safe_dump(config("curate", "curate")))
    assert cli.main(["curate", "--config", str(config_file)]) == 0
    done["curate"] = StageResult.model_validate_json(storage.read_text(f"{s3}/gen1/curate/{RESULT_FILE}"))
    done["reward-pointwise"] = cli.run_stage(
        StageConfig.model_validate(config("reward", "reward-pointwise", rewardModel="pointwise"))
    )
    done["sft"] = cli.run_stage(StageConfig.model_validate(config("sft", "sft")))
    return done


@pytest.mark.slow
def test_stages_read_and_write_only_the_object_store(chain_on_s3: dict[str, StageResult], s3: str) -> None:
    curate = chain_on_s3["curate"]
    assert curate.metrics["rows_read"] == 360  # both shards, JSONL and Parquet
    for name, result in chain_on_s3.items():
        assert all(uri.startswith(f"{s3}/gen1/{name}/") for uri in result.artifacts.values()), result.artifacts
        published = StageResult.model_validate_json(storage.read_text(f"{s3}/gen1/{name}/{RESULT_FILE}"))
        assert published == result
        assert combined_digest({k: storage.digest(uri) for k, uri in result.artifacts.items()}) == result.output_digest
    assert chain_on_s3["reward-pointwise"].input_digests["curate"] == curate.output_digest
    assert chain_on_s3["sft"].input_digests["reward-pointwise"] == chain_on_s3["reward-pointwise"].output_digest
    assert len(read_jsonl(chain_on_s3["sft"].artifacts["selected"])) > 0
    # the logs were streamed shard by shard, never downloaded into the local cache (models and artifacts were)
    cached = [p.name for p in storage.cache_dir().rglob("*")]
    assert "model" in cached and not any(name.startswith("part-") for name in cached)


@pytest.mark.slow
def test_the_candidate_is_an_s3_uri_kserve_loads(chain_on_s3: dict[str, StageResult], s3: str) -> None:
    model = chain_on_s3["sft"].artifacts["model"]
    assert canary.storage_uri(model, StorageSpec(uri=s3)) == model == f"{s3}/gen1/sft/model"
    assert storage.exists(f"{model}/config.json")
    assert Path(model_source(model, field="upstream.sft.model"), "config.json").is_file()


@pytest.mark.slow
def test_the_termination_message_is_read_from_the_object_store(
    chain_on_s3: dict[str, StageResult], s3: str, tmp_path: Path
) -> None:
    config = tmp_path / "stage.yaml"
    config.write_text(json.dumps({"stage": "sft", "name": "sft", "generation": "gen1", "policy": "p",
                                  "outputDir": f"{s3}/gen1/sft", "data": {"userTraffic": {"uri": "x"}}}))
    assert termination.main([str(config), str(tmp_path / "message")]) == 0
    assert termination.parse_message((tmp_path / "message").read_text()).output_digest == (
        chain_on_s3["sft"].output_digest
    )
