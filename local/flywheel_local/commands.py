"""The `flywheel run`, `flywheel status` and `flywheel report` subcommands (thin: the work is elsewhere)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from rich.console import Console

from flywheel_local.progress import Display
from flywheel_local.runner import (
    RUN_FILE,
    LocalRunError,
    Runner,
    default_run_dir,
    load_manifest,
)
from flywheel_local.statusview import generation_dirs, render_status

EXIT_INTERRUPTED = 130
UNWRAPPED_WIDTH = 10_000
"""Console width when the output is piped or redirected: no wrapping (a terminal uses its own width)."""
EXIT_INVALID = 1
"""A manifest that cannot run: the same exit status as `flywheel validate` gives it."""
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the runner draws its own bars; the stage logs keep theirs
}


def run_command(
    file: str,
    *,
    generations: int | None = None,
    run_dir: str | None = None,
    world: str | None = None,
    cache_dir: str | None = None,
    console: Console | None = None,
    oracle_draws: int | None = None,
) -> int:
    """Run (or resume) `generations` generations of `file` locally; print the decision and the report path (its
    oracle over `oracle_draws` draws of each model's responses, default flywheel_sim.oracle.DEFAULT_DRAWS)."""
    from flywheel_sim import DEFAULT_WORLD, WorldFileError
    from flywheel_sim.oracle import DEFAULT_DRAWS

    from flywheel_local.sources import SimUriError

    draws = DEFAULT_DRAWS if oracle_draws is None else oracle_draws
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    console = console or Console(highlight=False, soft_wrap=True)
    if generations is not None and generations < 1:
        console.print(f"--generations must be at least 1 (got {generations})")
        return 2
    if draws < 2:
        console.print(f"--oracle-draws must be at least 2 (got {draws}): the oracle's verdicts need an interval")
        return 2
    from flywheel_local.flywheel import manifest_kind

    if manifest_kind(Path(file)) == "Flywheel":
        from flywheel_local.flywheel_command import run_flywheel_command

        return run_flywheel_command(file, generations=generations, run_dir=run_dir, world=world,
                                    cache_dir=cache_dir, console=console, oracle_draws=draws)
    generations = generations or 1
    try:
        first = load_manifest(Path(file))
    except LocalRunError as exc:
        console.print(str(exc), markup=False)
        return EXIT_INVALID
    directory = Path(run_dir) if run_dir else default_run_dir(first)
    nested = directory / first.metadata.name
    if run_dir is None and (nested / RUN_FILE).is_file():  # a run started before the storage URI became the root
        console.print(f"{nested} is a run directory of the earlier layout ({nested / first.metadata.name}/): "
                      "resuming it there", markup=False)
        directory = nested
    world_file = Path(world) if world else DEFAULT_WORLD
    cache = Path(cache_dir) if cache_dir else Path("runs") / "cache"
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the run as cleanly as Ctrl-C does
    console.print(f"flywheel run {file}: run directory {directory}, world {world_file}", markup=False)
    with Display(console) as display:
        runner = Runner(directory, world_file=world_file, cache_dir=cache, display=display, oracle_draws=draws)
        try:
            outcomes = runner.run(first, generations)
        except KeyboardInterrupt:
            stopped = runner.stop()
            display.event(
                f"stopped ({', '.join(stopped) or 'no stage was running'}); the status is saved — run the same "
                "command again to resume where it stopped",
                warning=True,
            )
            return EXIT_INTERRUPTED
        except (LocalRunError, SimUriError, WorldFileError) as exc:
            runner.stop()
            console.print(f"flywheel run: {exc}", markup=False)
            return 2
    for outcome in outcomes:
        decision = outcome.status.decision
        line = f"{outcome.status.phase}" + (
            f" ({decision.outcome}): " + "; ".join(decision.reasons) if decision else f": {outcome.status.message}"
        )
        console.print(f"{outcome.name}: {line}", markup=False)
    console.print("writing the report (with the simulator's oracle: ground truth the gates never saw)", markup=False)
    report_started = time.monotonic()
    runner.record_wall_time(report_started - started)  # the report shows it
    report = _write_report(directory, console, world_file, cache, draws)
    timings = {**runner.timings, "report": time.monotonic() - report_started}
    console.print(f"status: flywheel status {directory}", markup=False)
    if report is not None:
        console.print(f"report: {report}", markup=False)
    console.print(time_summary(timings, outcomes, time.monotonic() - started), markup=False)
    return 0 if all(o.status.phase != "Failed" for o in outcomes) else 1


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.1f} min"


