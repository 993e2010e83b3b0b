"""Inference-only models larger than one GPU (issue 24, item 3): one copy spans a group of the pod's GPUs
(device_map within the group), held by the group's first rank, and only those ranks sample and score while every
rank gets all results — instead of a whole bf16 copy per rank, which a 70B model (141 GB) cannot have on 80 GB."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from flywheel_trainer import placement

GB = 10**9


@pytest.mark.parametrize(("model_gb", "gpu_gb", "ranks", "group"), [
    (16, 80, 8, 1),     # an 8B model: whole on each rank's GPU, as before
    (141, 80, 8, 4),    # Llama-3.1-70B in bf16: 2 GPUs hold 136 GB usable (too little), 3 does not divide 8 → 4
    (141, 141, 8, 2),   # on 141 GB GPUs (H200): 2 per copy
    (141, 80, 6, 3),    # 6 GPUs: groups of 3
])
def test_a_copy_spans_the_fewest_gpus_that_divide_the_node(model_gb: int, gpu_gb: int, ranks: int, group: int) -> None:
    assert placement.inference_group(model_gb * GB, gpu_gb * GB, ranks) == group


def test_a_model_larger_than_the_pod_fails_with_what_to_change() -> None:
    with pytest.raises(RuntimeError, match="raise gpusPerNode"):
        placement.inference_group(1200 * GB, 80 * GB, 8)


def test_group_leaders_sample_and_load_over_their_own_gpus_only() -> None:
    assert placement.sampling_ranks(16, 8, 1) == list(range(16))
    assert placement.sampling_ranks(16, 8, 4) == [0, 4, 8, 12]
    kwargs = placement.sharded_load_kwargs(5, 4, 80 * GB)
    assert kwargs["device_map"] == "auto" and sorted(kwargs["max_memory"]) == [4, 5, 6, 7]  # no CPU offload
    assert set(kwargs["max_memory"].values()) == {int(80 * GB * placement.GPU_HEADROOM)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from flywheel_trainer import scoring

    placement._SHARDING["group"] = 2  # as load_inference leaves it for a model spanning 2 GPUs
    worked: list[int] = []

    def work(share: list[int]) -> list[str]:
        worked.extend(share)
        return [f"r{rank}:{x}" for x in share]

    result = placement.across_ranks(list(range(9)), work)
    scored: list[str] = []

    def fake_logits(model: object, tokenizer: object, texts: list[str], *, max_length: int) -> np.ndarray:
        assert model is not None  # only a holder of the sharded model scores
        scored.extend(texts)
        return np.asarray([float(len(t)) for t in texts])

    scoring._logits = fake_logits
    model = "sharded-copy" if rank % 2 == 0 else None  # what load_inference returns on leaders and the others
    logits = scoring.logits_for_texts(model, None, ["a", "bb", "ccc", "dddd", "eeeee"], max_length=8)
    Path(out, f"{rank}.json").write_text(json.dumps({"worked": worked, "result": result, "scored": scored,
                                                     "logits": logits.tolist()}))
    torch.distributed.destroy_process_group()


def test_only_the_holders_of_a_sharded_copy_sample_and_score_and_every_rank_gets_all(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(4, _free_port(), str(tmp_path)), nprocs=4, join=True)
    outputs = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(4)]
    assert [o["worked"] for o in outputs] == [[0, 1, 2, 3, 4], [], [5, 6, 7, 8], []]
    assert all(o["result"] == [f"r{0 if x < 5 else 2}:{x}" for x in range(9)] for o in outputs)
    assert [o["scored"] for o in outputs] == [["a", "bb", "ccc"], [], ["dddd", "eeeee"], []]
    assert all(o["logits"] == [1.0, 2.0, 3.0, 4.0, 5.0] for o in outputs)
