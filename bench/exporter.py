"""Exporter benchmark (issue 30): the engagement exporter with millions of users in state, and the SQL source.

Each run starts `flywheel exporter` as real subprocesses (one per shard) on a state that already holds N exposed
users (written straight into the store's files, as a long experiment would have left them), then W writer
processes post batches of 1,000 events over HTTP (keep-alive, 127.0.0.1) for `--seconds`: 20 % exposures of new
users, 80 % engagement of users drawn uniformly from the N (day 0-6, responses and a guardrail). With shards,
each writer routes every event by `shard_of(user, shards)` and posts 1,000-event batches to each shard. Measured:

- events/s accepted over the whole run (all writers, all shards), batch latency p50/p99/max per POST;
- each exporter's RSS at the end (and its peak), the state's size on disk, and the exporters' CPU seconds during
  the load (events per exporter CPU-second is what one core sustains, whatever else shares the machine);
- restart: every exporter SIGKILLed right after the load (no shutdown compaction), then started again on the
  same files: seconds from spawn to a 200 on /healthz (the slowest shard), which includes the Python start-up.

Stores: `sqlite` (today's default, `--state`) and `json` (the store before issue 30, `--snapshot` alone: the
whole state rewritten as one JSON document every 10,000 events), in the same invocation. The JSON store is run
at the smaller sizes only (`--json-users`): at 10^7 users it needs ~6 GB of memory.

The SQL source: a 7-day experiment of `--sql-users` users written to Parquet by DuckDB (an exposure per user,
engagement on ~40 % of user-days), then one `SqlReader.read` on embedded DuckDB, timed.

The machine's 1-minute load average is recorded before and after each run (the CPU may be shared). Usage:
    python bench/exporter.py [--users 1e5 1e6 1e7] [--shards 1 2] [--json-users 1e5 1e6] [--seconds 20]
                             [--writers 4] [--sql-users 1e7] [--out bench/results/exporter.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from flywheel_operator.gate.shards import shard_of  # noqa: E402
from flywheel_operator.gate.store import ArmTotals, SqliteStore  # noqa: E402

GENERATION = "gen2"
BATCH = 1000
TARGETS = {"events_per_second": 20_000, "p99_ms": 250, "rss_mib": 2048, "restart_s": 30, "sql_seconds": 60}


def user_id(index: int) -> str:
    return f"user-{index:010d}"


def load_average() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------------------------------ prepared state
def prepare_sqlite(directory: Path, users: int, shards: int) -> list[Path]:
    """One database per shard holding its share of `users` exposed users (depth 0), totals to match."""
    paths = []
    for shard in range(shards):
        path = directory / f"shard-{shard}.db"
        SqliteStore(path, checkpoint_every=0).close()  # schema and meta, as the exporter writes them
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # bulk load only; the exporter runs with FULL
        db.create_function("owner", 1, lambda u: shard_of(u, shards), deterministic=True)
        db.execute("BEGIN")
        db.execute("INSERT INTO experiments (id, key) VALUES (1, ?)", (GENERATION,))
        keep = "" if shards == 1 else f"WHERE owner(u) = {shard}"
        db.execute(
            f"""INSERT INTO users
            WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {users - 1})
            SELECT 1, u, i % 2, 0, 0.0, NULL, 0, NULL, 0
            FROM (SELECT i, printf('user-%010d', i) AS u FROM seq) {keep}"""
        )
        for arm, code in (("control", 0), ("treatment", 1)):
            (count,) = db.execute("SELECT count(*) FROM users WHERE arm = ?", (code,)).fetchone()
            db.execute("INSERT INTO arms VALUES (1, ?, ?)", (arm, json.dumps(asdict(ArmTotals(users=count)))))
        db.execute("UPDATE meta SET value = ? WHERE key = 'sequence'", (str(users),))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        paths.append(path)
    return paths


def prepare_json(directory: Path, users: int) -> Path:
    """The JSON store's snapshot (version 2) of `users` exposed users, written as a stream."""
    path = directory / "snapshot.json"
    with path.open("w") as out:
        out.write(f'{{"version": 2, "engaged_min_days": 2, "sequence": {users}, "users": {{"{GENERATION}": {{')
        for index in range(users):
            out.write(
                ("," if index else "")
                + f'"{user_id(index)}": ["{("control", "treatment")[index % 2]}", 0, 0.0, [], 0, {{}}]'
            )
        out.write('}}, "arms": [')
        for k, arm in enumerate(("control", "treatment")):
            count = (users + 1 - k) // 2
            out.write(
                ("," if k else "")
                + json.dumps({"generation": GENERATION, "arm": arm, **asdict(ArmTotals(users=count))})
            )
        out.write('], "crossovers": {}}')
    return path


