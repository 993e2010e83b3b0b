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
`zero.Init` (`without_zero_init`) so every rank holds a whole copy it can sample from alone — unless a model does
not fit one GPU: then one copy spans a group of the node's GPUs (`load_inference`: device_map within the group),
held by the group's first rank, and only those ranks sample and score (`across_ranks`).

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

    Every rank must call it with the same items; with one process it is just `work(items)`. While a sharded
    inference model is loaded (`load_inference`), only the ranks holding a copy work; the others get the results."""
    if not ensure_process_group():
        return work(items)
    import torch.distributed as dist

    workers = sampling_ranks(world_size(), local_world_size(), _SHARDING["group"])
    mine: list[R] = []
    if rank() in workers:
        share = rank_share(len(items), workers.index(rank()), len(workers))
        mine = work(items[share.start : share.stop]) if len(share) else []
    gathered: list[list[R] | None] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    return [result for part in gathered for result in (part or [])]


# --- issue 24: inference-only models larger than one GPU ------------------------------------------------------
GPU_HEADROOM = 0.85
"""Share of a GPU an inference model's weights may take (the rest: activations, KV cache, CUDA context)."""
_SHARDING: dict[str, int] = {"group": 1}
"""GPUs per copy of the largest inference model loaded in this process (1: every rank holds whole copies)."""


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def inference_group(model_bytes: int, gpu_bytes: int, local_ranks: int) -> int:
    """GPUs one copy of an inference model spans: 1 when it fits one GPU, else the smallest divisor of the node's
    ranks whose GPUs hold it (so the node's GPUs split into whole groups, one copy each)."""
    if model_bytes <= gpu_bytes * GPU_HEADROOM:
        return 1
    for size in range(2, local_ranks + 1):
        if local_ranks % size == 0 and model_bytes <= size * gpu_bytes * GPU_HEADROOM:
            return size
    raise RuntimeError(
        f"an inference model of {model_bytes / 1e9:.0f} GB does not fit the {local_ranks} GPU(s) of this pod "
        f"({gpu_bytes / 1e9:.0f} GB each, {GPU_HEADROOM:.0%} usable): raise gpusPerNode (flywheel validate "
        "reports it before a run)")


def sampling_ranks(world: int, local_ranks: int, group: int) -> list[int]:
    """The global ranks that hold a copy of the inference models and sample: every rank when each holds whole
    copies, else the first rank of each group of `group` consecutive local ranks on every node."""
    return [r for r in range(world) if (r % max(local_ranks, 1)) % group == 0]


def sharded_load_kwargs(local_index: int, group: int, gpu_bytes: int) -> dict[str, Any]:
    """`from_pretrained` kwargs of a copy spread over the `group` GPUs starting at this rank's own (device_map
    "auto" within those GPUs only, no CPU offload)."""
    first = local_index - local_index % group
    budget = int(gpu_bytes * GPU_HEADROOM)
    return {"device_map": "auto", "max_memory": {index: budget for index in range(first, first + group)}}


def load_inference(load: Callable[..., Any], source: str, **kwargs: Any) -> Any:
    """An inference-only model (bf16 on CUDA, eval mode): whole on this rank's GPU when it fits one; otherwise
    one copy per group of GPUs, sharded across them (`device_map`), loaded by the group's first rank only —
    the others return None and sample nothing (`across_ranks` hands them the results). `load` is a
    `from_pretrained`; the model's size comes from its config (never its weights)."""
    import torch

    with without_zero_init():
        if not torch.cuda.is_available():
            return load(source, dtype=inference_dtype(), **kwargs).to(local_device()).eval()
        from flywheel_operator.capacity import INFERENCE_BYTES_PER_PARAMETER, parameter_count
        from transformers import AutoConfig

        try:
            parameters = parameter_count(AutoConfig.from_pretrained(source).to_dict())
        except (KeyError, TypeError, ValueError):
            parameters = 0  # an architecture the count does not know: whole copies, as before
        gpu_bytes = torch.cuda.get_device_properties(local_device()).total_memory
        group = inference_group(parameters * INFERENCE_BYTES_PER_PARAMETER, gpu_bytes, local_world_size())
        _SHARDING["group"] = max(_SHARDING["group"], group)
        if group == 1:
            return load(source, dtype=inference_dtype(), **kwargs).to(local_device()).eval()
        if local_rank() % group != 0:
            return None
        return load(source, dtype=inference_dtype(), **sharded_load_kwargs(local_rank(), group, gpu_bytes),
                    **kwargs).eval()


def sharded_inference() -> bool:
    """Whether an inference model of this process is sharded over several GPUs (only group leaders hold it)."""
    return _SHARDING["group"] > 1


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
