"""Benchmark of the sampler seam (flywheel_trainer.generation): tokens/s and wasted work of the product's backend
against two baselines measured in the same run on the same models and prompts.

Backends, behind the same Sampler interface: `generate` (the product: transformers' `model.generate`, prompts
batched by length, one random stream per row, finished rows shed once they are COMPACT_SHARE of a batch),
`generate@4990565` (BASELINE: the product's backend at 4990565, copied verbatim below: generate over batches in
the caller's order, finished rows kept to the end, a shared random stream replaying the hand loop's bookkeeping)
and `hand-loop` (BASELINE: the hand-written token loop of d32e63f, also verbatim below).

Part 1, synthetic prompts: the local flywheel's tiny Llama (vocab 1024, hidden 64, 2 layers), a slightly larger
random Llama (vocab 4000, hidden 256, 4 layers) and the default world's generation 0 (a trained model that stops
at EOS; `--gen0 DIR`, else built into `--cache`), on chats of 1 to 3 exchanges (prompts of many lengths). Each
(model, batch size) samples the same prompts at temperature 1.0 with seed 0; the backends alternate,
`--repeats` times, and the median is kept.
tokens/s = new tokens returned (cut at EOS) / wall time of the `generate_tokens` call (prompt rendering
included). Work is counted with a forward hook on the model: row-steps = rows summed over every forward pass
(prefill included), of which `needed` are rows still drawing (each drawn token, EOS included, needs one);
padding = left-padding positions / prompt positions in prefill passes. `same_as_base`: the two baselines drew
the same samples (they share one random stream); `batch_invariant`: the product's samples equal its samples at
the first batch size (per-row streams); `greedy_equal`: every backend's greedy tokens are the hand loop's.

Part 1b, several samples per chat (rejection sampling, the RL band): generation 0, 48 chats × 4 samples, batch 64,
the product against the 4990565 backend: CPU seconds and work.

Part 2, traffic: one simulated day of the default world (`--people` users) answered by the generation-0 model
through flywheel_sim's ModelPolicy, once with the product's sampler and once with the
4990565 policy (its own chunking, seed per chunk) and sampler, alternating, `--traffic-repeats` times: process
CPU seconds, wall seconds, responses and the same work counts.

    python bench/sampler.py [--threads 1] [--repeats 3] [--gen0 DIR | --cache runs/cache] [--people N]
                            [--traffic-repeats 2] [--out bench/results/sampler.json]
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


def _shared_stream_batches(
    model: Any, prompts: Sequence[list[int]], request: Any, decode: Any
) -> list[list[list[int]]]:
    """The batching both baselines share: prompts in the caller's order, `num_samples` rows each (one when greedy),
    one generator seeded once for the whole call (so a row's samples depend on its batch), `decode(model, batch,
    generator)` giving each row's new tokens, cut at the first stop token."""
    import torch
    from flywheel_trainer.generation import until_stop

    sampling = request.temperature > 0
    draws = request.num_samples if sampling else 1
    per_batch = max(1, request.batch_size // request.num_samples)
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(request.seed)
    results: list[list[list[int]]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), per_batch):
                batch = [row for row in prompts[start : start + per_batch] for _ in range(draws)]
                new = decode(model, batch, generator)
                for row in range(0, len(new), draws):
                    samples = new[row : row + draws] if sampling else new[row : row + 1] * request.num_samples
                    results.append([until_stop(tokens, request.stop) for tokens in samples])
    finally:
        model.train(was_training)
    return results


class HandLoopSampler:
    """BASELINE of d32e63f: the hand-written token loop (generate_tokens' batching around `_decode`), as a
    Sampler of flywheel_trainer.generation so it runs behind the same seam as the product's backends."""

    name = "hand-loop"

    def sample(self, model: Any, prompts: Sequence[list[int]], request: Any) -> list[list[list[int]]]:
        from flywheel_trainer.generation import left_pad

        def decode(model: Any, batch: list[list[int]], generator: Any) -> Any:
            ids, mask = left_pad(batch, request.pad_id, generator.device)
            return _decode(model, ids, mask, request.max_new_tokens, request.temperature, request.top_p,
                           list(request.stop), generator)

        return _shared_stream_batches(model, prompts, request, decode)


# --- BASELINE of 4990565: the product's `generate` backend before per-row streams (verbatim but for names) ---


def _replay_draw(generator: Any, stop: Sequence[int], max_new_tokens: int) -> Any:
    """4990565's SeededDraw: one shared generator; which rows draw replays the hand loop's bookkeeping."""
    import torch
    from transformers import LogitsProcessor

    class SeededDraw(LogitsProcessor):
        def __init__(self, generator: torch.Generator, stop: Sequence[int], max_new_tokens: int) -> None:
            self.generator = generator
            self.stop = torch.tensor(list(stop), device=generator.device)
            self.max_new_tokens = max_new_tokens
            self.step = 0
            self.drawing: torch.Tensor | None = None  # rows that draw a number at this step
            self.stopped: torch.Tensor | None = None  # rows that produced a stop token

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            rows = scores.shape[0]
            if self.drawing is None or self.stopped is None:
                self.drawing = torch.ones(rows, dtype=torch.bool, device=scores.device)
                self.stopped = torch.zeros(rows, dtype=torch.bool, device=scores.device)
            else:
                self.stopped |= torch.isin(input_ids[:, -1], self.stop.to(input_ids.device))
                if int((self.stopped & self.drawing).sum()) * 8 >= int(self.drawing.sum()):
                    self.drawing &= ~self.stopped
            self.step += 1
            if self.step > self.max_new_tokens or bool(self.stopped.all()):
                return scores  # a look-ahead step generate undoes (deferred stop checks): draw nothing
            everyone = bool(self.drawing.all())
            rows_drawing = None if everyone else self.drawing.nonzero().squeeze(1)
            cumulative = torch.softmax(scores if everyone else scores[rows_drawing], dim=-1).cumsum(dim=-1)
            uniform = torch.rand((cumulative.shape[0], 1), generator=self.generator, device=scores.device)
            token = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True).squeeze(1)
            token = token.clamp(max=scores.shape[-1] - 1)
            only = torch.full_like(cumulative, float("-inf")).scatter_(1, token[:, None], 0.0)
            if everyone:
                return only
            picked = scores.clone()
            picked[rows_drawing] = only
            return picked

    return SeededDraw(generator, stop, max_new_tokens)


class ReplayGenerateSampler:
    """BASELINE of 4990565: generate over batches in the caller's order with finished rows kept, one shared
    random stream (so samples depend on the batch), as a Sampler of flywheel_trainer.generation."""

    name = "generate@4990565"

    def sample(self, model: Any, prompts: Sequence[list[int]], request: Any) -> list[list[list[int]]]:
        return _shared_stream_batches(
            model, prompts, request, lambda model, batch, generator: self._generate(model, batch, request, generator)
        )

    @staticmethod
    def _generate(model: Any, batch: list[list[int]], request: Any, generator: Any) -> list[list[int]]:
        from flywheel_trainer import generation
        from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        ids, mask = generation.left_pad(batch, request.pad_id, generator.device)
        processors = LogitsProcessorList()
        if request.temperature > 0:
            if request.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(request.temperature))
            if request.top_p < 1.0:
                processors.append(TopPLogitsWarper(request.top_p))
            processors.append(_replay_draw(generator, request.stop, request.max_new_tokens))
        config = GenerationConfig(
            max_new_tokens=request.max_new_tokens, do_sample=False, num_beams=1, eos_token_id=list(request.stop),
            pad_token_id=request.pad_id, use_cache=True, min_new_tokens=0, repetition_penalty=1.0,
            no_repeat_ngram_size=0, renormalize_logits=False, remove_invalid_values=False,
            return_dict_in_generate=False,
        )
        on_cpu = generator.device.type == "cpu"
        cache = generation.growing_cache(model, request.max_new_tokens + 1) if on_cpu else None
        out = model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=processors,
            synced_gpus=False, **({"past_key_values": cache} if cache is not None else {}),
        )
        return out[:, ids.shape[1] :].tolist()


def replay_policy(model_dir: Any, world: Any, *, name: str) -> Any:
    """BASELINE of 4990565: flywheel_sim's ModelPolicy as it was (chats sorted by characters, one sampler call
    per `batch_size` of them, seeded seed + start) with the 4990565 sampler."""
    from flywheel_sim.policy import ModelPolicy, recent_context
    from flywheel_trainer.generation import generate

    class ReplayPolicy(ModelPolicy):
        def _generate(self, chats: Sequence[Any], seed: int) -> list[str]:
            contexts = [recent_context(c, self.context_exchanges) for c in chats]
            order = sorted(range(len(contexts)), key=lambda i: sum(len(m["content"]) for m in contexts[i]))
            responses: list[str] = [""] * len(contexts)
            for start in range(0, len(order), self.batch_size):
                indices = order[start : start + self.batch_size]
                samples = generate(
                    self._model, self._tokenizer, [contexts[i] for i in indices],
                    max_new_tokens=self.max_new_tokens, temperature=self.temperature, num_samples=1,
                    seed=seed + start, batch_size=self.batch_size, sampler=ReplayGenerateSampler(),
                )
                for i, sample in zip(indices, samples, strict=True):
                    responses[i] = sample[0]
            return responses

    s = world.serving
    return ReplayPolicy(model_dir, name=name, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                        batch_size=s.batch_size, context_exchanges=s.context_exchanges, threads=s.threads)


# --- The measurement (bench/gpu.py reuses it for the 1B config on a GPU) ---


def backends() -> dict[str, Any]:
    """The product's backends by name, then the baselines."""
    from flywheel_trainer.generation import SAMPLERS

    return {**SAMPLERS, ReplayGenerateSampler.name: ReplayGenerateSampler(), HandLoopSampler.name: HandLoopSampler()}


BASELINES = (ReplayGenerateSampler.name, HandLoopSampler.name)


class WorkCounter:
    """Counts a model's forward passes (a forward pre-hook): rows summed over passes (row-steps), and in prefill
    passes (more than one new position) the prompt positions and how many of them are left padding."""

    def __init__(self, model: Any) -> None:
        self.row_steps = 0
        self.prompt_positions = 0
        self.padding = 0
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = args[0]
        rows, width = ids.shape[:2]
        self.row_steps += rows
        mask = kwargs.get("attention_mask")
        if width > 1 and mask is not None and mask.dim() == 2:
            self.prompt_positions += rows * width
            self.padding += int((mask[:, -width:] == 0).sum())

    def reading(self) -> dict[str, int]:
        return {"row_steps": self.row_steps, "prompt_positions": self.prompt_positions, "padding": self.padding}

    def close(self) -> None:
        self._hook.remove()


def _synchronize(model: Any) -> None:
    import torch

    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def _drawn(tokens: list[list[list[int]]], max_new_tokens: int) -> int:
    """Tokens the rows drew: what came back, plus the EOS of each row that stopped before max_new_tokens."""
    return sum(len(t) + (len(t) < max_new_tokens) for samples in tokens for t in samples)


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
    """One timed `generate_tokens` call of `sampler` over `chats`: tokens, seconds, CPU seconds, tokens/s, the
    work (WorkCounter; `needed` row-steps: tokens drawn) and the tokens."""
    from flywheel_trainer.generation import generate_tokens

    counter = WorkCounter(model)
    try:
        _synchronize(model)
        started, cpu = time.perf_counter(), time.process_time()
        tokens = generate_tokens(
            model, tokenizer, chats, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            batch_size=batch_size, sampler=sampler,
        )
        _synchronize(model)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    finally:
        counter.close()
    count = sum(len(sample) for samples in tokens for sample in samples)
    return {"tokens": count, "seconds": seconds, "cpu_seconds": cpu_seconds, "tokens_per_s": count / seconds,
            **counter.reading(), "needed_row_steps": _drawn(tokens, max_new_tokens), "output": tokens}


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
    backend), the work of one run, and the checks of the module docstring. Every batch size samples all `chats`,
    or its first `batches` × batch size of them when `batches` is given."""
    samplers = backends()
    product = next(iter(samplers))
    rows = []
    for sampler in samplers.values():  # warm-up: first-call allocations and lazy imports
        measure(model, tokenizer, chats[:2], sampler, batch_size=2, max_new_tokens=2, temperature=temperature)
    reference: Any = None  # the product's samples at the first batch size
    for batch_size in batch_sizes:
        work = chats if batches is None else chats[: batches * batch_size]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in samplers}
        for _ in range(repeats):
            for name, sampler in samplers.items():
                runs[name].append(
                    measure(model, tokenizer, work, sampler, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            temperature=temperature)
                )
        greedy = {name: measure(model, tokenizer, work, sampler, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, temperature=0)["output"]
                  for name, sampler in samplers.items()}
        ours = runs[product][0]["output"]
        reference = ours if reference is None else reference
        common = min(len(ours), len(reference))  # with `batches`, a larger batch samples more chats after these
        for name, results in runs.items():
            first = results[0]
            rows.append({
                "backend": name,
                "batch_size": batch_size,
                "prompts": len(work),
                "tokens": first["tokens"],
                "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in results), 1),
                "runs_tokens_per_s": [round(r["tokens_per_s"], 1) for r in results],
                "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in results), 3),
                "row_steps": first["row_steps"],
                "needed_row_steps": first["needed_row_steps"],
                "useful_share": round(first["needed_row_steps"] / first["row_steps"], 3),
                "prompt_positions": first["prompt_positions"],
                "padding_share": round(first["padding"] / max(1, first["prompt_positions"]), 3),
                "deterministic": all(r["output"] == first["output"] for r in results),
                "greedy_equal": greedy[name] == greedy[HandLoopSampler.name],
                **({"batch_invariant": ours[:common] == reference[:common]} if name == product else
                   {"same_as_base": first["output"] == runs[HandLoopSampler.name][0]["output"]}),
            })
    return rows


def several_samples(model: Any, tokenizer: Any, chats: Sequence[Sequence[dict[str, str]]], *, num_samples: int,
                    batch_size: int, max_new_tokens: int, repeats: int) -> dict[str, Any]:
    """Part 1b: `num_samples` samples per chat (what rejection sampling and the RL band ask), the product against
    the 4990565 backend, alternating: process CPU seconds (median) and the work of one run."""
    from flywheel_trainer.generation import generate_tokens

    samplers = {"generate": "generate", ReplayGenerateSampler.name: ReplayGenerateSampler()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in samplers}
    for _ in range(repeats):
        for name, sampler in samplers.items():
            counter = WorkCounter(model)
            try:
                cpu = time.process_time()
                tokens = generate_tokens(model, tokenizer, chats, max_new_tokens=max_new_tokens, temperature=1.0,
                                         num_samples=num_samples, batch_size=batch_size, seed=0, sampler=sampler)
                cpu_seconds = time.process_time() - cpu
            finally:
                counter.close()
            runs[name].append({"cpu_seconds": cpu_seconds, "tokens": sum(len(t) for r in tokens for t in r),
                               **counter.reading()})
    rows = [{"backend": name, "tokens": results[0]["tokens"],
             "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in results), 3),
             "runs_cpu_seconds": [round(r["cpu_seconds"], 3) for r in results],
             "row_steps": results[0]["row_steps"], "prompt_positions": results[0]["prompt_positions"],
             "padding_share": round(results[0]["padding"] / max(1, results[0]["prompt_positions"]), 3)}
            for name, results in runs.items()]
    return {"prompts": len(chats), "num_samples": num_samples, "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "repeats": repeats, "rows": rows}


def traffic(model_dir: Path, *, people: int | None, repeats: int) -> dict[str, Any]:
    """Part 2: one simulated day of the default world answered by generation 0, with the product's policy and
    sampler and with the 4990565 ones, alternating: CPU and wall seconds (median), responses and work."""
    import yaml
    from flywheel_sim import DEFAULT_WORLD, ModelPolicy, parse_world, simulate_traffic

    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    if people is not None:
        data["users"]["size"] = people
    world = parse_world(data)
    policies = {"generate": ModelPolicy.for_world(model_dir, world, name="gen0"),
                ReplayGenerateSampler.name: replay_policy(model_dir, world, name="gen0")}
    for policy in policies.values():
        policy([[{"role": "user", "content": "hi"}]], seed=0)  # load the model outside the timing
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in policies}
    for _ in range(repeats):
        for name, policy in policies.items():
            counter = WorkCounter(policy._model)
            try:
                started, cpu = time.perf_counter(), time.process_time()
                result = simulate_traffic(world, {"control": policy}, days=1, seed=0)
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
            finally:
                counter.close()
            runs[name].append({"seconds": seconds, "cpu_seconds": cpu_seconds, "responses": result.responses,
                               **counter.reading()})
    rows = []
    for name, results in runs.items():
        first = results[0]
        rows.append({
            "backend": name,
            "responses": first["responses"],
            "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in results), 2),
            "runs_cpu_seconds": [round(r["cpu_seconds"], 2) for r in results],
            "seconds": round(statistics.median(r["seconds"] for r in results), 2),
            "runs_seconds": [round(r["seconds"], 2) for r in results],
            "row_steps": first["row_steps"],
            "prompt_positions": first["prompt_positions"],
            "padding_share": round(first["padding"] / max(1, first["prompt_positions"]), 3),
        })
    return {"world": "default", "people": world.users.size, "days": 1, "seed": 0, "repeats": repeats,
            "model": str(model_dir), "rows": rows}


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
    """`count` chats of the synthetic log: the character's system prompt and 1 to 3 exchanges ending with a user
    turn (earlier records' exchanges before the chat's own first user turn), so prompts have many lengths."""
    from flywheel_trainer.conversation import system_prompt
    from flywheel_trainer.synthetic import synthetic_records

    records = synthetic_records(count + 2)
    chats = []
    for index in range(count):
        record = records[index + 2]
        earlier = [m for r in records[index + 2 - index % 3 : index + 2] for m in r["messages"][:2]]
        chats.append([{"role": "system", "content": system_prompt(record["character"])}, *earlier,
                      {"role": "user", "content": record["messages"][0]["content"]}])
    return chats


def build(size: ModelSize) -> tuple[Any, Any]:
    """A random-weights Llama of `size` with a tokenizer trained on the synthetic log (seeded: same every run)."""
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    texts = [m["content"] for chat in prompts(360) for m in chat]
    tokenizer = train_tokenizer(texts, vocab_size=size.vocab)
    return tokenizer, tiny_llama(tokenizer, hidden_size=size.hidden, num_layers=size.layers, num_heads=size.heads)


def _commit() -> str | None:
    """The checked-out commit, `+dirty` when the product or this script differ from it."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "trainer", "sim", "bench/sampler.py"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() + ("+dirty" if dirty else "")) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: as the tests run)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend and batch size (median)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts sampled per run")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--gen0", help="the default world's generation-0 model directory (a gen0-*/ of "
                        "flywheel_sim's cache); default: built into (or reused from) --cache")
    parser.add_argument("--cache", default=str(REPO / "runs" / "cache"),
                        help="generation-0 cache of make run, where the default world's build is looked up or made")
    parser.add_argument("--people", type=int, help="simulated users of part 2 (default: the world's, 10000)")
    parser.add_argument("--traffic-repeats", type=int, default=2, help="simulated days per backend in part 2")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "sampler.json"))
    args = parser.parse_args(argv)
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    chats = prompts(args.prompts)
    results = []
    gen0 = Path(args.gen0) if args.gen0 else _generation0(Path(args.cache))
    models: list[tuple[str, Any]] = [(size.name, lambda size=size: build(size)) for size in MODELS]
    models.append(("generation 0 of the default world (trained: stops at EOS)", lambda: _load(gen0)))
    for name, make in models:
        tokenizer, model = make()
        parameters = sum(p.numel() for p in model.parameters())
        rows = compare(model, tokenizer, chats, batch_sizes=BATCH_SIZES, max_new_tokens=args.max_new_tokens,
                       repeats=args.repeats)
        results.append({"model": name, "parameters": parameters, "vocab": len(tokenizer),
                        "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers, "rows": rows})
    samples = several_samples(model, tokenizer, prompts(48), num_samples=4, batch_size=64, max_new_tokens=40,
                              repeats=args.repeats)  # the last model: generation 0
    report = {
        "command": " ".join(["python", "bench/sampler.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": _commit(),
        "baseline": "generate@4990565: the product's backend before per-row streams; hand-loop: the hand-written "
                    "token loop of d32e63f (both copied into this script)",
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpus": os.cpu_count(), "torch_threads": args.threads, "device": "cpu", "processor": platform.machine(),
        },
        "workload": {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "temperature": 1.0,
                     "repeats": args.repeats, "seed": 0},
        "models": results,
        "several_samples": {"model": results[-1]["model"], **samples},
    }
    report["traffic"] = traffic(gen0, people=args.people, repeats=args.traffic_repeats)
    report["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("sampler", args.out)  # provenance
    return 0


def _generation0(cache: Path) -> Path:
    """The default world's generation-0 model directory, built (minutes) unless `cache` holds it."""
    import yaml
    from flywheel_sim import DEFAULT_WORLD, build_generation0, parse_world

    return build_generation0(parse_world(yaml.safe_load(DEFAULT_WORLD.read_text())), cache)


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()


def print_table(report: dict[str, Any]) -> None:
    load = report["load_average"]
    print(f"{report['command']} at {report['commit']}; load {load['before'][0]} -> {load['after'][0]}")
    print(f"{'model':<45}{'batch':>6}{'backend':>18}{'tokens':>8}{'tokens/s':>10}{'vs 4990565':>11}"
          f"{'row-steps':>10}{'useful':>8}{'padding':>8}  checks")
    for entry in report["models"]:
        base = {r["batch_size"]: r["tokens_per_s"] for r in entry["rows"]
                if r["backend"] == ReplayGenerateSampler.name}
        for row in entry["rows"]:
            ratio = row["tokens_per_s"] / base[row["batch_size"]]
            checks = [key for key in ("batch_invariant", "same_as_base", "greedy_equal", "deterministic")
                      if row.get(key)]
            failed = [key for key in ("batch_invariant", "same_as_base", "greedy_equal", "deterministic")
                      if key in row and not row[key]]
            print(f"{entry['model'][:44]:<45}{row['batch_size']:>6}{row['backend']:>18}{row['tokens']:>8}"
                  f"{row['tokens_per_s']:>10.1f}{ratio:>10.2f}x{row['row_steps']:>10}{row['useful_share']:>8.2f}"
                  f"{row['padding_share']:>8.2f}  {' '.join(checks)}{' NOT ' + ' '.join(failed) if failed else ''}")
    if "several_samples" in report:
        m = report["several_samples"]
        print(f"\n{m['num_samples']} samples per chat, {m['prompts']} chats, batch {m['batch_size']}, {m['model']}")
        print(f"{'backend':<18}{'tokens':>8}{'CPU s':>8}{'row-steps':>11}{'prefill pos':>12}{'padding':>8}")
        for row in m["rows"]:
            print(f"{row['backend']:<18}{row['tokens']:>8}{row['cpu_seconds']:>8.2f}{row['row_steps']:>11}"
                  f"{row['prompt_positions']:>12}{row['padding_share']:>8.2f}")
    if "traffic" in report:
        t = report["traffic"]
        print(f"\ntraffic: one simulated day of the default world ({t['people']} users) answered by generation 0")
        print(f"{'backend':<18}{'responses':>10}{'CPU s':>8}{'runs':>16}{'wall s':>8}{'row-steps':>11}{'padding':>8}")
        for row in t["rows"]:
            runs = "/".join(f"{x:.1f}" for x in row["runs_cpu_seconds"])
            print(f"{row['backend']:<18}{row['responses']:>10}{row['cpu_seconds']:>8.1f}{runs:>16}{row['seconds']:>8.1f}"
                  f"{row['row_steps']:>11}{row['padding_share']:>8.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