def time_summary(timings: dict[str, float], outcomes: list, total: float) -> str:
    """Where the wall time of this run went: in-process phases (generation 0, simulated traffic, the A/B
    simulation, the report) and each stage this run started (reward models run side by side, so stages may add
    up to more than the wall time)."""
    stages = [
        f"{record.name} {_seconds((record.finished_at - record.started_at).total_seconds())}"
        for outcome in outcomes
        for record in outcome.status.stages
        if record.child in outcome.launched and record.started_at and record.finished_at
    ]
    late = ("A/B simulation", "report")
    before = [f"{phase} {_seconds(s)}" for phase, s in timings.items() if s >= 0.5 and phase not in late]
    after = [f"{phase} {_seconds(timings[phase])}" for phase in late if timings.get(phase, 0.0) >= 0.5]
    return f"done in {total / 60:.1f} min: " + ", ".join(before + stages + after)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _write_report(directory: Path, console: Console, world_file: Path, cache_dir: Path | None = None,
                  draws: int | None = None) -> Path | None:
    from flywheel_sim.oracle import DEFAULT_DRAWS

    from flywheel_local.flywheel_page import write_flywheel_page
    from flywheel_local.report import compute_oracle, write_report

    try:
        compute_oracle(directory, world_file, draws=DEFAULT_DRAWS if draws is None else draws, cache_dir=cache_dir)
        index = write_report(directory)
        return write_flywheel_page(directory, index.parent) or index
    except (OSError, ValueError) as exc:
        console.print(f"the report could not be written: {exc}", markup=False)
        return None


def status_command(run_dir: str, *, as_json: bool = False) -> int:
    """Print the status documents of a run directory (or of one generation's directory)."""
    directory = Path(run_dir)
    dirs = generation_dirs(directory)
    if not dirs:
        hint = "" if (directory / RUN_FILE).is_file() else " (is it a run directory? `flywheel run` prints it)"
        sys.stderr.write(f"{directory}: no status.json found{hint}\n")
        return 1
    if as_json:
        documents = {d.name: json.loads((d / "status.json").read_text()) for d in dirs}
        sys.stdout.write(json.dumps(documents, indent=2) + "\n")
        return 0
    Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else UNWRAPPED_WIDTH).print(
        render_status(dirs)
    )
    return 0


def report_command(run_dir: str, *, out: str | None = None, oracle: bool = True,
                   oracle_draws: int | None = None) -> int:
    from flywheel_sim.oracle import DEFAULT_DRAWS

    from flywheel_local.report import compute_oracle, write_report

    directory = Path(run_dir)
    if not generation_dirs(directory):
        sys.stderr.write(f"{directory}: no generation with a status.json; run `flywheel run` first\n")
        return 1
    draws = DEFAULT_DRAWS if oracle_draws is None else oracle_draws
    if draws < 2:
        sys.stderr.write(f"--oracle-draws must be at least 2 (got {draws}): the oracle's verdicts need an interval\n")
        return 2
    if oracle:
        run = json.loads((directory / RUN_FILE).read_text()) if (directory / RUN_FILE).is_file() else {}
        from flywheel_sim import DEFAULT_WORLD

        cache = run.get("cache")
        compute_oracle(directory, Path(run.get("world", DEFAULT_WORLD)), draws=draws,
                       cache_dir=Path(cache) if cache else None)
    path = write_report(directory, Path(out) if out else None, oracle=oracle)
    from flywheel_local.flywheel_page import write_flywheel_page

    path = write_flywheel_page(directory, path.parent) or path
    sys.stdout.write(f"{path}\n")
    return 0
