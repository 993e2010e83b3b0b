"""GPU benchmark of the stage programs: every stage on a ~1B-parameter random-weights Llama config, bf16 compute
over fp32 master weights, on one GPU; SFT throughput and MFU against a plain-PyTorch training loop in the same run.

What it runs (in this process, one stage after another, as `flywheel_trainer.cli.run_stage` runs them):
curate → reward (pointwise) → sft (rejection sampling + SFTTrainer) → rl (DPO patch + GRPO) → eval, on the
synthetic log with a parent whose weights are random; per stage: wall time, tokens (trained or generated),
tokens/s and peak CUDA memory. Then the SFT stage's own trainer (`flywheel_trainer.sft.train_sft`) on rows
truncated to `maxLength` (no padding) for SFT tokens/s and MFU, and the baseline: a bare PyTorch loop
(bf16 autocast, fp32 AdamW) on the same model, batch and sequence length.

MFU = model FLOPs/s over the device's dense bf16 peak (PEAK_BF16_FLOPS, vendor data sheets, no sparsity), with
model FLOPs per trained token = 6 · parameters + 12 · layers · hidden · sequence length (PaLM, appendix B).
Target on an H100/H200: SFT MFU ≥ 45 %.

Sampling: tokens/s of each sampler backend (flywheel_trainer.generation.SAMPLERS) and of the baseline, the
hand-written loop of d32e63f, on the parent loaded as the stages load it (bf16 on the GPU), at temperature 1.0,
per batch size; bench/sampler.py's measurement, whose CPU run is bench/results/sampler.json.

`--tiny` runs the same code on the CPU with a tiny config and small settings (what the test suite runs so this
file cannot rot); its figures say nothing about a GPU and it claims no MFU.

    python bench/gpu.py [--tiny] [--out bench/results/gpu.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}
"""Dense bf16 peak FLOP/s by device-name fragment (vendor data sheets, no sparsity); the first match wins."""


@dataclass(frozen=True)
class Size:
    """Model shape and workload of one benchmark size."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    records: int
    reward_steps: int
    reward_batch: int
    prompts: int
    samples_per_prompt: int
    new_tokens: int
    sft_steps: int
    sft_batch: int
    sft_length: int
    rl_steps: int
    eval_prompts: int
    throughput_steps: int
    throughput_batch: int
    throughput_length: int


GPU_1B = Size(
    hidden=2048,
    intermediate=5632,
    layers=22,
    heads=32,
    kv_heads=4,
    vocab=4000,
    records=600,
    reward_steps=30,
    reward_batch=16,
    prompts=64,
    samples_per_prompt=4,
    new_tokens=96,
    sft_steps=20,
    sft_batch=16,
    sft_length=1024,
    rl_steps=8,
    eval_prompts=64,
    throughput_steps=30,
    throughput_batch=8,
    throughput_length=2048,
)
TINY = Size(
    hidden=32,
    intermediate=64,
    layers=2,
    heads=4,
    kv_heads=2,
    vocab=400,
    records=240,
    reward_steps=3,
    reward_batch=4,
    prompts=8,
    samples_per_prompt=2,
    new_tokens=8,
    sft_steps=3,
    sft_batch=4,
    sft_length=64,
    rl_steps=2,
    eval_prompts=8,
    throughput_steps=4,
    throughput_batch=4,
    throughput_length=64,
)


