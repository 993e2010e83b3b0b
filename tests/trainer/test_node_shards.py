"""Resume on several nodes (issue 24, item 4): each node downloads the newest checkpoint's shared files and only
its own ranks' ZeRO shards and RNG states, from a real S3 server (moto's server mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_operator import storage
from flywheel_trainer.checkpoints import for_node, node_ranks

# A DeepSpeed ZeRO checkpoint of 4 ranks (2 nodes x 2 GPUs) as the HF Trainer saves it
CHECKPOINT = [
    "trainer_state.json", "training_args.bin", "scheduler.pt", "latest", "config.json", "model.safetensors",
    *(f"rng_state_{r}.pth" for r in range(4)),
    "global_step8/mp_rank_00_model_states.pt",
    *(f"global_step8/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)),
    *(f"global_step8/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(4)),
]


@pytest.mark.parametrize(("ranks", "own"), [(range(0, 2), {0, 1}), (range(2, 4), {2, 3}), (range(0, 4), {0, 1, 2, 3})])
def test_a_node_needs_the_shared_files_and_its_own_ranks_shards(ranks: range, own: set[int]) -> None:
    kept = [name for name in CHECKPOINT if for_node(name, ranks)]
    shared = [name for name in CHECKPOINT if "rank_" not in name and "rng_state_" not in name]
    assert set(shared) | {"global_step8/mp_rank_00_model_states.pt"} <= set(kept)
    assert {f"rng_state_{r}.pth" for r in own} | {f"global_step8/zero_pp_rank_{r}_mp_rank_00_model_states.pt"
                                                   for r in own} <= set(kept)
    assert not any(f"rank_{r}_" in name or f"rng_state_{r}." in name for name in kept for r in set(range(4)) - own)


def test_node_ranks_follow_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert node_ranks() == range(4, 8)


def test_each_node_downloads_only_its_shards_of_the_newest_checkpoint(s3: str, tmp_path: Path) -> None:
    uri = storage.join(s3, "gen1", "sft", "checkpoints", "sft-abc", "checkpoint-8")
    for name in CHECKPOINT:
        storage.write_text(storage.join(uri, name), name)
    for ranks in (range(0, 2), range(2, 4)):
        local = storage.localize(uri, select=lambda name, r=ranks: for_node(name, r), variant=f"ranks {ranks}")
        got = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        assert got == sorted(name for name in CHECKPOINT if for_node(name, ranks))
        assert all((local / name).read_text() == name for name in got)
    whole = storage.localize(uri)  # without a selection: everything, in its own cache entry
    assert len([p for p in whole.rglob("*") if p.is_file()]) == len(CHECKPOINT)
