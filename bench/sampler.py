"""Benchmark of the sampler seam (flywheel_trainer.generation): tokens/s of each backend against the baseline,
the hand-written token loop the product used up to d32e63f, in the same run on the same models and prompts.

Backends: `generate` (transformers' `model.generate`, the product's default) and `hand-loop` (the baseline: a
verbatim copy of d32e63f's `_decode`/`_pick`, kept here only, behind the same Sampler interface). Models: the
local flywheel's tiny Llama (vocab 1024, hidden 64, 2 layers: sim's default world) and a slightly larger random
Llama (vocab 4000, hidden 256, 4 layers). Each (model, batch size) samples the same prompts at temperature 1.0
(what the stages use) with the same seed; the backends alternate, `--repeats` times, and the median is kept.
tokens/s = new tokens returned (cut at EOS) / wall time of the `generate_tokens` call (prompt rendering included).
`same_tokens` says whether both backends returned exactly the same tokens (they should: one seed, one draw rule).

    python bench/sampler.py [--threads 1] [--repeats 3] [--out bench/results/sampler.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 8, 32)


# --- The baseline: the hand-written token loop of d32e63f (trainer/flywheel_trainer/generation.py:61-160), ---
# --- removed from the product when `generate` matched it; kept verbatim here to measure against.           ---


def _decode(model: Any, ids: Any, mask: Any, max_new_tokens: int, temperature: float, top_p: float,
            stop: list[int], generator: Any) -> list[list[int]]:
    """Up to `max_new_tokens` tokens per left-padded row, with a KV cache. Rows that stopped leave the batch
    (with their cache) once they are an eighth of it, so a long straggler does not carry finished rows along:
    on small models most of a step's cost is proportional to its rows."""
    import torch
    from transformers import DynamicCache

    rows = ids.shape[0]
    out = torch.full((rows, max_new_tokens), stop[0], dtype=torch.long, device=ids.device)
    alive = torch.arange(rows, device=ids.device)  # the original row of each batch row
    stopped = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    stop_ids = torch.tensor(stop, device=ids.device)
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
    ).logits[:, -1]
    position = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        token = _pick(logits, temperature, top_p, generator)
        out[alive, step] = torch.where(stopped, stop_ids[0], token)
        stopped |= torch.isin(token, stop_ids)
        if step == max_new_tokens - 1 or bool(stopped.all()):
            break
        if int(stopped.sum()) * 8 >= len(alive):
            keep = (~stopped).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, token, mask, position, stopped = alive[keep], token[keep], mask[keep], position[keep], stopped[keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        logits = model(
            input_ids=token[:, None], attention_mask=mask, position_ids=position, past_key_values=cache
        ).logits[:, -1]
        position = position + 1
    return out.tolist()


def _pick(logits: Any, temperature: float, top_p: float, generator: Any) -> Any:
    """The next token per row: argmax at temperature 0, else a draw from softmax(logits / temperature),
    restricted to the top-p nucleus when top_p < 1 (inverse CDF at one uniform number per row)."""
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    cumulative = probs.cumsum(dim=-1)
    uniform = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


class HandLoopSampler:
    """BASELINE of d32e63f: the hand-written token loop (generate_tokens' batching around `_decode`), as a
    Sampler of flywheel_trainer.generation so it runs behind the same seam as the product's backends."""

    name = "hand-loop"

    def sample(self, model: Any, prompts: Sequence[list[int]], request: Any) -> list[list[list[int]]]:
        import torch
        from flywheel_trainer.generation import left_pad, until_stop

        stop = list(request.stop)
        sampling = request.temperature > 0
        draws = request.num_samples if sampling else 1
        chats_per_batch = max(1, request.batch_size // request.num_samples)
        device = next(model.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(request.seed)
        results: list[list[list[int]]] = []
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(prompts), chats_per_batch):
                    batch = [row for row in prompts[start : start + chats_per_batch] for _ in range(draws)]
                    ids, mask = left_pad(batch, request.pad_id, device)
                    new = _decode(
                        model, ids, mask, request.max_new_tokens, request.temperature, request.top_p, stop, generator
                    )
                    for row in range(0, len(new), draws):
                        samples = new[row : row + draws] if sampling else new[row : row + 1] * request.num_samples
                        results.append([until_stop(tokens, stop) for tokens in samples])
        finally:
            model.train(was_training)
        return results


# --- The measurement (bench/gpu.py reuses it for the 1B config on a GPU) ---


def backends() -> dict[str, Any]:
    """The product's backends by name, then the baseline."""
    from flywheel_trainer.generation import SAMPLERS

    return {**SAMPLERS, HandLoopSampler.name: HandLoopSampler()}


def _synchronize(model: Any) -> None:
    import torch

    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    model: Any,
    tokenizer: Any,
    chats: Sequence[Sequence[dict[str, str]]],
    sampler: Any,
    *,
    batch_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """One timed `generate_tokens` call of `sampler` over `chats`: tokens, seconds, tokens/s and the tokens."""
    from flywheel_trainer.generation import generate_tokens

    _synchronize(model)
    started = time.perf_counter()
    tokens = generate_tokens(
        model, tokenizer, chats, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
        batch_size=batch_size, sampler=sampler,
    )
    _synchronize(model)
    seconds = time.perf_counter() - started
    count = sum(len(sample) for samples in tokens for sample in samples)
    return {"tokens": count, "seconds": seconds, "tokens_per_s": count / seconds, "output": tokens}


def compare(
    model: Any,
    tokenizer: Any,
    chats: Sequence[Sequence[dict[str, str]]],
    *,
    batch_sizes: Sequence[int],
    max_new_tokens: int,
    repeats: int,
    temperature: float = 1.0,
    batches: int | None = None,
) -> list[dict[str, Any]]:
    """Per batch size and backend: median tokens/s over `repeats` alternating runs (after one warm-up call per
    backend), the tokens, and whether every backend returned the baseline's tokens. Every batch size samples all
    `chats`, or its first `batches` × batch size of them when `batches` is given."""
    samplers = backends()
    rows = []
    for sampler in samplers.values():  # warm-up: first-call allocations and lazy imports
        measure(model, tokenizer, chats[:2], sampler, batch_size=2, max_new_tokens=2, temperature=temperature)
    for batch_size in batch_sizes:
        work = chats if batches is None else chats[: batches * batch_size]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in samplers}
        for _ in range(repeats):
            for name, sampler in samplers.items():
                runs[name].append(
                    measure(model, tokenizer, work, sampler, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            temperature=temperature)
                )
        baseline = runs[HandLoopSampler.name][0]["output"]
        for name, results in runs.items():
            rows.append({
                "backend": name,
                "batch_size": batch_size,
                "prompts": len(work),
                "tokens": results[0]["tokens"],
                "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in results), 1),
                "runs_tokens_per_s": [round(r["tokens_per_s"], 1) for r in results],
                "same_tokens": all(r["output"] == baseline for r in results),
            })
    return rows


@dataclass(frozen=True)
class ModelSize:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int


MODELS = (
    ModelSize("tiny (local flywheel: sim's default world)", vocab=1024, hidden=64, layers=2, heads=4),
    ModelSize("small random Llama", vocab=4000, hidden=256, layers=4, heads=8),
)


def prompts(count: int) -> list[list[dict[str, str]]]:
    """`count` chats of the synthetic log: the character's system prompt and the first user turn."""
    from flywheel_trainer.conversation import system_prompt
    from flywheel_trainer.synthetic import synthetic_records

    records = synthetic_records(count)
    return [
        [{"role": "system", "content": system_prompt(r["character"])},
         {"role": "user", "content": r["messages"][0]["content"]}]
        for r in records
    ]


def build(size: ModelSize) -> tuple[Any, Any]:
    """A random-weights Llama of `size` with a tokenizer trained on the synthetic log (seeded: same every run)."""
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    texts = [m["content"] for chat in prompts(360) for m in chat]
    tokenizer = train_tokenizer(texts, vocab_size=size.vocab)
    return tokenizer, tiny_llama(tokenizer, hidden_size=size.hidden, num_layers=size.layers, num_heads=size.heads)


def _commit() -> str | None:
    """The checked-out commit, `+dirty` when the product or this script differ from it."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "trainer", "bench/sampler.py"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() + ("+dirty" if dirty else "")) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: as the tests run)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend and batch size (median)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts sampled per run")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "sampler.json"))
    args = parser.parse_args(argv)
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    chats = prompts(args.prompts)
    results = []
    for size in MODELS:
        tokenizer, model = build(size)
        parameters = sum(p.numel() for p in model.parameters())
        rows = compare(model, tokenizer, chats, batch_sizes=BATCH_SIZES, max_new_tokens=args.max_new_tokens,
                       repeats=args.repeats)
        results.append({"model": size.name, "parameters": parameters, "vocab": len(tokenizer),
                        "hidden": size.hidden, "layers": size.layers, "rows": rows})
    report = {
        "command": " ".join(["python", "bench/sampler.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": _commit(),
        "baseline": "hand-loop: the hand-written token loop of d32e63f (copied into this script)",
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpus": os.cpu_count(), "torch_threads": args.threads, "device": "cpu", "processor": platform.machine(),
        },
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "workload": {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "temperature": 1.0,
                     "repeats": args.repeats, "seed": 0},
        "models": results,
    }
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("sampler", args.out)  # provenance
    return 0


def print_table(report: dict[str, Any]) -> None:
    load = report["load_average"]
    print(f"{report['command']} at {report['commit']}; load {load['before'][0]} -> {load['after'][0]}")
    print(f"{'model':<45}{'batch':>6}{'backend':>11}{'tokens':>8}{'tokens/s':>10}{'vs base':>9}{'same':>6}")
    for entry in report["models"]:
        base = {r["batch_size"]: r["tokens_per_s"] for r in entry["rows"] if r["backend"] == HandLoopSampler.name}
        for row in entry["rows"]:
            ratio = row["tokens_per_s"] / base[row["batch_size"]]
            print(f"{entry['model']:<45}{row['batch_size']:>6}{row['backend']:>11}{row['tokens']:>8}"
                  f"{row['tokens_per_s']:>10.1f}{ratio:>8.2f}x{'yes' if row['same_tokens'] else 'no':>6}")


if __name__ == "__main__":
    raise SystemExit(main())
