"""Stratified sampling that keeps each stratum's share (e.g. per character), deterministic for a seed."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def stratified_sample(items: Sequence[T], size: int, *, stratum: Callable[[T], Hashable], seed: int) -> list[T]:
    """`size` items whose strata keep their proportions (largest-remainder rounding); input order is kept.

    All items when `size` is at least their number.
    """
    if size >= len(items):
        return list(items)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[stratum(item)].append(index)
    keys = sorted(groups, key=repr)
    exact = {key: size * len(groups[key]) / len(items) for key in keys}
    quota = {key: int(exact[key]) for key in keys}
    by_remainder = sorted(keys, key=lambda key: (-(exact[key] - quota[key]), repr(key)))
    for key in by_remainder[: size - sum(quota.values())]:
        quota[key] += 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for key in keys:
        chosen.extend(rng.sample(groups[key], quota[key]))
    return [items[index] for index in sorted(chosen)]


def stratified_split(
    items: Sequence[T], fraction: float, *, stratum: Callable[[T], Hashable], seed: int
) -> tuple[list[T], list[T]]:
    """(kept, held_out): about `fraction` of each stratum held out, at least one item held out when fraction > 0
    and there are two or more items, so an evaluation set is never silently empty."""
    size = round(len(items) * fraction)
    if fraction > 0 and len(items) >= 2:
        size = max(size, 1)
    held = stratified_sample(items, size, stratum=stratum, seed=seed) if size else []
    held_ids = {id(item) for item in held}
    return [item for item in items if id(item) not in held_ids], held


def grouped_split(
    items: Sequence[T],
    fraction: float,
    *,
    group: Callable[[T], Hashable],
    stratum: Callable[[T], Hashable],
    seed: int,
) -> tuple[list[T], list[T]]:
    """(kept, held_out) with every group wholly on one side: about `fraction` of each stratum's groups held out
    (at least one group when fraction > 0 and there are two or more). Conversations that open with the same
    message share their first prompt; split one by one, the held-out copies of the world's few openings would
    make every training turn at those openings an evaluation prompt, and most preference pairs would be lost."""
    members: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        members[group(item)].append(index)
    keys = sorted(members, key=repr)
    _, held_keys = stratified_split(keys, fraction, stratum=lambda key: stratum(items[members[key][0]]), seed=seed)
    held = {index for key in held_keys for index in members[key]}
    return [item for i, item in enumerate(items) if i not in held], [item for i, item in enumerate(items) if i in held]
