"""The local run's clock: wall time while stages run, jumps while the canary waits for simulated days.

The planner only knows time through `now`. A canary checked once a simulated day would take a week of wall
time, so while nothing runs and the planner waits for its next check, the runner moves the clock forward to
that check. The offset is kept in the run directory, so a resumed run continues on the same timeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path


class SimulatedClock:
    """`now()` = wall time + an offset that only grows; `jump_to(t)` moves `now()` forward to `t`."""

    def __init__(self, path: Path, wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.path = path
        self.wall = wall
        self.offset = timedelta(seconds=json.loads(path.read_text())["offsetSeconds"]) if path.is_file() else (
            timedelta()
        )

    def now(self) -> datetime:
        return self.wall() + self.offset

    def jump_to(self, moment: datetime) -> None:
        gap = moment - self.now()
        if gap <= timedelta():
            return
        self.offset += gap
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"offsetSeconds": self.offset.total_seconds()}) + "\n")
        tmp.replace(self.path)
