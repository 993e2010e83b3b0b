"""What a stage's models need, from the spec and the models' configs: parameter counts, GPU fit, scratch size.

Pure arithmetic (no I/O): `flywheel validate` reads the model configs (config.json of a local model, or of a Hub
id from the Hugging Face cache or the Hub) and hands them in; the Job builder sizes the scratch emptyDir from
the spec alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api import FlywheelGeneration

GiB = 2**30
SCRATCH_BASE_BYTES = 16 * GiB
"""Data, output staging and temp files of one pod."""
MODEL_SCRATCH_BYTES = 200 * GiB
"""Scratch per model a pod downloads whose size the spec does not say (a 70B model in bf16 is ~141 GB)."""
INFERENCE_BYTES_PER_PARAMETER = 2
"""bf16 weights of a model only sampled or scored (flywheel_trainer.placement.inference_dtype)."""
TRAINING_BYTES_PER_PARAMETER = 16
"""fp32 master weights (4) + fp32 gradients (4) + AdamW moments (8), before activations."""
USABLE_GPU_FRACTION = 0.85
"""Share of a GPU's memory for weights and optimizer state; the rest is activations, KV cache, CUDA context."""
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 1e-3}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")
_PRODUCT_MEMORY = re.compile(r"(\d+)\s*GB", re.IGNORECASE)
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def quantity_bytes(quantity: str) -> int:
    """`200Gi` -> 214748364800 (Kubernetes quantity suffixes)."""
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity such as 80Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def is_hub_id(reference: str) -> bool:
    """`org/name` that is no URI and no path: the stages load it from the Hugging Face Hub."""
    return (not storage.scheme(reference) and not reference.startswith(("/", ".", "~"))
            and reference.count("/") == 1 and all(reference.split("/")))


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a decoder-only transformer from its config.json (Llama, Mistral, Qwen, Gemma, Mixtral …):
    embeddings, attention (grouped KV heads), gated MLP (× experts for a mixture), norms, untied output head."""
    text = config.get("text_config") or config  # multimodal configs nest the language model
    hidden = int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    vocab = int(text["vocab_size"])
    intermediate = int(text.get("intermediate_size") or 4 * hidden)
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    experts = int(text.get("num_local_experts") or text.get("num_experts") or 1)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate * experts + (hidden * experts if experts > 1 else 0)
    per_layer = attention + mlp + 2 * hidden
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) else 2)
    return layers * per_layer + embeddings + hidden


def gpu_memory_bytes(generation: FlywheelGeneration, kind: str) -> int | None:
    """One GPU's memory: `resources.gpuMemory`, else the `…-80GB-…` of the stage's GPU product selector."""
    res = generation.spec.resources
    if res.gpu_memory:
        return quantity_bytes(res.gpu_memory)
    product = (res.for_stage(kind).node_selector or {}).get(GPU_PRODUCT_LABEL, "")
    match = _PRODUCT_MEMORY.search(product)
    return int(match.group(1)) * 10**9 if match else None


@dataclass(frozen=True)
class StageModel:
    """One model a stage loads: its reference, the spec field naming it, and whether the stage trains it."""

    reference: str
    field: str
    trained: bool


def stage_models(generation: FlywheelGeneration) -> dict[str, list[StageModel]]:
    """The models named in the spec, by the stage kind that loads them (the parent's policy, whose location is
    known only at run time, is not among them unless `basePolicy` names it)."""
    spec = generation.spec
    policy = [spec.base_policy] if spec.base_policy and storage.scheme(spec.base_policy) != "sim" else []
    out: dict[str, list[StageModel]] = {"reward": [], "sft": [], "rl": [], "eval": []}
    for index, model in enumerate(spec.stages.reward_models):
        base = model.base_model or (policy[0] if policy else None)
        if base:
            out["reward"].append(StageModel(base, f"spec.stages.rewardModels[{index}].baseModel", True))
    for reference in policy:
        out["sft"].append(StageModel(reference, "spec.basePolicy", True))
        out["rl"].append(StageModel(reference, "spec.basePolicy", False))
        out["eval"].append(StageModel(reference, "spec.basePolicy", False))
    for index, reference in enumerate(spec.stages.sft.rejection_sampling.candidate_models):
        out["sft"].append(StageModel(reference, f"spec.stages.sft.rejectionSampling.candidateModels[{index}]", False))
    return out


def fit_problems(generation: FlywheelGeneration, parameters: dict[str, int]) -> list[tuple[str, str]]:
    """(field, message) for each model that cannot fit the GPUs its stage asks for; `parameters` maps a model
    reference to its parameter count (references without one are skipped). Inference-only models are sharded
    across the pod's GPUs (device_map), trained ones by ZeRO: stage 3 over every GPU of the stage, stage 2
    keeps the fp32 weights whole on each GPU and shards the rest, no ZeRO keeps everything on each GPU."""
    res = generation.spec.resources
    problems = []
    for kind, models in stage_models(generation).items():
        own = res.for_stage(kind)
        gpus = own.gpus_per_node or 0
        memory = gpu_memory_bytes(generation, kind)
        if gpus == 0 or memory is None:
            continue
        usable = memory * USABLE_GPU_FRACTION
        world = gpus * (own.nodes or 1 if kind in ("reward", "sft", "rl") else 1)
        for model in models:
            count = parameters.get(model.reference)
            if count is None:
                continue
            if model.trained:
                zero = res.deepspeed_stage
                per_gpu = (count * TRAINING_BYTES_PER_PARAMETER / world if zero == 3
                           else count * (4 + 12 / world) if zero == 2 else count * TRAINING_BYTES_PER_PARAMETER)
                what = f"training it under ZeRO-{zero} needs {per_gpu / 1e9:.0f} GB per GPU"
                fits = per_gpu <= usable
            else:
                need = count * INFERENCE_BYTES_PER_PARAMETER
                per_gpu = need / gpus
                what = (f"its bf16 weights ({need / 1e9:.0f} GB) sharded over {gpus} GPU(s) need "
                        f"{per_gpu / 1e9:.0f} GB each")
                fits = per_gpu <= usable
            if not fits:
                problems.append((model.field, (
                    f"{model.reference} ({count / 1e9:.1f}B parameters) does not fit the {kind} stage's GPUs: {what}, "
                    f"over {USABLE_GPU_FRACTION:.0%} of {memory / 1e9:.0f} GB; raise "
                    f"resources.stages.{kind}.gpusPerNode{' or nodes' if model.trained and kind != 'eval' else ''}, "
                    "or pick a smaller model")))
    return problems


def scratch_estimate(generation: FlywheelGeneration) -> int:
    """Bytes of the per-pod scratch emptyDir when `resources.scratch.size` is unset: the base, plus a model's
    room for each Hub model that is not cached on a claim, the policy and checkpoints when they come from an
    object store (downloaded into scratch), rounded up to whole GiB."""
    spec = generation.spec
    res = spec.resources
    models = {m.reference for group in stage_models(generation).values() for m in group}
    hub = 0 if (res.hub.cache_pvc or res.storage.pvc) else sum(1 for m in models if is_hub_id(m))
    object_store = res.storage.uri is not None and storage.is_object_store(res.storage.uri)
    downloads = hub + (2 if object_store else 0)  # the policy + the newest checkpoint (this node's shards)
    total = SCRATCH_BASE_BYTES + downloads * MODEL_SCRATCH_BYTES
    return math.ceil(total / GiB) * GiB
