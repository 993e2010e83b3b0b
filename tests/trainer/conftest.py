"""Shared fixtures of the trainer tests: a synthetic conversation log whose good responses are clearly
separable from bad ones, and a tiny parent policy (tokenizer trained on the spot + a Llama-config model
briefly trained on the log) that says both kinds, so the stages have something real to learn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flywheel_trainer.synthetic import build_tiny_parent, synthetic_records, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synthetic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean synthetic traffic log (JSONL) of 360 conversations."""
    return write_jsonl(synthetic_records(360), tmp_path_factory.mktemp("logs") / "traffic.jsonl")


@pytest.fixture(scope="session")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory, single_torch_thread: None) -> Path:
    """A saved tiny Llama-config parent policy that says both good and bad replies."""
    return build_tiny_parent(tmp_path_factory.mktemp("parent") / "policy")


@pytest.fixture(scope="session")
def single_torch_thread() -> Any:
    """One intra-op thread for the tiny-model tests: on a busy 2-core machine torch's thread pool spins and
    runs a tiny model an order of magnitude slower than one thread does."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
