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


def test_dashboard_is_at_grafanas_current_schema_with_unique_panel_ids() -> None:
    """Grafana 12's schemaVersion (42): a dashboard below it is migrated on every load, and null ids make Grafana
    renumber panels, breaking links to a panel (`viewPanel=<id>`)."""
    from flywheel_operator.dashboard import SCHEMA_VERSION

    dashboard = json.loads(COMMITTED.read_text())
    assert dashboard["schemaVersion"] == SCHEMA_VERSION == 42
    ids = [panel.get("id") for panel in dashboard["panels"]]
    assert None not in ids and 0 not in ids and len(set(ids)) == len(ids)
    # what migrations 37-42 would rewrite is absent, so the dashboard needs none of them
    assert "time_options" not in dashboard.get("timepicker", {})
    for panel in dashboard["panels"]:
        legend = panel.get("options", {}).get("legend", {})
        assert legend.get("displayMode") != "hidden"
        assert panel["type"] != "table"
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            assert all(p["id"] != "custom.hideFrom" for p in override.get("properties", []))


def test_every_per_generation_panel_honours_the_namespace_variable() -> None:
    """Same-named generations of two namespaces must not merge: each query over per-generation series filters by
    $namespace as well as $generation."""
    dashboard = json.loads(COMMITTED.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if "generation" in target["expr"]:
                assert 'namespace=~"$namespace"' in target["expr"], panel["title"]


def test_health_panels_show_refused_writes_crossovers_and_reconcile_errors() -> None:
    dashboard = json.loads(COMMITTED.read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in dashboard["panels"]}
    assert "flywheel_exporter_refused_writes_total" in exprs["Refused event writes (exporter)"]
    crossover = exprs["Crossover users (share of exposed)"]
    assert "flywheel_crossover_users_total" in crossover and "flywheel_users_exposed_total" in crossover
    assert "flywheel_reconcile_errors_total" in exprs["Reconcile errors"]
