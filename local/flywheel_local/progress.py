"""Progress of the local run: the stage programs' progress lines, shown as rich bars with ETA and a metric.

A stage program prints, on stdout (which the runner sends to the stage's log file), JSON lines such as
`{"progress": {"step": 12, "total": 30, "phase": "train", "metrics": {"loss": 0.42}}}` (docs/local.md).
Every other line is plain log. Stages that print none are shown with their elapsed time only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass(frozen=True)
class ProgressLine:
    """One parsed progress line."""

    step: int
    total: int
    phase: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def parse_progress(line: str) -> ProgressLine | None:
    """The progress line in `line`, or None for plain log (malformed progress lines are plain log too)."""
    text = line.strip()
    if not text.startswith("{") or '"progress"' not in text:
        return None
    try:
        body = json.loads(text)["progress"]
        step, total = int(body["step"]), int(body["total"])
        metrics = {str(k): float(v) for k, v in (body.get("metrics") or {}).items() if isinstance(v, int | float)}
        phase = body.get("phase")
    except (ValueError, KeyError, TypeError):
        return None
    if total < 1 or step < 0:
        return None
    return ProgressLine(step=min(step, total), total=total, phase=str(phase) if phase else None, metrics=metrics)


class LogTail:
    """Reads a growing log file from where it last stopped and returns the latest progress line in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.latest: ProgressLine | None = None
        self._partial = ""

    def poll(self) -> ProgressLine | None:
        try:
            with self.path.open("r", encoding="utf-8", errors="replace") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
                self.offset = handle.tell()
        except FileNotFoundError:
            return self.latest
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            parsed = parse_progress(line)
            if parsed is not None:
                self.latest = parsed
        return self.latest


def _metric_text(line: ProgressLine | None) -> str:
    if line is None:
        return ""
    parts = [line.phase] if line.phase else []
    parts += [f"{name} {value:.3g}" for name, value in list(line.metrics.items())[:2]]
    return " ".join(parts)


class Display:
    """Event lines always; live progress bars (one per stage, plus traffic and canary work) on a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<24}"),
            BarColumn(bar_width=28),
            MofNCompleteColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metric]}"),
            console=self.console,
            transient=False,
            disable=not self.live,
        )
        self.tasks: dict[str, TaskID] = {}
        self.tails: dict[str, LogTail] = {}

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def event(self, text: str, *, warning: bool = False) -> None:
        self.console.print(f"[yellow]{text}[/yellow]" if warning else text, markup=True)

    def start_task(self, key: str, description: str, *, total: float | None = None, log: Path | None = None) -> None:
        if key in self.tasks:
            return
        self.tasks[key] = self.progress.add_task(description, total=total, metric="")
        if log is not None:
            self.tails[key] = LogTail(log)

    def advance_task(self, key: str, *, completed: float, total: float | None = None, metric: str = "") -> None:
        if key in self.tasks:
            self.progress.update(self.tasks[key], completed=completed, total=total, metric=metric)

    def finish_task(self, key: str, *, ok: bool = True) -> None:
        task = self.tasks.pop(key, None)
        self.tails.pop(key, None)
        if task is None:
            return
        current = self.progress.tasks[task] if task < len(self.progress.tasks) else None
        total = current.total if current is not None and current.total else 1
        self.progress.update(task, completed=total, total=total, metric="done" if ok else "failed")
        self.progress.stop_task(task)

    def refresh(self) -> None:
        """Fold new progress lines of the running stages into their bars."""
        for key, tail in self.tails.items():
            line = tail.poll()
            if line is not None:
                self.advance_task(key, completed=line.step, total=line.total, metric=_metric_text(line))
