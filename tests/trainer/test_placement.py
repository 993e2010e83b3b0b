"""Devices and ranks of a stage (issue 13, defect 5): cuda:<LOCAL_RANK> instead of cuda:0 on every rank, inference
copies whole and on this rank's device, the predictor on the GPU, and sampling split across ranks and gathered
in order (with real gloo processes)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from flywheel_trainer import placement
from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("placement") / "policy"
    tokenizer = train_tokenizer(["hello there", "good morning to you"] * 10, vocab_size=300)
    tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_each_rank_uses_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert placement.local_device() == torch.device("cuda:3")
    monkeypatch.delenv("LOCAL_RANK")
    assert placement.local_device() == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "8")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK=8.*gpusPerNode"):
        placement.local_device()


def test_without_cuda_every_rank_uses_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert placement.local_device() == torch.device("cpu")
    assert placement.inference_dtype() == torch.float32
    assert placement.training_dtype() == torch.float32


def test_inference_dtype_is_bf16_on_cuda_and_training_stays_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement.inference_dtype() == torch.bfloat16
    assert placement.training_dtype() == torch.float32


@pytest.mark.parametrize("loader", ["policy", "predictor"])
def test_inference_models_land_on_this_ranks_device(
    loader: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meta device stands in for cuda:<LOCAL_RANK>: whatever local_device() says is where the model goes."""
    monkeypatch.setattr(placement, "local_device", lambda: torch.device("meta"))
    if loader == "policy":
        from flywheel_trainer.upstream import load_policy

        model, _ = load_policy(str(model_dir))
    else:
        from flywheel_trainer.predictor import ChatPredictor

        predictor = ChatPredictor("p", model_dir)
        predictor.load()
        model = predictor._model
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert not model.training


def test_inference_loads_stay_whole_while_a_zero3_config_is_alive() -> None:
    """A ZeRO-3 TrainingArguments makes every from_pretrained partition under zero.Init; sampling copies must not."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert is_deepspeed_zero3_enabled()
    with placement.without_zero_init():
        assert not is_deepspeed_zero3_enabled()
    assert is_deepspeed_zero3_enabled()  # training loads after it still partition
    del config


@given(count=st.integers(0, 200), ranks=st.integers(1, 16))
def test_rank_shares_cover_every_item_once_in_order(count: int, ranks: int) -> None:
    shares = [placement.rank_share(count, r, ranks) for r in range(ranks)]
    assert [i for share in shares for i in share] == list(range(count))
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_rank_share_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2 is not one of 2 ranks"):
        placement.rank_share(10, 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    seen: list[int] = []

    def work(share: list[int]) -> list[str]:
        seen.extend(share)
        return [f"r{rank}:{x}" for x in share]

    result = placement.across_ranks(list(range(11)), work)

    import flywheel_trainer.generation as generation
    from flywheel_trainer.progress import generate_reporting

    sampled: list[str] = []

    def fake_generate(model: object, tokenizer: object, chats: list, **options: object) -> list[list[str]]:
        sampled.extend(chat[0]["content"] for chat in chats)
        return [[f"reply to {chat[0]['content']}"] for chat in chats]

    generation.generate = fake_generate  # the sampling loop's split, without a model
    chats = [[{"role": "user", "content": f"p{i}"}] for i in range(7)]
    replies = generate_reporting(None, None, chats, phase="sample", max_new_tokens=4, temperature=1.0)
    Path(out, f"{rank}.json").write_text(
        json.dumps({"seen": seen, "result": result, "sampled": sampled, "replies": replies})
    )
    torch.distributed.destroy_process_group()


def test_sampling_is_split_across_ranks_and_gathered_in_order(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(3, _free_port(), str(tmp_path)), nprocs=3, join=True)
    outputs = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(3)]
    assert [o["seen"] for o in outputs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    expected = [f"r{0 if x < 4 else 1 if x < 8 else 2}:{x}" for x in range(11)]
    assert all(o["result"] == expected for o in outputs)
    # rejection sampling, prompt selection and eval sample through generate_reporting: each rank its share
    assert [o["sampled"] for o in outputs] == [["p0", "p1", "p2"], ["p3", "p4"], ["p5", "p6"]]
    assert all(o["replies"] == [[f"reply to p{i}"] for i in range(7)] for o in outputs)


def test_one_process_does_all_the_work_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert placement.across_ranks([1, 2, 3], lambda share: [x * 2 for x in share]) == [2, 4, 6]
    assert not torch.distributed.is_initialized()


class Loaded(Exception):
    """Raised by the recording from_pretrained: the test needs only the moment of the load."""


ZERO3 = {
    "zero_optimization": {"stage": 3},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
}


@pytest.mark.parametrize("stage", ["reward", "sft", "dpo"])
def test_trained_models_load_once_their_zero3_config_exists(
    stage: str, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers partitions a from_pretrained under zero.Init only while a ZeRO-3 TrainingArguments exists: a
    trained model loaded before its config would be materialised whole on every rank."""
    from flywheel_operator.api import RewardModelSettings, StageConfig
    from flywheel_trainer import reward, rl, sft
    from transformers import AutoTokenizer, PreTrainedModel
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    zero3_at_load: list[bool] = []

    def recording(cls: type, *args: object, **kwargs: object) -> None:
        zero3_at_load.append(is_deepspeed_zero3_enabled())
        raise Loaded

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(recording))
    args = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none", "bf16": False, "max_steps": 1}
    args["deepspeed"] = ZERO3
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pair = {
        "prompt": [{"role": "user", "content": "hello"}],
        "chosen": [{"role": "assistant", "content": "good morning"}],
        "rejected": [{"role": "assistant", "content": "there"}],
    }
    config = StageConfig.model_validate(
        {
            "stage": "rl" if stage == "dpo" else stage,
            "name": stage,
            "generation": "g",
            "outputDir": str(tmp_path / "out"),
            "policy": str(model_dir),
            "data": {"userTraffic": {"uri": str(tmp_path)}},
            "settings": {"dpo": {"enabled": True}},
            "upstream": {"curate": {"pairs": str(tmp_path / "pairs.jsonl")}},
        }
    )
    (tmp_path / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    try:
        with pytest.raises(Loaded):
            if stage == "reward":
                settings = RewardModelSettings(name="rm", kind="pointwise")
                reward._train_pointwise(settings, str(model_dir), [pair], args, tokenizer)
            elif stage == "sft":
                monkeypatch.setattr(sft, "training_kwargs", lambda *a, **k: args)
                rows = [{"prompt": pair["prompt"], "completion": pair["chosen"]}]
                sft.train_sft(config, str(model_dir), tokenizer, rows, tmp_path / "out")
            else:
                monkeypatch.setattr(rl, "training_kwargs", lambda *a, **k: args)
                rl.dpo_patch(config, str(model_dir), tmp_path / "out")
    finally:
        unset_hf_deepspeed_config()
    assert zero3_at_load == [True]
