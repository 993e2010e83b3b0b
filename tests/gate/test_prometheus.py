"""A real Prometheus scrapes the real exporter; the gate reads back through PromQL the sums the exporter holds."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from flywheel_operator.api import PromotionSpec
from flywheel_operator.gate import evaluate_online
from flywheel_operator.gate.exporter import ExporterServer, make_server
from flywheel_operator.gate.readers import PrometheusReader, read_local
from flywheel_operator.gate.store import DurableStore

from tests.gate.arms import plan_of
from tests.gate.test_store import engagement, exposure

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll a real server until it has caught up (no fixed sleeps; the limit only bounds a broken setup)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def exporter() -> Iterator[ExporterServer]:
    server = make_server("127.0.0.1", 0, DurableStore(None))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: ExporterServer) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: flywheel-exporter\n    honor_labels: true\n"  # as the chart's ServiceMonitor
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter.port}']\n"
        "        labels: {namespace: default}\n"  # the target's namespace, as the ServiceMonitor labels it
    )
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, "Prometheus to be ready")
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()


def test_the_gate_reads_back_what_the_exporter_holds(exporter: ExporterServer, prometheus) -> None:
    url, process = prometheus
    rng = np.random.default_rng(4)
    lines = []
    for i in range(400):
        arm = "treatment" if i % 2 else "control"
        lines.append(exposure(f"u{i}", arm, pre=float(rng.integers(0, 8))))
        for _ in range(int(rng.integers(0, 4))):
            lines.append(
                engagement(
                    f"u{i}",
                    int(rng.integers(1, 5)),
                    guardrails={"errors": int(rng.random() < 0.1)},
                    latency_seconds=[float(rng.exponential(1.0))],
                )
            )
    lines += [exposure("u0", "treatment"), exposure("u2", "treatment")]  # two control users crossed
    with httpx.Client(base_url=f"http://127.0.0.1:{exporter.port}") as client:
        assert client.post("/events", content="\n".join(lines)).status_code == 200
        assert client.post("/events", content='{"type": "exposure"}').status_code == 400

    expected = read_local(exporter.durable.store, generation="gen2", now=datetime.now(UTC))
    assert expected.has_data and expected.control is not None and expected.crossover_users == 2
    promotion = PromotionSpec(prometheus_url=url)
    prom_reader = PrometheusReader(promotion, timeout=5.0, retries=1, backoff=0.1)

    def caught_up() -> bool:
        reading = prom_reader.read(generation="gen2", namespace="default", now=datetime.now(UTC))
        return reading.has_data and (reading.control, reading.treatment, reading.crossover_users) == (
            expected.control,
            expected.treatment,
            expected.crossover_users,
        )

    wait_for(caught_up, "Prometheus to scrape the exporter's counts")
    reading = prom_reader.read(generation="gen2", namespace="default", now=datetime.now(UTC))
    assert reading.control == expected.control
    assert reading.treatment == expected.treatment
    assert reading.crossover_users == 2
    assert reading.control.pre_cross_sum is not None and reading.control.guardrails["errors"] >= 0

    # An unknown generation is no data, never zeros.
    assert not prom_reader.read(generation="gen9", namespace="default", now=datetime.now(UTC)).has_data

    # Prometheus goes away: the gate reads "no data" and keeps waiting, never promotes.
    process.terminate()
    process.wait(timeout=10)
    outage = prom_reader.read(generation="gen2", namespace="default", now=datetime.now(UTC))
    assert not outage.has_data and "unreachable" in (outage.error or "")
    decision = evaluate_online(
        plan_of(promotion),
        outage,
        elapsed=timedelta(days=2),
        previous=None,
        now=datetime.now(UTC),
    )
    assert decision.outcome == "CONTINUE"


def test_same_named_generations_of_two_namespaces_never_merge(exporter: ExporterServer, prometheus) -> None:
    """One exporter serves every watched namespace; each generation reads only its own namespace's users (events
    that name no namespace count in the exporter's own, `default` here)."""
    url, _ = prometheus
    lines = []
    for namespace, users in (("characters", 30), ("research", 70), (None, 11)):
        for i in range(users):
            extra = {"namespace": namespace} if namespace else {}
            for arm in ("control", "treatment"):
                event = json.loads(exposure(f"{namespace}-{arm}-{i}", arm))
                lines.append(json.dumps({**event, **extra}))
                lines.append(json.dumps({**json.loads(engagement(f"{namespace}-{arm}-{i}", 2)), **extra}))
    with httpx.Client(base_url=f"http://127.0.0.1:{exporter.port}") as client:
        assert client.post("/events", content="\n".join(lines)).status_code == 200
    prom_reader = PrometheusReader(PromotionSpec(prometheus_url=url), timeout=5.0, retries=1, backoff=0.1)

    def users(namespace: str) -> tuple[int, int] | None:
        reading = prom_reader.read(generation="gen2", namespace=namespace, now=datetime.now(UTC))
        return (reading.control.users, reading.treatment.users) if reading.has_data else None

    wait_for(lambda: users("characters") is not None and users("default") is not None, "the scrape")
    assert users("characters") == (30, 30) and users("research") == (70, 70) and users("default") == (11, 11)
