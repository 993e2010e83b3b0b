"""The HTML report a person trusts (issue 28 point 5): a headline first, outcomes labelled exactly, measured lifts
with their intervals, y-axes that do not exaggerate, a legend off the bars, run metadata with links, and
`--no-oracle` without the oracle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flywheel_local.commands import report_command
from flywheel_local.report import write_report
from flywheel_operator.api import FlywheelGenerationStatus, GateCheck, OfflineGateResult
from flywheel_operator.api.status import OnlineDecision, OnlineStatus

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
START = {"depth": 4.0, "breadth": 0.60, "compliance": 0.50}
BETTER = {"depth": 6.5, "breadth": 0.654, "compliance": 0.70}


def _ab(phase: str, outcome: str, depth: tuple[float, float, float], breadth: tuple[float, float, float]):
    numbers = {"depth.lift": depth[0], "depth.lower": depth[1], "depth.upper": depth[2],
               "breadth.lift": breadth[0], "breadth.lower": breadth[1], "breadth.upper": breadth[2]}
    online = OnlineStatus(started_at=T0, decision=OnlineDecision(outcome=outcome, numbers=numbers,
                                                                 at=T0 + timedelta(days=2)))
    return FlywheelGenerationStatus(phase=phase, online=online)


def _run(tmp_path: Path) -> Path:
    statuses = {
        "gen1": _ab("Promoted", "PROMOTE", (0.16, 0.05, 0.27), (0.032, -0.01, 0.07)),
        "gen2": _ab("RolledBack", "INCONCLUSIVE", (0.02, -0.06, 0.10), (0.0, -0.04, 0.04)),
        "gen3": FlywheelGenerationStatus(phase="RolledBack", offline_gate=OfflineGateResult(
            passed=False, reasons=["win-rate-band: 0.752 entirely above 0.65"],
            checks=[GateCheck(name="win-rate-band", passed=False, message="...")])),
    }
    for number, (name, status) in enumerate(statuses.items(), start=1):
        directory = tmp_path / name
        (directory / "logs").mkdir(parents=True)
        (directory / "status.json").write_text(status.model_dump_json())
        (directory / "events.log").write_text("")
        (directory / "generation.json").write_text(json.dumps({"spec": {"generation": number}}))
    (tmp_path / "gen1" / "oracle.json").write_text(json.dumps({"parent": START, "candidate": BETTER}))
    (tmp_path / "run.json").write_text(json.dumps({"world": "examples/local/world.yaml", "commit": "abc1234",
                                                   "wallSeconds": 225.0}))
    return tmp_path


def test_the_page_opens_with_the_headline(tmp_path):
    page = write_report(_run(tmp_path)).read_text()
    headline = page[page.index('<ul class="headline">'):page.index("</ul>")]
    assert page.index('<ul class="headline">') < page.index("<img") < page.index("The oracle is the simulator")
    assert "gen1: promoted after A/B" in headline
    assert "depth +16.0% [+5.0%, +27.0%], breadth +3.2% [-1.0%, +7.0%]" in headline
    assert "oracle: truly better (depth +62.5%, breadth +9.0%) — the decision was right" in headline


def test_outcomes_are_labelled_exactly(tmp_path):
    page = write_report(_run(tmp_path)).read_text()
    assert "gen2: rolled back after A/B (INCONCLUSIVE)" in page
    assert "gen3: stopped by the offline gate" in page and "no user saw it: win-rate-band" in page
    assert "blocked" not in page and "shipped" not in page


def test_run_metadata_and_links(tmp_path):
    run_dir = _run(tmp_path)
    page = write_report(run_dir).read_text()
    assert "commit abc1234" in page and "seed 0" in page and "3.8 min wall before the report" in page
    for name in ("gen1", "gen2", "gen3"):
        assert f'href="../{name}/status.json"' in page and f'href="../{name}/logs"' in page
    assert "seed 2 (stages and simulated traffic), stages —, A/B 2.0 simulated day(s)" in page


def test_no_oracle_leaves_the_oracle_out_even_when_it_was_computed(tmp_path, capsys):
    run_dir = _run(tmp_path)
    write_report(run_dir)  # an earlier report with the oracle: climb.png and oracle.json exist
    assert (run_dir / "report" / "climb.png").is_file()
    assert report_command(str(run_dir), oracle=False) == 0
    page = (run_dir / "report" / "index.html").read_text().replace(str(run_dir), "").replace(run_dir.name, "")
    assert "oracle" not in page.lower().replace("--no-oracle", "")
    assert not (run_dir / "report" / "climb.png").exists()


@pytest.fixture
def figures(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved: dict[str, Figure] = {}
    original = Figure.savefig

    def keep(self, path, *args, **kwargs):
        saved[Path(path).name] = self
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_plots_do_not_exaggerate_and_show_intervals(tmp_path, figures):
    run_dir = _run(tmp_path)
    write_report(run_dir)
    climb = figures["climb.png"].axes
    assert all(ax.get_ylim()[0] == 0 for ax in climb)
    depth, breadth = figures["lifts.png"].axes
    assert depth.get_shared_y_axes().joined(depth, breadth)  # +9 % is not drawn as steep as +62 %
    assert any(type(c).__name__ == "ErrorbarContainer" for c in depth.containers)
    assert depth.get_legend() is None and breadth.get_legend() is None and figures["lifts.png"].legends
    legend_box = figures["lifts.png"].legends[0].get_window_extent()
    figures["lifts.png"].canvas.draw()
    for ax in (depth, breadth):
        assert not legend_box.overlaps(ax.get_window_extent())
