"""Generation 0: a tokenizer and a tiny Llama pretrained on the world's synthetic dialogues.

Built once per content hash (world, settings, code) into `cache_dir/gen0-<hash>/`, written atomically
(temporary directory + rename), loadable with `AutoModelForCausalLM` / `AutoTokenizer`. The loss covers
assistant tokens only (the chat template's generation markers), so the model learns to answer, not to talk
like a user. Sized to train in a minute or two on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flywheel_sim.corpus import build_corpus
from flywheel_sim.world import World

Progress = Callable[[int, int, float], None]
META_FILE = "sim_gen0.json"
_CODE_FILES = ("grammar.py", "corpus.py", "generation0.py", "world.py")
WARMUP_STEPS = 20


@dataclass(frozen=True)
class Gen0Settings:
    """What a build depends on besides the world (overrides for quick builds in tests)."""

    steps: int
    seed: int


def _code_version() -> str:
    """Digest of the code that shapes generation 0 (ours and the trainer's tiny-model helpers)."""
    import flywheel_trainer.tinymodel as tinymodel
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE_FILES:
        digest.update((here / name).read_bytes())
    digest.update(Path(tinymodel.__file__).read_bytes())
    digest.update(f"{transformers.__version__}|{tokenizers.__version__}|{torch.__version__}".encode())
    return digest.hexdigest()


def generation0_key(world: World, settings: Gen0Settings) -> str:
    """Content hash of a build: the world's characters and generation-0 settings, overrides, code version."""
    payload = {
        "characters": [c.model_dump(mode="json") for c in world.characters],
        "generation0": world.generation0.model_dump(mode="json"),
        "steps": settings.steps,
        "seed": settings.seed,
        "code": _code_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_generation0(
    world: World,
    cache_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """The generation-0 model directory for `world`, built unless a build with the same content hash exists.

    `steps` overrides world.generation0.steps (tests build smaller models); `seed` overrides world.seed;
    `progress(step, total, loss)` is called after every optimizer step (e.g. to print progress lines).
    """
    settings = Gen0Settings(
        steps=world.generation0.steps if steps is None else steps, seed=world.seed if seed is None else seed
    )
    if settings.steps < 1:
        raise ValueError(f"steps must be at least 1; got {settings.steps}")
    cache = Path(cache_dir)
    key = generation0_key(world, settings)
    target = cache / f"gen0-{key[:16]}"
    if (target / META_FILE).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gen0-", dir=cache))
    try:
        meta = _train(world, settings, tmp, progress)
        meta["key"] = key
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / META_FILE).exists():  # not a concurrent build of the same key: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _encode(tokenizer: Any, chats: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (assistant tokens only; -100 elsewhere) of every chat."""
    encoded = []
    for chat in chats:
        out = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])
        mask = list(out["assistant_masks"])
        encoded.append((ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]))
    return encoded


def _train(world: World, settings: Gen0Settings, out: Path, progress: Progress | None) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a ~100k-parameter model gains nothing from more; two threads spin on busy CPUs
    try:
        return _train_single_thread(world, settings, out, progress)
    finally:
        torch.set_num_threads(threads)


def _train_single_thread(world: World, settings: Gen0Settings, out: Path, progress: Progress | None) -> dict[str, Any]:
    import torch
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    g = world.generation0
    corpus = build_corpus(world, settings.seed)
    texts = [m["content"] for chat in corpus.chats for m in chat]
    tokenizer = train_tokenizer(texts, vocab_size=g.vocab_size)
    model = tiny_llama(tokenizer, hidden_size=g.hidden_size, num_layers=g.num_layers, seed=settings.seed)
    examples = _encode(tokenizer, corpus.chats)
    if not any(any(label != -100 for label in labels) for _, labels in examples):
        raise RuntimeError("the tokenizer's chat template marks no assistant tokens; generation 0 cannot learn")

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng([settings.seed, 1234])
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.learning_rate, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        return max(0.05, 1.0 - (step - WARMUP_STEPS) / max(1, settings.steps - WARMUP_STEPS))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    pad = tokenizer.pad_token_id
    order = rng.permutation(len(examples))
    cursor = 0
    losses = []
    model.train()
    for step in range(settings.steps):
        if cursor + g.batch_size > len(order):
            order, cursor = rng.permutation(len(examples)), 0
        batch = [examples[i] for i in order[cursor : cursor + g.batch_size]]
        cursor += g.batch_size
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, settings.steps, losses[-1])
    model.eval()
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a library call, not a CLI: no "Writing model shards" bar
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": settings.steps,
        "seed": settings.seed,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "first_loss": losses[0],
        "final_loss": float(np.mean(tail)),
        "corpus": corpus.stats,
    }
