"""Which exporter shard owns a user: the published routing hash that writers and exporters share.

With `exporter.shards: N` the chart runs N exporter replicas (a StatefulSet, pods `…-exporter-0` … `-N-1`).
Shard `i` holds the users with `shard_of(user, N) == i`, and refuses (421) events of any other user, so a user's
state lives in exactly one shard: every per-user sum (depth², CUPED cross products, the guardrails' per-user
sums), the sample-ratio counts and the crossover count add up exactly over shards, and the gate's PromQL
templates already `sum()` the series of all of them.

The hash is the first 8 bytes of SHA-256 of the user id (UTF-8), read big-endian, modulo N; it depends on the
user alone (not on the generation), so a writer can route without parsing the event. Test vectors are in
docs/metrics.md and tests/gate/test_shards.py; any language can reproduce them:

    int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") % shards
"""

from __future__ import annotations

import hashlib
import re

MAX_SHARDS = 1024


def user_hash(user: str) -> int:
    """The 64-bit routing hash of a user id."""
    return int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:8], "big")


def shard_of(user: str, shards: int) -> int:
    """The shard (0 … shards-1) that owns `user`."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be a whole number from 1 to {MAX_SHARDS}; got {shards!r}")
    return user_hash(user) % shards


def parse_shard_index(text: str, shards: int) -> int:
    """`--shard-index`: a number, or a StatefulSet pod name whose ordinal suffix is the index (`x-exporter-3`)."""
    match = re.fullmatch(r"(?:.*-)?(\d+)", text.strip())
    if match is None:
        raise ValueError(
            f"--shard-index {text!r} is neither a number nor a StatefulSet pod name ending in -<ordinal>; "
            "give e.g. --shard-index=2 or --shard-index=$(POD_NAME)"
        )
    index = int(match.group(1))
    if not 0 <= index < shards:
        raise ValueError(f"--shard-index {text!r} gives shard {index}, outside 0 … {shards - 1} of --shards {shards}")
    return index
