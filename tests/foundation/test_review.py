"""`flywheel validate` on a cluster generation (issue 24, item 3): Hub models without a cache volume are flagged,
and a model that cannot fit the GPUs its stage asks for is a problem, counted from its config.json — read here
from a Hugging Face cache laid out on the spot (HF_HUB_OFFLINE=1: never a download)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from flywheel_operator import capacity
from flywheel_operator.validation import validate_files

ROOT = Path(__file__).resolve().parents[2]
LLAMA_70B = {  # the fields of meta-llama/Llama-3.1-70B-Instruct's config.json that size it
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False,
}
CANDIDATE = "meta-llama/Llama-3.1-70B-Instruct"


def gen15() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "gen15.yaml").read_text())


def run(tmp_path: Path, manifest: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / f"gen-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code = validate_files([str(path)])
    return code, capsys.readouterr().out


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding the candidate's config.json, as a first `from_pretrained` leaves it."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / f"models--{CANDIDATE.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "config.json").write_text(json.dumps(LLAMA_70B))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("shape", [
    dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
         vocab_size=300, tie_word_embeddings=True),
    dict(hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
         vocab_size=517, tie_word_embeddings=False),
])
def test_the_parameter_count_from_a_config_is_the_model_s_own(shape: dict[str, int]) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape))
    assert capacity.parameter_count(LlamaConfig(**shape).to_dict()) == model.num_parameters()


def test_llama_70b_counts_70_6_billion_parameters() -> None:
    assert round(capacity.parameter_count(LLAMA_70B) / 1e9, 1) == 70.6


def test_gen15_as_shipped_validates_without_warnings(
        tmp_path: Path, hub_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(tmp_path, gen15(), capsys)
    assert code == 0 and "warning" not in out, out


def test_a_hub_model_without_a_cache_volume_is_a_warning_and_offline_a_problem(
        tmp_path: Path, hub_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = gen15()
    del manifest["spec"]["resources"]["hub"]
    code, out = run(tmp_path, manifest, capsys)
    assert code == 0
    assert ("warning: spec.stages.sft.rejectionSampling.candidateModels[0]: Hugging Face Hub model "
            f"'{CANDIDATE}' has no cache volume") in out and "resources.hub.cachePvc" in out
    manifest["spec"]["resources"]["hub"] = {"offline": True}
    code, out = run(tmp_path, manifest, capsys)
    assert code == 1 and "cannot load: resources.hub.offline forbids downloading it" in out


def test_a_stage_whose_model_cannot_fit_its_gpus_is_a_problem(
        tmp_path: Path, hub_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = copy.deepcopy(gen15())
    manifest["spec"]["resources"]["stages"]["sft"] = {"gpusPerNode": 1}  # 141 GB of bf16 weights on one 80 GB GPU
    code, out = run(tmp_path, manifest, capsys)
    assert code == 1, out
    assert (f"spec.stages.sft.rejectionSampling.candidateModels[0]: {CANDIDATE} (70.6B parameters) does not fit "
            "the sft stage's GPUs: its bf16 weights (141 GB) sharded over 1 GPU(s) need 141 GB each, over 85% of "
            "80 GB") in out
    manifest["spec"]["resources"]["stages"]["sft"] = {"gpusPerNode": 2}  # 71 GB each: still over 68 GB
    assert run(tmp_path, manifest, capsys)[0] == 1
    manifest["spec"]["resources"]["stages"]["sft"] = {"gpusPerNode": 4}  # 35 GB each
    assert run(tmp_path, manifest, capsys)[0] == 0
    manifest["spec"]["resources"]["gpuMemory"] = "24Gi"  # an explicit GPU size wins over the product label
    code, out = run(tmp_path, manifest, capsys)
    assert code == 1 and "over 85% of 26 GB" in out