def stage_settings(size: Size) -> dict[str, Any]:
    """StageSettings (wire form) of the chain at `size`."""
    reward = {"learningRate": 1e-5, "maxSteps": size.reward_steps, "batchSize": size.reward_batch, "maxLength": 512}
    return {
        "rewardModels": [{"name": "pointwise", "kind": "pointwise", **reward}],
        "sft": {
            "rejectionSampling": {
                "samplesPerPrompt": size.samples_per_prompt,
                "prompts": size.prompts,
                "maxNewTokens": size.new_tokens,
                "minScoreMargin": 0.0,
            },
            "learningRate": 1e-5,
            "maxSteps": size.sft_steps,
            "batchSize": size.sft_batch,
            "maxLength": size.sft_length,
        },
        "dpo": {"enabled": True, "maxPairs": 4 * size.sft_batch, "learningRate": 5e-7, "batchSize": size.sft_batch},
        "rl": {
            "numGenerations": 4,
            "prompts": max(size.prompts // 4, 4),
            "selectionSamples": 2,
            "selectionPool": size.prompts,
            "promptsPerStep": 2,
            "maxSteps": size.rl_steps,
            "learningRate": 1e-6,
            "maxNewTokens": size.new_tokens,
            "klBeta": 0.02,
        },
        "eval": {"promptsPerSource": size.eval_prompts, "maxNewTokens": size.new_tokens},
    }


def llama_config(size: Size, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=max(2048, size.throughput_length),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_parent(directory: Path, size: Size, records: list[dict[str, Any]]) -> int:
    """Save a random-weights Llama of `size` (bf16 on disk, like Hub checkpoints) with a tokenizer trained on the
    log's text; returns its parameter count."""
    import torch
    from flywheel_trainer.conversation import to_chat
    from flywheel_trainer.tinymodel import train_tokenizer
    from transformers import GenerationConfig, LlamaForCausalLM

    tokenizer = train_tokenizer([m["content"] for r in records for m in to_chat(r)], vocab_size=size.vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama_config(size, tokenizer))
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    parameters = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return parameters


@dataclass(frozen=True)
class SamplingLoad:
    """The sampling measurement: `batches` batches of each batch size, `new_tokens` new tokens per row."""

    batch_sizes: tuple[int, ...]
    batches: int
    new_tokens: int
    repeats: int


SAMPLING_GPU = SamplingLoad(batch_sizes=(1, 8, 32, 128), batches=2, new_tokens=128, repeats=1)
SAMPLING_TINY = SamplingLoad(batch_sizes=(1, 4), batches=2, new_tokens=8, repeats=1)


def _sampler_bench() -> Any:
    """bench/sampler.py as a module (the bench scripts are programs, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sampler", Path(__file__).with_name("sampler.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def sampling_throughput(load: SamplingLoad, parent: Path) -> dict[str, Any]:
    """Sampling tokens/s per backend and batch size on the parent, loaded as the stages load a model they only
    sample (flywheel_trainer.upstream.load_policy: bf16 on CUDA), with the d32e63f loop as the baseline."""
    from flywheel_trainer.upstream import load_policy

    bench = _sampler_bench()
    reset_peak_memory()
    model, tokenizer = load_policy(str(parent))
    chats = bench.prompts(max(load.batch_sizes) * load.batches)
    rows = bench.compare(model, tokenizer, chats, batch_sizes=load.batch_sizes, max_new_tokens=load.new_tokens,
                         repeats=load.repeats, batches=load.batches)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    del model
    memory = peak_memory_gib()
    reset_peak_memory()
    return {"dtype": dtype, "temperature": 1.0, "new_tokens": load.new_tokens, "batches": load.batches,
            "peak_memory_gib": memory, "rows": rows}


def reset_peak_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    """Peak CUDA memory since the last reset; None on the CPU (no per-stage figure there)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def run_chain(workdir: Path, size: Size, parent: Path, log: Path) -> dict[str, dict[str, Any]]:
    """Every stage in order; wall time, tokens, tokens/s and peak memory per stage."""
    from flywheel_operator.api import StageConfig
    from flywheel_trainer.cli import run_stage

    settings = stage_settings(size)
    done: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}
    plan = [("curate", "curate", None), ("reward", "reward-pointwise", "pointwise")]
    plan += [("sft", "sft", None), ("rl", "rl", None), ("eval", "eval", None)]
    for stage, name, reward_model in plan:
        config = StageConfig.model_validate(
            {
                "stage": stage,
                "name": name,
                "generation": "bench",
                "outputDir": str(workdir / name),
                "policy": str(parent),
                "data": {"userTraffic": {"uri": str(log)}},
                "settings": settings,
                "rewardModel": reward_model,
                "upstream": {n: r.artifacts for n, r in done.items()},
                "upstreamDigests": {n: r.output_digest for n, r in done.items()},
            }
        )
        reset_peak_memory()
        started = time.perf_counter()
        result = run_stage(config)
        wall = time.perf_counter() - started
        done[name] = result
        tokens = result.metrics.get("tokens_seen", result.metrics.get("tokens_generated", 0.0))
        stages[name] = {
            "wall_s": round(wall, 2),
            "tokens": int(tokens),
            "tokens_per_s": round(tokens / wall, 1),
            "peak_memory_gib": peak_memory_gib(),
        }
    return stages


def training_rows(size: Size, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows whose completions are longer than maxLength, so every row is truncated to exactly that length."""
    from flywheel_trainer.conversation import to_chat

    rows = []
    for record in records:
        if record["messages"][-1]["role"] != "assistant":
            continue
        reply = record["messages"][-1]["content"]
        repeat = size.throughput_length // max(len(reply) // 4, 1) + 1
        rows.append(
            {
                "prompt": to_chat(record, len(record["messages"]) - 1),
                "completion": [{"role": "assistant", "content": " ".join([reply] * repeat)}],
            }
        )
    return rows


def flops_per_token(size: Size, parameters: int) -> float:
    return 6 * parameters + 12 * size.layers * size.hidden * size.throughput_length


def sft_throughput(
    workdir: Path, size: Size, parent: Path, rows: list[dict[str, Any]], *, compile: bool = False
) -> dict[str, Any]:
    """Tokens/s of the SFT stage's own trainer at maxLength with no padding (train time only), over the whole run
    and in the steady state (after the first `warmup_steps`, which hold torch.compile's compilation when on)."""
    from flywheel_operator.api import StageConfig
    from flywheel_trainer.sft import train_sft
    from transformers import AutoTokenizer

    config = StageConfig.model_validate(
        {
            "stage": "sft",
            "name": "sft",
            "generation": "bench",
            "outputDir": str(workdir / f"sft-throughput{'-compiled' if compile else ''}"),
            "policy": str(parent),
            "data": {"userTraffic": {"uri": str(workdir)}},
            "settings": {
                "sft": {
                    "maxSteps": size.throughput_steps,
                    "batchSize": size.throughput_batch,
                    "learningRate": 1e-5,
                    "maxLength": size.throughput_length,
                    "activationCheckpointing": False,  # a 1B model fits without it; recomputation costs ~1/3
                    "compile": compile,
                }
            },
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(parent)
    reset_peak_memory()
    trainer = train_sft(config, str(parent), tokenizer, rows, Path(config.output_dir))
    runtime_s = next(e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e)
    tokens = trainer.state.num_input_tokens_seen
    steps = [e for e in trainer.state.log_history if "num_input_tokens_seen" in e and "train_runtime" in e]
    warmup = min(5, len(steps) // 3)
    steady = None
    if len(steps) > warmup + 1:
        first, last = steps[warmup], steps[-1]
        steady = (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (
            last["train_runtime"] - first["train_runtime"]
        )
    del trainer
    return {
        "compile": compile,
        "tokens": int(tokens),
        "train_s": round(runtime_s, 2),
        "tokens_per_s": round(tokens / runtime_s, 1),
        "warmup_steps": warmup,
        "steady_tokens_per_s": None if steady is None else round(steady, 1),
        "peak_memory_gib": peak_memory_gib(),
    }


def baseline_tokens_per_second(size: Size, parent: Path, rows: list[dict[str, Any]]) -> float:
    """A bare PyTorch loop on the same model, batch and length: bf16 autocast over fp32 AdamW masters."""
    import torch
    from flywheel_trainer.placement import local_device
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = local_device()
    tokenizer = AutoTokenizer.from_pretrained(parent)
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    texts = [tokenizer.apply_chat_template([*r["prompt"], *r["completion"]], tokenize=False) for r in rows]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(index: int) -> int:
        batch = tokenizer(
            texts[index * size.throughput_batch % len(texts) :][: size.throughput_batch],
            return_tensors="pt",
            truncation=True,
            max_length=size.throughput_length,
            padding=True,
            add_special_tokens=False,
        ).to(device)
        with autocast:
            model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    step(0)  # warm-up (kernels, allocator) outside the timing
    if device.type == "cuda":
        torch.cuda.synchronize()
    tokens, started = 0, time.perf_counter()
    for index in range(1, size.throughput_steps + 1):
        tokens += step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


def device_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "peak_bf16_flops": None}
    name = torch.cuda.get_device_name()
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    return {"device": name, "peak_bf16_flops": peak}


def library_versions() -> dict[str, str]:
    """The versions that set the figures (a GPU image may carry other torch/CUDA builds than the lock files)."""
    from importlib.metadata import version

    import torch

    versions = {name: version(name) for name in ("torch", "transformers", "trl")}
    return versions | {"cuda": torch.version.cuda or "none"}


def benchmark(size: Size, workdir: Path) -> dict[str, Any]:
    """The whole benchmark at `size` in `workdir`; the report written to gpu.json."""
    from flywheel_trainer.synthetic import synthetic_records, write_jsonl

    records = synthetic_records(size.records)
    log = write_jsonl(records, workdir / "logs" / "traffic.jsonl")
    parent = workdir / "parent"
    parameters = build_parent(parent, size, records)
    device = device_info()
    stages = run_chain(workdir, size, parent, log)
    rows = training_rows(size, records)
    sft = sft_throughput(workdir, size, parent, rows)
    baseline = baseline_tokens_per_second(size, parent, rows)
    sft["baseline_tokens_per_s"] = round(baseline, 1)
    sft["vs_baseline"] = round(sft["tokens_per_s"] / baseline, 3)
    peak = device["peak_bf16_flops"]

    def mfu(tokens_per_s: float | None) -> float | None:
        return round(flops_per_token(size, parameters) * tokens_per_s / peak, 4) if peak and tokens_per_s else None

    sft["mfu"], sft["steady_mfu"], sft["baseline_mfu"] = (
        mfu(sft["tokens_per_s"]),
        mfu(sft["steady_tokens_per_s"]),
        mfu(baseline),
    )
    if device["device"] != "cpu":  # settings.sft.compile: compilation only pays on a GPU
        compiled = sft_throughput(workdir, size, parent, rows, compile=True)
        compiled["mfu"], compiled["steady_mfu"] = mfu(compiled["tokens_per_s"]), mfu(compiled["steady_tokens_per_s"])
        sft["compiled"] = compiled
    sampling = sampling_throughput(SAMPLING_TINY if size is TINY else SAMPLING_GPU, parent)
    return {
        "mode": "tiny (CPU smoke run: no GPU figures, no MFU claim)" if size is TINY else "gpu",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), **device, **library_versions()},
        "model": {"parameters": parameters, **{k: v for k, v in asdict(size).items() if k in MODEL_FIELDS}},
        "precision": "fp32 (CPU)" if device["device"] == "cpu" else "bf16 compute (autocast) over fp32 master weights",
        "stages": stages,
        "sft": sft,
        "sampling": sampling,
    }


MODEL_FIELDS = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")


def print_report(report: dict[str, Any]) -> None:
    model, sft = report["model"], report["sft"]
    print(f"{report['mode']}: {report['machine']['device']}, Llama config with {model['parameters']:,} parameters")
    print(f"{'stage':<20}{'wall s':>9}{'tokens':>10}{'tokens/s':>11}{'peak GiB':>10}")
    for name, row in report["stages"].items():
        memory = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        print(f"{name:<20}{row['wall_s']:>9.1f}{row['tokens']:>10}{row['tokens_per_s']:>11.1f}{memory:>10}")
    mfu = "n/a (no GPU peak)" if sft["mfu"] is None else f"{sft['mfu']:.1%} (baseline {sft['baseline_mfu']:.1%})"
    print(
        f"sft trainer: {sft['tokens_per_s']:.1f} tokens/s vs bare PyTorch loop {sft['baseline_tokens_per_s']:.1f} "
        f"({sft['vs_baseline']:.3f}x); MFU {mfu}"
    )
    for name, row in (("eager", sft), ("compiled", sft.get("compiled"))):
        if row and row.get("steady_mfu") is not None:
            print(
                f"sft {name} steady state (after {row['warmup_steps']} steps): "
                f"{row['steady_tokens_per_s']:.1f} tokens/s, MFU {row['steady_mfu']:.1%}"
            )
    sampling = report["sampling"]
    base = {r["batch_size"]: r["tokens_per_s"] for r in sampling["rows"] if r["backend"] == "hand-loop"}
    print(f"sampling ({sampling['dtype']}, {sampling['new_tokens']} new tokens, T={sampling['temperature']}):")
    for row in sampling["rows"]:
        print(
            f"  batch {row['batch_size']:>4} {row['backend']:<17} {row['tokens_per_s']:>10.1f} tokens/s "
            f"({row['tokens_per_s'] / base[row['batch_size']]:.2f}x the d32e63f loop; row-steps "
            f"{row['row_steps']}, {row['useful_share']:.0%} useful, padding {row['padding_share']:.0%}; greedy "
            f"tokens equal: {'yes' if row['greedy_equal'] else 'no'})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke run; no GPU figures)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    import torch

    if args.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the same code on the CPU, even on a GPU machine
        if torch.cuda.is_available():
            raise SystemExit("--tiny must run before CUDA is initialised; run it in a fresh process")
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        report = benchmark(TINY if args.tiny else GPU_1B, Path(tmp))
    print_report(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("gpu", args.out)  # provenance
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
