"""The exporter over HTTP: events in, counters out; bad input gets a 400 and counts nothing."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from flywheel_operator.gate.events import utc_day
from flywheel_operator.gate.exporter import (
    LAST_EVENT_METRIC,
    METRIC_NAMES,
    ExporterServer,
    make_metrics_server,
    make_server,
)
from flywheel_operator.gate.store import DurableStore
from prometheus_client.parser import text_string_to_metric_families

from tests.gate.test_store import engagement, exposure

PROCESS_SERIES = ("flywheel_exporter_events_total", LAST_EVENT_METRIC)
"""Series about this exporter process (what it received since it started), not the store's counts."""


def start(durable: DurableStore, **options) -> ExporterServer:
    server = make_server("127.0.0.1", 0, durable, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def exporter() -> Iterator[tuple[ExporterServer, httpx.Client]]:
    server = start(DurableStore(None))
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
        yield server, client
    server.shutdown()
    server.server_close()


def samples(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def post(client: httpx.Client, *lines: str) -> httpx.Response:
    return client.post("/events", content="\n".join(lines) + "\n", headers={"Content-Type": "application/x-ndjson"})


def test_events_become_counters(exporter) -> None:
    _, client = exporter
    response = post(
        client,
        exposure("a", "control", pre=2),
        exposure("b", "treatment", pre=1),
        engagement("a", 3, guardrails={"errors": 1}, latency_seconds=[0.3, 1.5, 40]),
        engagement("b", 2),
    )
    assert response.status_code == 200 and response.json() == {"accepted": 4}
    metrics = samples(client)
    control = (("arm", "control"), ("generation", "gen2"))
    assert metrics[("flywheel_users_exposed_total", control)] == 1
    assert metrics[("flywheel_depth_turns_squared_total", control)] == 9
    assert metrics[("flywheel_pre_depth_cross_turns_total", control)] == 6
    assert metrics[("flywheel_guardrail_events_total", (*control, ("guardrail", "errors")))] == 1
    assert metrics[("flywheel_guardrail_events_total", (*control, ("guardrail", "false-refusals")))] == 0
    assert metrics[("flywheel_response_latency_seconds_bucket", (*control, ("le", "0.5")))] == 1
    assert metrics[("flywheel_response_latency_seconds_bucket", (*control, ("le", "+Inf")))] == 3
    assert metrics[("flywheel_exporter_events_total", (("outcome", "accepted"),))] == 4
    assert ("flywheel_crossover_users_total", (("generation", "gen2"),)) not in metrics, "arms were sticky"
    assert post(client, exposure("a", "treatment")).status_code == 200, "a user in both arms is counted, not refused"
    assert samples(client)[("flywheel_crossover_users_total", (("generation", "gen2"),))] == 1
    assert {name for name, _ in metrics} <= {
        *METRIC_NAMES,
        *(f"flywheel_response_latency_seconds_{s}" for s in ("bucket", "sum", "count")),
    }


def test_undated_engagement_counts_on_the_day_it_arrives() -> None:
    clock = [datetime(2026, 11, 23, 9, 0, tzinfo=UTC)]
    server = start(DurableStore(None), clock=lambda: clock[0])
    engaged = ("flywheel_users_engaged_total", (("arm", "control"), ("generation", "gen2")))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            assert post(client, exposure("a"), engagement("a", 2), exposure("b"), engagement("b", 1)).status_code == 200
            clock[0] += timedelta(hours=14)  # 23:00, the same UTC day: a single visit still
            assert post(client, engagement("a", 1)).status_code == 200
            assert samples(client)[engaged] == 0
            clock[0] += timedelta(hours=2)  # the next day: a comes back
            assert post(client, engagement("a", 1)).status_code == 200
            assert samples(client)[engaged] == 1
            # an explicit day wins over the receipt day: b's late event of its first day is no return visit
            first_day = utc_day(datetime(2026, 11, 23, tzinfo=UTC))
            assert post(client, engagement("b", 1, day=first_day)).status_code == 200
            assert samples(client)[engaged] == 1
    finally:
        server.shutdown()
        server.server_close()


def test_malformed_events_get_a_400_with_the_reason_and_are_not_counted(exporter) -> None:
    _, client = exporter
    assert post(client, exposure("a")).status_code == 200
    before = samples(client)
    response = post(client, exposure("b"), '{"type": "exposure", "generation": "gen2", "user": "c", "arm": "blue"}')
    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 0 and body["errors"][0].startswith("line 2: field 'arm'")
    after = samples(client)
    assert after[("flywheel_exporter_events_total", (("outcome", "rejected"),))] == 2
    del after[("flywheel_exporter_events_total", (("outcome", "rejected"),))]
    del before[("flywheel_exporter_events_total", (("outcome", "rejected"),))]
    assert after == before
    assert client.post("/events", content=b"\xff\xfe").status_code == 400
    assert client.get("/nowhere").status_code == 404
    assert client.get("/healthz").text == "ok\n"


def test_a_restarted_exporter_resumes_its_counters(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot.json"
    server = start(DurableStore(snapshot))
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        post(client, exposure("a", pre=1), engagement("a", 5))
        before = samples(client)
    server.shutdown()
    server.server_close()
    again = start(DurableStore(snapshot))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{again.port}") as client:
            after = samples(client)
    finally:
        again.shutdown()
        again.server_close()
    counters = {k: v for k, v in before.items() if k[0] not in PROCESS_SERIES}
    assert {k: after[k] for k in counters} == counters


def test_a_poison_batch_gets_a_400_changes_nothing_and_a_restart_works(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot.json"
    server = start(DurableStore(snapshot))
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
        assert post(client, exposure("a", pre=1), engagement("a", 5)).status_code == 200
        before = samples(client)
        response = post(client, exposure("b"), engagement("b", 2), engagement("a", 10**160))
        assert response.status_code == 400 and response.json()["errors"][0].startswith("line 3: field 'turns'")
        after = samples(client)
    server.shutdown()
    server.server_close()
    counters = {k: v for k, v in before.items() if k[0] not in PROCESS_SERIES}
    assert {k: after[k] for k in counters} == counters and len(after) == len(before)
    again = start(DurableStore(snapshot))  # nothing poison was journaled: the restart comes up with the same counts
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{again.port}", timeout=10) as client:
            restarted = samples(client)
    finally:
        again.shutdown()
        again.server_close()
    assert {k: restarted[k] for k in counters} == counters


TOKEN = "chat-backend-token-0123456789"


def test_only_the_chat_backend_token_may_write_events(caplog) -> None:
    server = start(DurableStore(None), token=TOKEN)
    reader = make_metrics_server("127.0.0.1", 0, server)
    threading.Thread(target=reader.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.port}"
    batch = exposure("marker-user-7f3a", "treatment") + "\n" + engagement("marker-user-7f3a", 9)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            assert post(client, exposure("a")).status_code == 401  # no token: not even a well-formed batch
            before = samples(client)  # /metrics needs no token: it only reads
            with caplog.at_level("WARNING", logger="flywheel.exporter"):
                for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
                    refused = client.post("/events", content=batch, headers=headers)
                    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
            after = samples(client)
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert client.post("/events", content=batch, headers=bearer).status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{reader.port}", timeout=10) as scraper:
            assert scraper.post("/events", content=batch, headers=bearer).status_code == 405
            scraped = samples(scraper)
    finally:
        for each in (server, reader):
            each.shutdown()
            each.server_close()
    refusals = ("flywheel_exporter_refused_writes_total", "reason")
    assert after.pop((refusals[0], ((refusals[1], "missing-token"),))) == 3
    assert after.pop((refusals[0], ((refusals[1], "wrong-token"),))) == 1
    before = {k: v for k, v in before.items() if k[0] != refusals[0]}
    assert after == before  # refused writes counted nothing
    assert "marker-user-7f3a" not in caplog.text and "refused POST /events" in caplog.text
    treatment = (("arm", "treatment"), ("generation", "gen2"))
    assert scraped[("flywheel_depth_turns_total", treatment)] == 9  # the read-only port shows the same counters


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_metric_names_pass_promtool(exporter) -> None:
    _, client = exporter
    post(client, exposure("a", "control", pre=2), engagement("a", 1, latency_seconds=[0.2]))
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=client.get("/metrics").text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@pytest.mark.slow
def test_flywheel_exporter_command_keeps_its_counts_across_sigterm(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    snapshot = tmp_path / "state" / "exporter.json"
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    command = [sys.executable, "-m", "flywheel_operator.cli", "exporter", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--token-file", str(token)]
    process = subprocess.Popen(
        [*command, "--snapshot", str(snapshot), "--engaged-min-days", "1"], stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None, "the exporter did not start"
                time.sleep(0.2)
        batch = exposure("a", pre=3) + "\n" + engagement("a", 2)
        assert httpx.post(f"{url}/events", content=batch).status_code == 401
        bearer = {"Authorization": "Bearer s3cret-token-0123456789"}
        assert httpx.post(f"{url}/events", content=batch, headers=bearer).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stderr.close()
    control, _ = DurableStore(snapshot, engaged_min_days=1).store.arm_stats("gen2")
    assert control is not None and (control.users, control.depth_sum, control.pre_cross_sum) == (1, 2.0, 6.0)
    assert control.engaged_users == 1  # --engaged-min-days 1 reached the store: one turn is enough
    assert snapshot.with_name("exporter.json.journal").read_text() == ""
    # restarted under another rule, the exporter refuses the snapshot and says how to go on
    refused = subprocess.run([*command, "--snapshot", str(snapshot)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--engaged-min-days 1" in refused.stderr
    # without a token the command refuses to serve writes unless told the port is for a local test
    command.remove(str(token))
    command.remove("--token-file")
    open_writes = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert open_writes.returncode == 2 and "--token-file" in open_writes.stderr


def _start_command(command: list[str], url: str) -> subprocess.Popen:
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            assert time.monotonic() < deadline and process.poll() is None, "the exporter did not start"
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("store", [("--state", "state.db"), ("--snapshot", "snapshot.json")], ids=["sqlite", "json"])
def test_a_killed_exporter_restarted_on_its_volume_loses_nothing(tmp_path: Path, store: tuple[str, str]) -> None:
    """What the chart's PersistentVolumeClaim is for: the pod dies without its SIGTERM compaction (node lost,
    OOM kill) and its replacement mounts the same volume; every acknowledged event is still counted, and a batch
    resent with the same Idempotency-Key after the restart is not counted again (SQLite store)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    volume = tmp_path / "pvc"
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "flywheel_operator.cli",
        "exporter",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        store[0],
        str(volume / store[1]),
        "--allow-unauthenticated-writes",
    ]
    first = _start_command(command, url)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert post(client, exposure("a", pre=2), exposure("b", "treatment"), engagement("a", 3, day=0)).is_success
            second_batch = (engagement("a", 1, day=1), engagement("b", 5, day=0, guardrails={"errors": 1}))
            assert post(client, *second_batch).is_success
            before = samples(client)
    finally:
        first.kill()  # SIGKILL: no compaction, only the fsynced journal survives
        first.wait(timeout=10)
    second = _start_command(command, url)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            after = samples(client)
            if store[0] == "--state":
                keyed = {"Idempotency-Key": "chat-backend-batch-41"}
                for _ in range(2):  # the reply was lost: the writer sends the batch again
                    response = client.post("/events", content=engagement("b", 2, day=1) + "\n", headers=keyed)
                    assert response.status_code == 200
                depth = ("flywheel_depth_turns_total", (("arm", "treatment"), ("generation", "gen2")))
                assert samples(client)[depth] == after[depth] + 2
    finally:
        second.terminate()
        second.wait(timeout=30)
    counters = {k: v for k, v in before.items() if k[0] not in PROCESS_SERIES}
    assert counters and {k: after.get(k) for k in counters} == counters


def test_an_exporter_that_lost_its_state_accepts_the_next_hourly_batch(exporter) -> None:
    """Issue 15, cause 5: exposures were logged once, before a restart without the snapshot. The next batch is
    accepted: users naming their arm are adopted (and exported as such), the rest counted as unattributed."""
    _, client = exporter  # a fresh, empty exporter: the restarted one
    response = post(
        client,
        engagement("old-1", 2, day=3, arm="control", responses=2, guardrails={"errors": 1}),
        engagement("old-2", 1, day=3, arm="treatment"),
        engagement("old-3", 1, day=3),
    )
    assert response.status_code == 200 and response.json() == {"accepted": 3}
    after = samples(client)
    control = (("arm", "control"), ("generation", "gen2"))
    assert after[("flywheel_users_exposed_total", control)] == 1
    assert after[("flywheel_users_adopted_total", control)] == 1
    assert after[("flywheel_responses_squared_total", control)] == 4
    assert after[("flywheel_guardrail_events_cross_total", (*control, ("guardrail", "errors")))] == 2
    assert after[("flywheel_exporter_events_total", (("outcome", "unattributed"),))] == 1
