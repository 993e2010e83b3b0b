"""Near-duplicate removal by MinHash over word shingles with locality-sensitive hashing (LSH).

The report clusters conversations by embedding to drop near-duplicates; MinHash estimates the Jaccard
similarity of word 5-gram sets without a model, so curate stays fast on CPU and deterministic. LSH bands
propose candidate pairs, the MinHash estimate confirms them, and connected pairs form one cluster of which
the first conversation (in input order) is kept.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from flywheel_trainer.style import words

NUM_PERMUTATIONS = 128
SHINGLE_WORDS = 5
_PRIME = (1 << 61) - 1


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[str]:
    """Word `size`-grams of the lower-cased text; a text shorter than `size` words is one shingle."""
    tokens = [w.lower() for w in words(text)]
    if len(tokens) <= size:
        return {" ".join(tokens)}
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def _shingle_hashes(items: set[str]) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in sorted(items)],
        dtype=np.uint64,
    )


def minhash_signatures(texts: Sequence[str], *, num_perm: int = NUM_PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """One MinHash signature (num_perm values) per text, from universal hashes (a·x + b) mod p."""
    rng = np.random.default_rng(seed)
    # 32-bit shingle hashes and 31-bit coefficients keep a·x + b below 2^64: exact in uint64.
    a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64)
    signatures = np.empty((len(texts), num_perm), dtype=np.uint64)
    for row, text in enumerate(texts):
        hashes = _shingle_hashes(shingles(text))
        signatures[row] = ((np.outer(hashes, a) + b) % np.uint64(_PRIME)).min(axis=0)
    return signatures


def _bands_for(threshold: float, num_perm: int) -> int:
    """The band count whose LSH S-curve midpoint (1/b)^(1/r) is closest to the threshold."""
    best, best_gap = 1, float("inf")
    for bands in range(1, num_perm + 1):
        if num_perm % bands:
            continue
        rows = num_perm // bands
        gap = abs((1 / bands) ** (1 / rows) - threshold)
        if gap < best_gap:
            best, best_gap = bands, gap
    return best


def near_duplicate_clusters(texts: Sequence[str], *, threshold: float, seed: int = 0) -> list[int]:
    """Cluster id per text (the index of the cluster's first text); texts whose estimated Jaccard similarity
    reaches `threshold` share a cluster, transitively."""
    n = len(texts)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n == 0:
        return []
    signatures = minhash_signatures(texts, seed=seed)
    num_perm = signatures.shape[1]
    bands = _bands_for(max(threshold, 1e-6), num_perm)
    rows = num_perm // bands
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i in range(n):
            buckets[signatures[i, band * rows : (band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            candidates.update(pairwise(members))
    for i, j in sorted(candidates):
        if float(np.mean(signatures[i] == signatures[j])) >= threshold:
            root_i, root_j = find(i), find(j)
            if root_i != root_j:
                parent[max(root_i, root_j)] = min(root_i, root_j)
    return [find(i) for i in range(n)]


def keep_first_of_clusters(texts: Sequence[str], *, threshold: float, seed: int = 0) -> list[bool]:
    """Whether each text is kept: the first of its near-duplicate cluster is, the others are not."""
    clusters = near_duplicate_clusters(texts, threshold=threshold, seed=seed)
    return [cluster == i for i, cluster in enumerate(clusters)]
