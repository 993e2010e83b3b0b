"""A reduced generation end to end through the LocalBackend: real stage programs, predictor, canary and gate.

One run serves every test here: `flywheel run` starts, is interrupted with Ctrl-C (SIGINT) while a stage runs,
and the same command resumes it to a decision. The tests then read what it left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from flywheel_local.cli import main as flywheel
from flywheel_operator.api import TERMINAL_PHASES, FlywheelGenerationStatus

MANIFEST = Path(__file__).with_name("tiny-generation.yaml")
NAME = "tiny1"
INTERRUPT_AT = "reward-pointwise"
"""The stage that is running when the run is interrupted (curate has finished by then)."""
TIMEOUT_SECONDS = 600

pytestmark = pytest.mark.slow


@dataclass
class Run:
    directory: Path
    interrupted_exit: int
    finished_before: dict[str, float]
    """mtime of result.json of each stage that had finished when the run was interrupted."""
    resumed_exit: int
    resumed_output: str

    @property
    def generation(self) -> Path:
        return self.directory / NAME

    def status(self) -> FlywheelGenerationStatus:
        return FlywheelGenerationStatus.model_validate_json((self.generation / "status.json").read_text())


def _command(run_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "flywheel_local.cli", "run", str(MANIFEST), "--run-dir", str(run_dir),
            "--cache-dir", str(cache)]


def _wait_for_stage(generation: Path, stage: str, proc: subprocess.Popen) -> None:
    """Until the status says `stage` runs and its process was launched (its pid file written): the status turns
    Running for every stage of a parallel step at once, and the runner launches them one after another."""
    status_file, pid_file = generation / "status.json", generation / "pids" / f"{generation.name}-{stage}-1.pid"
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"flywheel run exited early ({proc.returncode}): {proc.stdout.read()}")
        if status_file.is_file() and pid_file.is_file():
            try:
                status = json.loads(status_file.read_text())
            except ValueError:
                status = {}
            if any(s["name"] == stage and s["state"] == "Running" for s in status.get("stages", [])):
                return
        time.sleep(0.2)
    raise AssertionError(f"{stage} never started")


def _pause_session(pid: int, stage: str) -> None:
    """SIGSTOP the stage's session. A warm start's pid file is written right after the fork, before the child
    calls setsid: until then there is no process group `pid` although the process runs, so retry while it lives."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while True:
        try:
            os.killpg(pid, signal.SIGSTOP)
            return
        except ProcessLookupError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                raise AssertionError(f"{stage} ended before it could be paused: interrupt a longer stage") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _ctrl_c_while_running(generation: Path, stage: str, proc: subprocess.Popen) -> tuple[dict[str, float], int]:
    """Ctrl-C the run while `stage` is certainly unfinished; returns the finished stages' result times and the exit.

    The stage is paused (SIGSTOP to its session) from the moment it is seen launched until the Ctrl-C is sent, so a
    stage that a warm start makes fast cannot finish between the look and the signal."""
    _wait_for_stage(generation, stage, proc)
    pid = int((generation / "pids" / f"{generation.name}-{stage}-1.pid").read_text())
    _pause_session(pid, stage)
    try:
        if (generation / stage / "result.json").exists():
            raise AssertionError(f"{stage} finished before it could be paused: interrupt a longer stage")
        finished = {p.parent.name: p.stat().st_mtime for p in generation.glob("*/result.json")}
        proc.send_signal(signal.SIGINT)
    finally:
        os.killpg(pid, signal.SIGCONT)  # the runner's SIGTERM, sent or on its way, ends it
    return finished, proc.wait(timeout=60)


def _ctrl_c_as_in_a_terminal() -> None:
    """A suite started in the background (`make test &` from a script) inherits SIGINT ignored, and Python keeps
    a signal ignored at startup ignored: the run would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run_dir = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(_command(run_dir, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, preexec_fn=_ctrl_c_as_in_a_terminal)
    finished, interrupted_exit = _ctrl_c_while_running(run_dir / NAME, INTERRUPT_AT, proc)
    proc.stdout.close()
    resumed = subprocess.run(_command(run_dir, cache), capture_output=True, text=True, env=env,
                             timeout=TIMEOUT_SECONDS)
    return Run(run_dir, interrupted_exit, finished, resumed.returncode, resumed.stdout + resumed.stderr)


def test_ctrl_c_stops_cleanly_and_leaves_no_stage_running(run: Run) -> None:
    assert run.interrupted_exit == 130
    pid = int((run.generation / "pids" / f"{NAME}-{INTERRUPT_AT}-1.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_resuming_does_not_rerun_finished_stages(run: Run) -> None:
    assert run.resumed_exit == 0, run.resumed_output
    assert "curate" in run.finished_before
    for stage, mtime in run.finished_before.items():
        assert (run.generation / stage / "result.json").stat().st_mtime == mtime
        log = (run.generation / "logs" / f"{NAME}-{stage}-1.log").read_text()
        assert log.count(" start ") == 1, f"{stage} was started again"
    interrupted = (run.generation / "logs" / f"{NAME}-{INTERRUPT_AT}-1.log").read_text()
    assert interrupted.count(" start ") == 2  # the interrupted stage, and only it, ran again


def test_the_status_document_records_the_whole_generation(run: Run) -> None:
    status = run.status()
    assert status.phase in TERMINAL_PHASES - {"Failed"}
    assert [r.name for r in status.stages] == ["curate", "reward-pointwise", "sft", "rl", "eval"]
    assert all(r.state == "Succeeded" and r.output_digest for r in status.stages)
    assert status.offline_gate is not None and status.offline_gate.metrics is not None
    assert status.decision is not None and status.decision.reasons
    if status.offline_gate.passed:  # the candidate met simulated users: the online gate decided
        assert status.canary is not None and status.canary.phase in ("Promoted", "RolledBack")
        assert status.online is not None and status.online.readings
        assert all(r.has_data for r in status.online.readings)
        assert status.online.decision is not None
    promoted = next(c for c in status.conditions if c.type == "Promoted")
    assert promoted.status == ("True" if status.phase == "Promoted" else "False")
    wire = json.loads((run.generation / "status.json").read_text())
    assert {"phase", "stages", "offlineGate", "decision", "conditions"} <= set(wire)  # the CR's status, camelCase
    assert not [key for key in wire if "_" in key]


def test_the_run_prints_the_decision_and_the_report(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    status = run.status()
    assert f"{NAME}: {status.phase}" in run.resumed_output
    assert "report: " in run.resumed_output
    report = run.directory / "report" / "index.html"
    assert report.is_file() and 'src="win_rates.png"' in report.read_text()
    assert (run.directory / "report" / "win_rates.png").stat().st_size > 0
    assert flywheel(["status", str(run.directory)]) == 0
    shown = capsys.readouterr().out
    assert f"{NAME}: {status.phase}" in shown and "decision:" in shown
