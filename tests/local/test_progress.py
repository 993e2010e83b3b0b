"""The progress line protocol between stage programs and the local runner."""

from __future__ import annotations

import json
from pathlib import Path

from flywheel_local.progress import LogTail, ProgressLine, parse_progress
from hypothesis import given
from hypothesis import strategies as st


@given(
    step=st.integers(0, 10_000),
    total=st.integers(1, 10_000),
    loss=st.floats(allow_nan=False, allow_infinity=False),
)
def test_a_progress_line_parses_and_step_never_exceeds_total(step: int, total: int, loss: float) -> None:
    line = json.dumps({"progress": {"step": step, "total": total, "phase": "train", "metrics": {"loss": loss}}})
    parsed = parse_progress(line)
    assert parsed == ProgressLine(step=min(step, total), total=total, phase="train", metrics={"loss": loss})


def test_plain_and_malformed_lines_are_log_not_progress() -> None:
    for line in ("epoch 1 loss 0.3", '{"progress": {"step": 1}}', '{"progress": "half"}', "{not json",
                 '{"progress": {"step": 1, "total": 0}}', '{"other": {"step": 1, "total": 2}}'):
        assert parse_progress(line) is None


def test_the_tail_reads_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "stage.log"
    tail = LogTail(log)
    assert tail.poll() is None  # no file yet
    log.write_text('loading\n{"progress": {"step": 1, "total": 4}}\n{"progress": {"step": 2, "to')
    assert tail.poll() == ProgressLine(step=1, total=4)
    with log.open("a") as handle:
        handle.write('tal": 4}}\n')
    assert tail.poll() == ProgressLine(step=2, total=4)
    assert tail.poll() == ProgressLine(step=2, total=4)  # nothing new: the latest stays
