"""A 3-generation Flywheel end to end at tiny size, through the product path: `flywheel run tiny-flywheel.yaml`
(plan_flywheel, the local generation runner, real stage programs, the simulated canary). It is interrupted with
Ctrl-C while generation 2 trains and resumed with the same command; then the tests read what it left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from flywheel_operator.api import TERMINAL_PHASES, FlywheelGenerationStatus
from flywheel_operator.api.flywheel import FlywheelStatus

from tests.local.test_end_to_end import _ctrl_c_as_in_a_terminal, _ctrl_c_while_running

MANIFEST = Path(__file__).with_name("tiny-flywheel.yaml")
NAMES = ["tiny-1", "tiny-2", "tiny-3"]
INTERRUPTED = "tiny-2"
INTERRUPT_AT = "reward-pointwise"
TIMEOUT_SECONDS = 1800

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * TIMEOUT_SECONDS)]  # the interrupted run, then the resumed one


@dataclass
class FlywheelRun:
    directory: Path
    interrupted_exit: int
    finished_before: dict[str, float]
    resumed_exit: int
    resumed_output: str

    def status(self) -> FlywheelStatus:
        return FlywheelStatus.model_validate(json.loads((self.directory / "flywheel.json").read_text())["status"])

    def generation(self, name: str) -> FlywheelGenerationStatus:
        return FlywheelGenerationStatus.model_validate_json((self.directory / name / "status.json").read_text())

    def manifest(self, name: str) -> dict:
        return json.loads((self.directory / name / "manifest.json").read_text())


def _command(run_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "flywheel_local.cli", "run", str(MANIFEST), "--run-dir", str(run_dir),
            "--cache-dir", str(cache)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> FlywheelRun:
    run_dir = tmp_path_factory.mktemp("flywheel")
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(_command(run_dir, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, preexec_fn=_ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not (run_dir / INTERRUPTED / "status.json").is_file():  # generation 1 decides first
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{INTERRUPTED} never started ({proc.poll()}): {proc.stdout.read()}")
        time.sleep(0.5)
    finished, interrupted_exit = _ctrl_c_while_running(run_dir / INTERRUPTED, INTERRUPT_AT, proc)
    proc.stdout.close()
    resumed = subprocess.run(_command(run_dir, cache), capture_output=True, text=True, env=env,
                             timeout=TIMEOUT_SECONDS)
    return FlywheelRun(run_dir, interrupted_exit, finished, resumed.returncode, resumed.stdout + resumed.stderr)


def test_three_generations_decide_and_none_is_created_twice(run: FlywheelRun) -> None:
    assert run.interrupted_exit == 130
    assert run.resumed_exit == 0, run.resumed_output
    created = sorted(p.parent.name for p in run.directory.glob("*/manifest.json"))
    assert created == NAMES
    assert all(run.generation(n).phase in TERMINAL_PHASES for n in NAMES)
    status = run.status()
    assert status.phase == "Finished" and status.in_flight is None
    assert [e.name for e in status.trajectory] == NAMES
    assert [e.phase for e in status.trajectory] == [run.generation(n).phase for n in NAMES]


def test_each_parent_is_the_latest_promoted_generation(run: FlywheelRun) -> None:
    promoted: str | None = None
    for name in NAMES:
        spec = run.manifest(name)["spec"]
        if promoted is None:
            assert spec["basePolicy"] == "sim://generation-0?steps=20" and "parent" not in spec
        else:
            assert spec["parent"] == promoted and "basePolicy" not in spec
        if run.generation(name).phase == "Promoted":
            promoted = name
    assert run.status().last_promoted == promoted


def test_resuming_does_not_rerun_the_interrupted_generations_finished_stages(run: FlywheelRun) -> None:
    assert "curate" in run.finished_before
    for stage, mtime in run.finished_before.items():
        assert (run.directory / INTERRUPTED / stage / "result.json").stat().st_mtime == mtime
    log = (run.directory / INTERRUPTED / "logs" / f"{INTERRUPTED}-{INTERRUPT_AT}-1.log").read_text()
    assert log.count(" start ") == 2  # the interrupted stage, and only it, ran again
    for log in (run.directory / "tiny-1" / "logs").glob("*.log"):  # decided before the stop: never run again
        assert log.read_text().count(" start ") == 1, log.name


def test_the_templates_were_rendered_from_the_window(run: FlywheelRun) -> None:
    for name in NAMES:
        body = run.manifest(name)
        first, last = body["metadata"]["annotations"]["characterflywheel.io/traffic-window"].split("/")
        assert body["spec"]["data"]["userTraffic"]["uri"] == "sim://users?days=2&people=200"
        assert body["metadata"]["labels"]["characterflywheel.io/flywheel"] == "tiny"
        assert first < last


def test_the_report_covers_the_whole_flywheel(run: FlywheelRun) -> None:
    page = run.directory / "report" / "flywheel.html"
    assert f"report: {page}" in run.resumed_output
    text = page.read_text()
    for name in NAMES:
        assert f"<td>{name}</td>" in text
    assert "oracle agrees" in text and 'href="index.html"' in text and "<h1>Flywheel <code>tiny</code>" in text
    assert "The oracle agrees with" in text  # every decided generation has the oracle's verdict
    for name in NAMES:
        assert f"{name} (parent " in run.resumed_output
