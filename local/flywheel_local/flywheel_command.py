"""`flywheel run FLYWHEEL.yaml`: run (or resume) a Flywheel locally, then print its trajectory and the report."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from rich.console import Console

from flywheel_local.flywheel import FlywheelRunner, load_flywheel, read_flywheel_status
from flywheel_local.progress import Display
from flywheel_local.runner import RUN_FILE, LocalRunError, Runner

EXIT_INTERRUPTED = 130


def default_flywheel_dir(name: str) -> Path:
    return Path("runs") / name


def run_flywheel_command(file: str, *, generations: int | None, run_dir: str | None, world: str | None,
                         cache_dir: str | None, console: Console, oracle_draws: int | None = None) -> int:
    from flywheel_sim import DEFAULT_WORLD, WorldFileError

    from flywheel_local.commands import _interrupt, _write_report
    from flywheel_local.sources import SimUriError

    try:
        flywheel = load_flywheel(Path(file))
    except LocalRunError as exc:
        console.print(str(exc), markup=False)
        return 2
    if generations is not None:  # --generations N: stop after N generations
        rules = flywheel.spec.stop_rules.model_copy(update={"max_generations": generations})
        flywheel = flywheel.model_copy(update={"spec": flywheel.spec.model_copy(update={"stop_rules": rules})})
    directory = Path(run_dir) if run_dir else default_flywheel_dir(flywheel.metadata.name)
    world_file = Path(world) if world else DEFAULT_WORLD
    cache = Path(cache_dir) if cache_dir else Path("runs") / "cache"
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    console.print(f"flywheel run {file}: Flywheel {flywheel.metadata.name}, run directory {directory}, world "
                  f"{world_file}", markup=False)
    with Display(console) as display:
        runner = Runner(directory, world_file=world_file, cache_dir=cache, display=display,
                        oracle_draws=oracle_draws)
        turning = FlywheelRunner(runner)
        try:
            _record_run(directory, flywheel.metadata.name, runner)
            turning.run(flywheel)
        except KeyboardInterrupt:
            stopped = runner.stop()
            display.event(
                f"stopped ({', '.join(stopped) or 'no stage was running'}); the status is saved — run the same "
                "command again to resume where it stopped", warning=True)
            return EXIT_INTERRUPTED
        except (LocalRunError, SimUriError, WorldFileError) as exc:
            runner.stop()
            console.print(f"flywheel run: {exc}", markup=False)
            return 2
    status = read_flywheel_status(directory)
    assert status is not None
    for entry in status.trajectory:
        lift = ""
        if entry.lift is not None:
            lift = f", breadth lift {entry.lift:+.1%}"
            if entry.lift_interval:
                lift += f" [{entry.lift_interval[0]:+.1%}, {entry.lift_interval[1]:+.1%}]"
        parent = entry.parent or "basePolicy"
        console.print(f"{entry.name} (parent {parent}): {entry.phase} ({entry.decision}){lift}: {entry.reason}",
                      markup=False)
    console.print(f"Flywheel {flywheel.metadata.name}: {status.phase} — {status.message}; deployed: "
                  f"{status.last_promoted or 'the base policy'}", markup=False)
    console.print("writing the report (with the simulator's oracle: ground truth the gates never saw)", markup=False)
    report = _write_report(directory, console, world_file, cache, oracle_draws)
    console.print(f"status: flywheel status {directory}", markup=False)
    if report is not None:
        console.print(f"report: {report}", markup=False)
    console.print(f"done in {(time.monotonic() - started) / 60:.1f} min", markup=False)
    return 1 if status.phase == "Invalid" else 0


def _record_run(directory: Path, name: str, runner: Runner) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_FILE).write_text(json.dumps({"flywheel": name, "world": str(runner.world_file),
                                                  "cache": str(runner.cache_dir)}, indent=2) + "\n")
