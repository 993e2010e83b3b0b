"""Generation 0: a tokenizer and a tiny Llama pretrained on the world's synthetic dialogues.

Built once per content hash (world, settings, code) into `cache_dir/gen0-<hash>/`, written atomically
(temporary directory + rename), loadable with `AutoModelForCausalLM` / `AutoTokenizer`. The loss covers
assistant tokens only (the chat template's generation markers), so the model learns to answer, not to talk
like a user. Sized to train in a minute or two on two CPU cores.

The training runs in a child process with pinned CPU kernels and one thread (flywheel_sim.numerics), so the same
content hash gives the same weights on every x86-64 machine with AVX2; `sim_gen0.json` records the kernels it
ran with and a digest of the weights (`weights_sha256`), so two machines can compare their builds bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
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
_CODE_FILES = ("grammar.py", "corpus.py", "generation0.py", "world.py", "numerics.py")
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


PROGRESS_PREFIX = "gen0-progress "
BUILD_FILE = ".build.json"


def _train(world: World, settings: Gen0Settings, out: Path, progress: Progress | None) -> dict[str, Any]:
    """Train in a child process on pinned kernels and one thread (`python -m flywheel_sim.generation0`): the
    variables that pin them act only before torch is imported, and this process may have imported it already."""
    from flywheel_sim.numerics import pinned_env

    build = out / BUILD_FILE
    build.write_text(json.dumps({"world": world.model_dump(mode="json", by_alias=True), "steps": settings.steps,
                                 "seed": settings.seed}))
    lines: list[str] = []
    with subprocess.Popen([sys.executable, "-m", "flywheel_sim.generation0", str(out)], env=pinned_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(PROGRESS_PREFIX):
                if progress is not None:
                    step, total, loss = line[len(PROGRESS_PREFIX):].split()
                    progress(int(step), int(total), float(loss))
            else:
                lines = [*lines[-40:], line.rstrip()]
    if child.returncode:
        raise RuntimeError(f"generation 0's build in a child process failed (exit {child.returncode}):\n"
                           + "\n".join(lines))
    meta = json.loads(build.read_text())["meta"]
    build.unlink()
    return meta


def _build_in_this_process(out: Path) -> None:
    """The child's side of `_train`: read the build request from `out`, train on one thread, write the result."""
    import torch

    from flywheel_sim.numerics import kernels
    from flywheel_sim.world import parse_world

    torch.set_num_threads(1)  # a ~100k-parameter model gains nothing from more, and a split reduction sums otherwise
    build = out / BUILD_FILE
    request = json.loads(build.read_text())
    settings = Gen0Settings(steps=request["steps"], seed=request["seed"])

    def report(step: int, total: int, loss: float) -> None:
        print(f"{PROGRESS_PREFIX}{step} {total} {loss!r}", flush=True)

    meta = _train_single_thread(parse_world(request["world"], source=str(build)), settings, out, report)
    meta["kernels"] = kernels()
    build.write_text(json.dumps({"meta": meta}))


def weights_digest(model: Any) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes and bytes, in name order): equal bits, equal digest."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


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
        "weights_sha256": weights_digest(model),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "first_loss": losses[0],
        "final_loss": float(np.mean(tail)),
        "corpus": corpus.stats,
    }


if __name__ == "__main__":
    _build_in_this_process(Path(sys.argv[1]))