def disk_mib(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 2**20


# ------------------------------------------------------------------------------------------------ exporters
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(store: str, path: Path, port: int, shards: int, shard: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "flywheel_operator.cli", "exporter", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--allow-unauthenticated-writes"]
    command += ["--state", str(path)] if store == "sqlite" else ["--snapshot", str(path)]
    if shards > 1:
        command += ["--shards", str(shards), "--shard-index", str(shard)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exporter on port {port} exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"exporter on port {port} not ready after {timeout}s")


def start_all(store: str, paths: list[Path], shards: int) -> tuple[list[subprocess.Popen], list[int], float]:
    ports = [free_port() for _ in paths]
    began = time.monotonic()
    processes = [spawn(store, path, port, shards, i) for i, (path, port) in enumerate(zip(paths, ports, strict=True))]
    for port, process in zip(ports, processes, strict=True):
        wait_ready(port, process)
    return processes, ports, time.monotonic() - began


def rss_mib(process: subprocess.Popen) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    current = psutil.Process(process.pid).memory_info().rss / 2**20
    peak = current
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return current, peak


# --------------------------------------------------------------------------------------------------- writers
def make_batches(seed: int, users: int, shards: int, count: int) -> list[list[bytes]]:
    """Per shard, `count` bodies of BATCH events each (pre-built: the writers' CPU goes to posting)."""
    rng = random.Random(seed)
    buckets: list[list[str]] = [[] for _ in range(shards)]
    bodies: list[list[bytes]] = [[] for _ in range(shards)]
    fresh = users + seed * 10_000_000
    while min(len(b) for b in bodies) < count:
        if rng.random() < 0.2:
            fresh += 1
            user = user_id(fresh)
            event = {
                "type": "exposure",
                "generation": GENERATION,
                "user": user,
                "arm": ("control", "treatment")[fresh % 2],
                "pre_depth": float(rng.randrange(10)),
            }
        else:
            user = user_id(rng.randrange(users))
            turns = rng.randint(1, 4)
            event = {
                "type": "engagement",
                "generation": GENERATION,
                "user": user,
                "turns": turns,
                "responses": turns,
                "day": rng.randrange(7),
                "guardrails": {"errors": int(rng.random() < 0.05)},
            }
        shard = shard_of(user, shards) if shards > 1 else 0
        buckets[shard].append(json.dumps(event))
        if len(buckets[shard]) == BATCH:
            if len(bodies[shard]) < count:
                bodies[shard].append(("\n".join(buckets[shard]) + "\n").encode())
            buckets[shard] = []
    return bodies


def writer(seed: int, users: int, ports: list[int], seconds: float, start_at: float, results) -> None:
    bodies = make_batches(seed, users, len(ports), 30)
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for port in ports]
    latencies: list[float] = []
    accepted = refused = 0
    while time.time() < start_at:
        time.sleep(0.01)
    end = start_at + seconds
    round_ = 0
    while time.time() < end:
        for shard, connection in enumerate(connections):
            body = bodies[shard][round_ % len(bodies[shard])]
            began = time.perf_counter()
            connection.request("POST", "/events", body=body, headers={"Content-Type": "application/x-ndjson"})
            response = connection.getresponse()
            payload = response.read()
            latencies.append(time.perf_counter() - began)
            if response.status == 200:
                accepted += json.loads(payload)["accepted"]
            else:
                refused += 1
        round_ += 1
    results.put({"latencies": latencies, "accepted": accepted, "refused": refused, "finished": time.time()})


def run_case(store: str, users: int, shards: int, seconds: float, writers: int) -> dict:
    label = f"{store}, {users:.0e} users, {shards} shard{'s' if shards > 1 else ''}"
    print(f"==> {label}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-exporter-", dir=os.environ.get("BENCH_TMP")) as tmp:
        directory = Path(tmp)
        began = time.monotonic()
        paths = prepare_sqlite(directory, users, shards) if store == "sqlite" else [prepare_json(directory, users)]
        prepare_s = time.monotonic() - began
        load_before = load_average()
        processes, ports, cold_start_s = start_all(store, paths, shards)
        try:
            results = multiprocessing.Queue()
            start_at = time.time() + 3 + 0.5 * writers  # the writers build their batches first
            pool = [
                multiprocessing.Process(target=writer, args=(k + 1, users, ports, seconds, start_at, results))
                for k in range(writers)
            ]
            cpu_before = [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in processes]
            for p in pool:
                p.start()
            outcomes = [results.get(timeout=seconds + 600) for _ in pool]
            cpu_used = sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in processes) - sum(cpu_before)
            for p in pool:
                p.join(timeout=30)
            rss = [rss_mib(p) for p in processes]
            load_after = load_average()
        finally:
            for p in processes:
                p.kill()  # SIGKILL: no shutdown compaction, the next start finds what a crash leaves
                p.wait(timeout=60)
        state_mib = disk_mib(directory)
        processes, ports, restart_s = start_all(store, paths, shards)
        for p in processes:
            p.terminate()
            p.wait(timeout=300)
    latencies = sorted(x for o in outcomes for x in o["latencies"])
    duration = max(o["finished"] for o in outcomes) - start_at
    accepted = sum(o["accepted"] for o in outcomes)
    result = {
        "label": label,
        "store": store,
        "users_in_state": users,
        "shards": shards,
        "writers": writers,
        "batch_events": BATCH,
        "seconds": round(duration, 2),
        "events_accepted": accepted,
        "batches_refused": sum(o["refused"] for o in outcomes),
        "events_per_second": round(accepted / duration),
        "exporter_cpu_s": round(cpu_used, 1),
        "events_per_exporter_cpu_second": round(accepted / cpu_used) if cpu_used else None,
        "batch_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "batch_p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "batch_max_ms": round(1000 * latencies[-1], 1),
        "rss_mib_per_shard": [round(r[0], 1) for r in rss],
        "peak_rss_mib_per_shard": [round(r[1], 1) for r in rss],
        "state_mib_on_disk": round(state_mib, 1),
        "cold_start_s": round(cold_start_s, 2),
        "restart_after_sigkill_s": round(restart_s, 2),
        "prepare_s": round(prepare_s, 1),
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "label"}), flush=True)
    return result


