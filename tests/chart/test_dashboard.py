"""The Grafana dashboard: generated from code, committed in the chart, and complete."""

from __future__ import annotations

import json

from flywheel_operator.dashboard import UID, render_dashboard

from tests.chart.conftest import CHART

COMMITTED = CHART / "dashboards" / "characterflywheel.json"


def test_committed_dashboard_matches_the_generator() -> None:
    assert COMMITTED.read_text() == render_dashboard(), (
        "the dashboard drifted from flywheel_operator.dashboard: run "
        "`python -m flywheel_operator.dashboard > charts/characterflywheel/dashboards/characterflywheel.json`"
    )


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(COMMITTED.read_text())
    assert dashboard["uid"] == UID
    panels = {p["title"]: p for p in dashboard["panels"]}
    exprs = {title: " ".join(t["expr"] for t in p.get("targets", [])) for title, p in panels.items()}
    assert panels["Phase timeline"]["type"] == "state-timeline"
    assert "flywheel_generation_phase" in exprs["Phase timeline"]
    assert "flywheel_stage_duration_seconds" in exprs["Mean stage duration (time range)"]
    lift = exprs["Online lift per generation (estimate and interval)"]
    assert "flywheel_online_lift" in lift and "bound" in lift
    assert "instruction_following" in exprs["Instruction following and violations per generation"]
    assert "violation_rate" in exprs["Instruction following and violations per generation"]
    assert "emoji_rate" in exprs["Style artifacts (rates)"]
    assert "mean_length" in exprs["Style artifacts (mean length, words)"]


def test_win_rate_panel_shows_the_default_band() -> None:
    dashboard = json.loads(COMMITTED.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Reward-model win rate over the parent"]
    steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.5, 0.65]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line+area"


def test_every_query_uses_the_datasource_variable() -> None:
    dashboard = json.loads(COMMITTED.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
