"""Exporter shards (issue 30): the published routing hash, refusal of misrouted events, and sums that add up
exactly over shards (SRM counts, crossovers, every per-user sum), as the gate's `sum()` queries read them."""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.exporter import ExporterServer, make_server
from flywheel_operator.gate.shards import parse_shard_index, shard_of, user_hash
from flywheel_operator.gate.store import SqliteStore
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.gate.test_store import engagement, exposure

VECTORS = [
    # user, 64-bit hash, shard for 2, 3, 4, 8, 16 shards (docs/metrics.md publishes the same table)
    ("alice", 0x2BD806C97F0E00AF, [1, 2, 3, 7, 15]),
    ("user-1", 0xC6C289E49E9C05B2, [0, 0, 2, 2, 2]),
    ("user-2", 0xD92B69CFB82CECAB, [1, 1, 3, 3, 11]),
    ("7f3c9a2e-1b4d-4c8e-9f1a-2b3c4d5e6f70", 0x189D2650E740A1F4, [0, 0, 0, 4, 4]),
    ("ünïcode-用户", 0x6E8C8FBB4B6C75A8, [0, 1, 0, 0, 8]),
]


@pytest.mark.parametrize(("user", "hashed", "shards"), VECTORS)
def test_the_published_routing_vectors(user: str, hashed: int, shards: list[int]) -> None:
    """Writers in any language reproduce these: the first 8 bytes of SHA-256 of the UTF-8 user id, big-endian."""
    assert user_hash(user) == hashed
    assert [shard_of(user, n) for n in (2, 3, 4, 8, 16)] == shards
    assert shard_of(user, 1) == 0


def test_shards_split_users_evenly_and_indexes_parse() -> None:
    counts = defaultdict(int)
    for index in range(20_000):
        counts[shard_of(f"user-{index}", 4)] += 1
    assert set(counts) == {0, 1, 2, 3} and all(4_700 < n < 5_300 for n in counts.values())
    assert parse_shard_index("flywheel-characterflywheel-exporter-2", 3) == 2
    assert parse_shard_index("1", 3) == 1
    with pytest.raises(ValueError, match="outside 0 … 2"):
        parse_shard_index("exporter-3", 3)
    with pytest.raises(ValueError, match="POD_NAME"):
        parse_shard_index("exporter", 3)
    with pytest.raises(ValueError, match="1 to 1024"):
        shard_of("a", 0)


def start(store, **options) -> ExporterServer:
    server = make_server("127.0.0.1", 0, store, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def shard_servers() -> Iterator[list[tuple[ExporterServer, httpx.Client]]]:
    servers = [start(SqliteStore(None), shard=(index, 3)) for index in range(3)]
    servers.append(start(SqliteStore(None)))  # the unsharded exporter, for comparison
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=10) for s in servers]
    yield list(zip(servers, clients, strict=True))
    for server, client in zip(servers, clients, strict=True):
        client.close()
        server.shutdown()
        server.server_close()


def post(client: httpx.Client, lines: list[str]) -> httpx.Response:
    return client.post("/events", content="\n".join(lines) + "\n")


def counters(client: httpx.Client) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if not s.name.startswith(("flywheel_exporter_events", "flywheel_exporter_last_event"))
    }


def test_a_misrouted_event_is_refused_whole_with_its_shard(shard_servers) -> None:
    (server, client), *_ = shard_servers
    assert shard_of("alice", 3) == 2 and shard_of("user-1", 3) == 0
    response = post(client, [exposure("user-1"), exposure("alice")])
    assert response.status_code == 421
    assert "event 2: user 'alice' belongs to shard 2 of 3" in response.json()["error"]
    assert server.durable.arm_stats("gen2") == (None, None)  # nothing of the batch counted
    assert post(client, [exposure("user-1"), engagement("user-1", 2, day=1)]).status_code == 200


def stream(seed: int, users: int = 120, events: int = 900) -> list[str]:
    """Exposures, crossovers, adoption, unattributed events, guardrails and days, in random order."""
    rng = random.Random(seed)
    lines = []
    for _ in range(events):
        user = f"user-{rng.randrange(users)}"
        if rng.random() < 0.3:
            lines.append(exposure(user, rng.choice(["control", "treatment"]), pre=rng.randrange(8)))
        else:
            turns = rng.randrange(4)
            extra = {"arm": rng.choice(["control", "treatment"])} if rng.random() < 0.2 else {}
            lines.append(
                engagement(
                    user, turns, day=rng.randrange(7), responses=turns, guardrails={"errors": turns // 2}, **extra
                )
            )
    return lines


def test_shards_add_up_to_the_unsharded_exporter_exactly(shard_servers) -> None:
    """Each writer batch is split by shard_of and posted to its shards; the sum of the shards' counters (what
    `sum(flywheel_…_total{…})` reads) equals the one exporter's, series by series, to the last bit."""
    *shards, (_, whole) = shard_servers
    lines = stream(7)
    for start_at in range(0, len(lines), 100):
        batch = lines[start_at : start_at + 100]
        assert post(whole, batch).status_code == 200
        routed = defaultdict(list)
        for line in batch:
            routed[shard_of(json.loads(line)["user"], 3)].append(line)
        for index, part in routed.items():
            assert post(shards[index][1], part).status_code == 200
    summed: dict[tuple, float] = defaultdict(float)
    for _, client in shards:
        for key, value in counters(client).items():
            summed[key] += value
    expected = counters(whole)
    assert expected[("flywheel_crossover_users_total", (("generation", "gen2"),))] > 0
    assert dict(summed) == expected


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 5))
def test_per_user_sums_srm_and_crossovers_are_exact_over_any_number_of_shards(seed: int, n: int) -> None:
    lines = stream(seed, users=30, events=150)
    whole = SqliteStore(None)
    parts = [SqliteStore(None) for _ in range(n)]
    events = [parse_event(line) for line in lines]
    assert whole.submit(events) == []
    for index, part in enumerate(parts):
        assert part.submit([e for e in events if shard_of(e.user, n) == index]) == []
    totals = [p.totals() for p in parts]
    expected_arms, expected_unattributed, expected_crossovers = whole.totals()
    assert sum(t[1] for t in totals) == expected_unattributed
    assert sum(t[2].get("gen2", 0) for t in totals) == expected_crossovers.get("gen2", 0)
    for key, expected in expected_arms.items():
        shares = [t[0][key] for t in totals if key in t[0]]
        for field in (
            "users",
            "engaged",
            "adopted",
            "depth_sum",
            "depth_sum_squares",
            "pre_sum",
            "pre_sum_squares",
            "pre_cross_sum",
            "responses",
            "responses_sum_squares",
        ):
            assert sum(getattr(s, field) for s in shares) == getattr(expected, field), field
        for field in ("guardrails", "guardrail_sum_squares", "guardrail_cross_sums"):
            for name, value in getattr(expected, field).items():
                assert sum(getattr(s, field).get(name, 0) for s in shares) == value, (field, name)


def test_the_command_refuses_a_shard_index_it_cannot_use() -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "flywheel_operator.cli", "exporter", "--allow-unauthenticated-writes"]
    refused = subprocess.run(
        [*command, "--shards", "3", "--shard-index", "exporter-7"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "outside 0 … 2 of --shards 3" in refused.stderr