# ---------------------------------------------------------------------------------------------- SQL source
def sql_source(users: int, directory: Path) -> dict:
    """A 7-day experiment of `users` users as Parquet (DuckDB writes it), then one SqlReader.read on DuckDB."""
    import duckdb
    from flywheel_operator.api.models import PromotionSpec
    from flywheel_operator.gate.sqlsource import SqlReader

    print(f"==> SQL source, 7 days, {users:.0e} users (DuckDB)", flush=True)
    path = directory / "events.parquet"
    began = time.monotonic()
    connection = duckdb.connect()
    connection.execute(
        f"""
        COPY (
            WITH u AS (SELECT range AS i, hash(range) AS h FROM range({users}))
            SELECT TIMESTAMP '2026-03-02 00:00:00' + to_seconds(CAST(h % 3600 AS BIGINT)) AS event_time,
                   'exposure' AS type, 'gen2' AS generation, CAST(NULL AS VARCHAR) AS namespace,
                   printf('user-%010d', i) AS user_id, CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END AS arm,
                   CAST(h % 10 AS DOUBLE) AS pre_depth, CAST(NULL AS BIGINT) AS turns,
                   CAST(NULL AS BIGINT) AS responses,
                   CAST(NULL AS BIGINT) AS day, 0 AS instruction_violations, 0 AS false_refusals, 0 AS errors
            FROM u
            UNION ALL
            SELECT TIMESTAMP '2026-03-02 01:00:00' + to_days(CAST(d AS INTEGER))
                       + to_seconds(CAST(g % 80000 AS BIGINT)),
                   'engagement', 'gen2', NULL, printf('user-%010d', i), NULL, NULL,
                   CAST(1 + g % 6 AS BIGINT), CAST(1 + g % 6 AS BIGINT), CAST(d AS BIGINT),
                   CAST((g // 7) % 100 < 2 AS INTEGER), CAST((g // 11) % 100 < 3 AS INTEGER),
                   CAST((g // 13) % 100 < 5 AS INTEGER)
            FROM (SELECT i, d.range AS d, hash(i * 7 + d.range) AS g FROM range({users}) t(i), range(7) d)
            WHERE g % 100 < CASE WHEN i % 2 = 0 THEN 38 ELSE 40 END
        ) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)
        """
    )
    (rows,) = connection.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()
    connection.close()
    write_s = time.monotonic() - began
    promotion = PromotionSpec.model_validate({"source": {"sql": {"parquet": str(path), "maxEventAge": None}}})
    load_before = load_average()
    began = time.monotonic()
    reading = SqlReader(promotion).read(
        generation="gen2", namespace="default", now=datetime(2026, 3, 9, tzinfo=UTC) + timedelta(hours=1)
    )
    read_s = time.monotonic() - began
    assert reading.error is None, reading.error
    result = {
        "label": f"SQL source on DuckDB, 7 days, {users:.0e} users",
        "users": users,
        "event_rows": rows,
        "parquet_mib": round(path.stat().st_size / 2**20, 1),
        "write_parquet_s": round(write_s, 1),
        "read_s": round(read_s, 2),
        "users_read": reading.control.users + reading.treatment.users,
        "peak_rss_mib_of_bench_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_1m": [round(load_before, 2), round(load_average(), 2)],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", nargs="*", type=float, default=[1e5, 1e6, 1e7])
    parser.add_argument("--shards", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--json-users", nargs="*", type=float, default=[1e5, 1e6])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--sql-users", type=float, default=1e7, help="0: skip the SQL source")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "exporter.json"))
    args = parser.parse_args()
    runs = []
    for users in args.json_users:
        runs.append(run_case("json", int(users), 1, args.seconds, args.writers))
    for users in args.users:
        for shards in args.shards:
            runs.append(run_case("sqlite", int(users), shards, args.seconds, args.writers))
    sql = None
    if args.sql_users:
        with tempfile.TemporaryDirectory(prefix="bench-sql-", dir=os.environ.get("BENCH_TMP")) as tmp:
            sql = sql_source(int(args.sql_users), Path(tmp))
    largest = [r for r in runs if r["store"] == "sqlite" and r["users_in_state"] == max(int(u) for u in args.users)]
    meets = {}
    for r in largest:
        meets[f"{r['shards']} shard(s) at {r['users_in_state']:.0e} users"] = {
            "events_per_second": r["events_per_second"] >= TARGETS["events_per_second"],
            "batch_p99": r["batch_p99_ms"] <= TARGETS["p99_ms"],
            "rss": max(r["peak_rss_mib_per_shard"]) <= TARGETS["rss_mib"],
            "restart": r["restart_after_sigkill_s"] <= TARGETS["restart_s"],
        }
    if sql is not None:
        meets["sql source"] = {"read_s": sql["read_s"] <= TARGETS["sql_seconds"]}
    document = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/exporter.py " + " ".join(sys.argv[1:]),
        "targets": TARGETS,
        "runs": runs,
        "sql_source": sql,
        "meets_targets": meets,
    }
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("exporter", args.out)  # provenance
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
