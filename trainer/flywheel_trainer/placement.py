"""Where a stage's models and work go: the device of this rank, the dtype of trained vs inference-only models,
and how sampling is shared between the ranks of a multi-GPU stage.

Precision: a model that is trained keeps fp32 master weights; bf16 is the compute dtype only (TrainingArguments
`bf16=True` autocasts, or ZeRO keeps its own fp32 masters). A bf16 parameter cannot take a 1e-6 relative update
(bf16 has 8 significant bits), so pure-bf16 AdamW at RL/DPO learning rates leaves most weights unchanged.
Models only sampled or scored (rejection sampling, prompt selection, eval, the predictor) load in bf16 on CUDA.

Devices: every rank uses `cuda:<LOCAL_RANK>`, never plain `cuda` (which is cuda:0 on every rank). Trained models
are not moved by the stage at all: the Trainer (or DeepSpeed) places them once the process group exists, and
under ZeRO-3 they are loaded after the stage's TrainingArguments exist, so transformers builds them inside
`deepspeed.zero.Init` (partitioned, never whole on one GPU). Inference-only models are loaded outside ZeRO-3's
`zero.Init` (`without_zero_init`) so every rank holds a whole copy it can sample from alone.

Ranks: sampling (rejection sampling, RL prompt selection and the before/after reward, eval responses) is split
across ranks — each rank generates for its contiguous share of the prompts and the shares are gathered in order,
so every rank continues with the same full list (and with one process nothing changes). Scoring by reward models
is not split: every rank scores the same texts, which keeps a ZeRO-3-partitioned reward model's collective
forward passes in step. Only rank 0 writes the stage's output (outputs.atomic_output_dir).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device() -> Any:
    """This rank's device: `cuda:<LOCAL_RANK>` when CUDA is present, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = local_rank()
    if index >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={index} but only {torch.cuda.device_count()} CUDA devices are visible; "
            "launch at most one process per GPU (gpusPerNode)"
        )
    return torch.device(f"cuda:{index}")


def training_dtype() -> Any:
    """fp32: the dtype of the master weights of every trained model (bf16 compute comes from autocast)."""
    import torch

    return torch.float32


def inference_dtype() -> Any:
    """bf16 on CUDA, fp32 on the CPU: the dtype of models that are only sampled or scored."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


@contextmanager
def without_zero_init() -> Iterator[None]:
    """Load whole models inside this block even when a ZeRO-3 TrainingArguments is alive (transformers would
    otherwise partition every `from_pretrained` through `deepspeed.zero.Init`)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def compute_autocast() -> Any:
    """bf16 autocast for inference on CUDA (fp32-master models sample at bf16 speed); nothing on the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def rank_share(count: int, rank_index: int, ranks: int) -> range:
    """The contiguous block of `count` items that rank `rank_index` of `ranks` handles; blocks differ in size by
    at most one, cover every item once and follow rank order, so concatenating them restores the input order."""
    if ranks < 1 or not 0 <= rank_index < ranks:
        raise ValueError(f"rank {rank_index} is not one of {ranks} ranks")
    base, extra = divmod(count, ranks)
    start = rank_index * base + min(rank_index, extra)
    return range(start, start + base + (1 if rank_index < extra else 0))


def ensure_process_group() -> bool:
    """Join the launcher's process group (torchrun's env) if there is more than one rank; True when distributed.

    Called before the first collective that precedes any Trainer; accelerate and DeepSpeed reuse the group."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_device())
            dist.init_process_group(backend="nccl", device_id=local_device(), timeout=collective_timeout())
        else:
            dist.init_process_group(backend="gloo", timeout=collective_timeout())
    return True


COLLECTIVE_TIMEOUT_ENV = "FLYWHEEL_COLLECTIVE_TIMEOUT"
"""Seconds a collective may wait (the operator sets it from `resources.collectiveTimeout`)."""
DEFAULT_COLLECTIVE_TIMEOUT = 1800


def collective_timeout() -> Any:
    """The process group's timeout: `FLYWHEEL_COLLECTIVE_TIMEOUT` seconds (30 min by default, over torch's 10):
    a checkpoint upload or a slow node's model download must finish within it, or the collective fails."""
    from datetime import timedelta

    value = os.environ.get(COLLECTIVE_TIMEOUT_ENV, "")
    if value and not value.isdigit():
        raise ValueError(f"{COLLECTIVE_TIMEOUT_ENV}={value!r} is not a number of seconds")
    return timedelta(seconds=int(value) if value else DEFAULT_COLLECTIVE_TIMEOUT)


def across_ranks(items: Sequence[T], work: Callable[[Sequence[T]], list[R]]) -> list[R]:
    """`work` over this rank's share of `items`, the shares of all ranks gathered in input order.

    Every rank must call it with the same items; with one process it is just `work(items)`."""
    if not ensure_process_group():
        return work(items)
    import torch.distributed as dist

    share = rank_share(len(items), rank(), world_size())
    mine = work(items[share.start : share.stop]) if len(share) else []
    gathered: list[list[R] | None] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    return [result for part in gathered for result in (part or [])]


@contextmanager
def trained_for_inference(trainer: Any, trained: Any) -> Iterator[Any]:
    """The trained model, whole on every rank, for sampling after `trainer.train()`.

    Under DeepSpeed ZeRO-3 the parameters are partitioned: they are gathered (and ZeRO's hooks removed) for the
    duration of the block through TRL's `unwrap_model_for_generation`. Otherwise `trained` as it is."""
    if not getattr(trainer, "is_deepspeed_enabled", False):
        with compute_autocast():
            yield trained.eval()
        return
    from trl.models.utils import unwrap_model_for_generation

    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model, compute_autocast():
        yield model.eval()
