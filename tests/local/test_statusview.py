"""`flywheel status` says what each check means (issue 28 point 4): the interval rule on the line, disabled checks
as disabled, style drift in its limit's units, counts with thousands separators, no wrap when piped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flywheel_local.commands import status_command
from flywheel_local.statusview import format_number, render_check
from flywheel_operator.api import FlywheelGenerationStatus, GateCheck, OfflineGateResult, StageRecord
from hypothesis import given
from hypothesis import strategies as st

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
BAND = GateCheck(name="win-rate-band", passed=True, value=0.697, limit="in [0.50, 0.65]", n=180,
                 interval=[0.627, 0.760], message="...")
DISABLED = GateCheck(name="violation-rate", passed=True, value=0.12, limit="disabled", n=150,
                     interval=[0.07, 0.18], message="disabled")
LEGACY_DISABLED = GateCheck(name="instruction-following", passed=True, value=0.4, limit=">= 0.000", n=150,
                            interval=[0.3, 0.5], message="...")
DRIFT = GateCheck(name="style-drift.emoji_rate", passed=True, value=0.12, limit="<= +50%", n=200,
                  interval=[-0.302, 0.801], message="...")
FAILED = GateCheck(name="false-refusal-rate", passed=False, value=0.2, limit="<= 0.100", n=1500,
                   interval=[0.18, 0.22], message="...")


def test_a_pass_past_the_limit_says_why():
    line = render_check(BAND)
    assert line.startswith("ok   win-rate-band: 0.697 [0.627, 0.760] n=180, limit in [0.50, 0.65]")
    assert "fails only when its whole 95 % interval is past its limit" in line


def test_a_pass_inside_the_limit_needs_no_explanation():
    inside = BAND.model_copy(update={"value": 0.60, "interval": [0.53, 0.67]})
    assert "passes:" not in render_check(inside)


def test_disabled_checks_print_as_disabled_not_as_passes():
    for check in (DISABLED, LEGACY_DISABLED):
        line = render_check(check)
        assert line.startswith("off ") and "disabled, not a pass" in line and "ok" not in line.split()[0]


def test_style_drift_prints_in_the_units_of_its_limit():
    assert render_check(DRIFT).startswith("ok   style-drift.emoji_rate: +12.0% [-30.2%, +80.1%] n=200, limit <= +50%")
    past = DRIFT.model_copy(update={"value": 0.62})
    assert "passes: the point is past the limit" in render_check(past)


def test_failures_say_the_whole_interval_is_past():
    assert render_check(FAILED).startswith("FAIL false-refusal-rate: 0.200 [0.180, 0.220] n=1,500")
    assert "whole 95 % interval is past the limit" in render_check(FAILED)


@given(st.integers(0, 10**9))
def test_counts_print_as_integers_with_separators(count):
    assert format_number(float(count)) == f"{count:,}"


def test_piped_status_is_not_wrapped_and_shows_input_time(tmp_path, capsys):
    record = StageRecord(name="curate", state="Succeeded", attempts=1, child="gen1-curate-1", created_at=T0,
                         started_at=T0 + timedelta(seconds=47), finished_at=T0 + timedelta(seconds=54),
                         metrics={"pairs": 5580.0, "kept_rate": 0.4321})
    status = FlywheelGenerationStatus(phase="RolledBack", stages=[record],
                                      offline_gate=OfflineGateResult(passed=True, checks=[BAND, DISABLED, DRIFT]))
    directory = tmp_path / "gen1"
    directory.mkdir()
    (directory / "status.json").write_text(json.dumps(status.to_wire()))
    assert status_command(str(directory)) == 0
    out = capsys.readouterr().out
    assert "pairs=5,580" in out and "5.58e+03" not in out
    assert "7s (+47s inputs)" in out
    band_line = next(line for line in out.splitlines() if "win-rate-band" in line)
    assert len(band_line) > 80 and band_line.rstrip().endswith("past its limit)")
