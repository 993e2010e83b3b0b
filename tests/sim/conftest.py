"""Fixtures of the simulator tests: the default world, its raw mapping, and one generation-0 build per
session (fewer dialogues and steps than the default, so the whole suite stays within its time budget)."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flywheel_sim import DEFAULT_WORLD, World, build_generation0, load_world, parse_world

TEST_GEN0 = {"dialogues": 600, "steps": 200}
"""A smaller generation 0 than the default world's: enough to speak the world's language, built in seconds."""


@pytest.fixture(scope="session")
def world() -> World:
    return load_world(DEFAULT_WORLD)


@pytest.fixture
def world_data() -> dict[str, Any]:
    """A fresh, mutable copy of the default world file's mapping."""
    return copy.deepcopy(yaml.safe_load(DEFAULT_WORLD.read_text()))


@pytest.fixture(scope="session")
def gen0_world() -> World:
    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    data["generation0"].update(TEST_GEN0)
    return parse_world(data)


@pytest.fixture(scope="session")
def gen0_dir(gen0_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_generation0(gen0_world, tmp_path_factory.mktemp("gen0-cache"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two spin against each other on a busy two-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
