"""Progress lines on stdout, the protocol the local runner reads (docs/local.md):

    {"progress": {"step": 12, "total": 30, "phase": "train", "metrics": {"loss": 0.42}}}

One JSON object per line, flushed; anything else on stdout is plain log. Only the main process prints.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def report_progress(step: int, total: int, phase: str, metrics: Mapping[str, Any] | None = None) -> None:
    """Print one progress line (finite numeric metrics only)."""
    if not _is_main_process():
        return
    numbers = {
        k: float(v)
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    line = {"step": int(step), "total": max(int(total), 1), "phase": phase}
    if numbers:
        line["metrics"] = numbers
    print(json.dumps({"progress": line}), flush=True)


def attach_progress(trainer: Any, phase: str = "train") -> Any:
    """Make a transformers Trainer print progress lines at every log step instead of raw log dicts."""
    from transformers import PrinterCallback, TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any
        ) -> None:
            report_progress(state.global_step, state.max_steps, phase, logs)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressCallback())
    return trainer


PROGRESS_CHUNK = 32
"""Prompts per progress line in sampling loops."""


def generate_reporting(
    model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], *, phase: str, **options: Any
) -> list[list[str]]:
    """flywheel_trainer.generation.generate over `chats` in chunks, one progress line per chunk; `options` are
    generate's keyword arguments (the stage's `sampler` backend among them). Chunk i is seeded with seed + i, so
    the same arguments give the same responses. With several ranks each samples its
    share of the chats and every rank gets all responses in order (flywheel_trainer.placement.across_ranks)."""
    from flywheel_trainer.generation import generate
    from flywheel_trainer.placement import across_ranks, compute_autocast

    seed = options.pop("seed", 0)

    def sample(share: Any) -> list[list[str]]:
        results: list[list[str]] = []
        chunks = range(0, len(share), PROGRESS_CHUNK)
        for index, start in enumerate(chunks):
            with compute_autocast():
                batch = share[start : start + PROGRESS_CHUNK]
                results.extend(generate(model, tokenizer, batch, seed=seed + index, **options))
            report_progress(index + 1, len(chunks), phase)
        return results

    return across_ranks(chats, sample)
