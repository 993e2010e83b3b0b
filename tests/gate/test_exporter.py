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
from flywheel_operator.gate.exporter import METRIC_NAMES, ExporterServer, make_server
from flywheel_operator.gate.store import DurableStore
from prometheus_client.parser import text_string_to_metric_families

from tests.gate.test_store import engagement, exposure


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
    counters = {k: v for k, v in before.items() if k[0] != "flywheel_exporter_events_total"}
    assert {k: after[k] for k in counters} == counters


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
    command = [sys.executable, "-m", "flywheel_operator.cli", "exporter", "--host", "127.0.0.1", "--port", str(port)]
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
        assert httpx.post(f"{url}/events", content=exposure("a", pre=3) + "\n" + engagement("a", 2)).status_code == 200
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
