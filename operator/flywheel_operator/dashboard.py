"""The Grafana dashboard of the flywheel, built in code with grafana-foundation-sdk.

`python -m flywheel_operator.dashboard > charts/characterflywheel/dashboards/characterflywheel.json`
writes the JSON the chart ships; a test regenerates it and fails when the committed file drifts. Every query
names only metrics of the operator (flywheel_operator.metrics) or the engagement exporter (a test checks).
"""

from __future__ import annotations

import json
import sys

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    VizLegendOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    GraphTresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    VisibilityMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableHide,
    VariableRefresh,
)

from flywheel_operator.api import WinRateBand

UID = "characterflywheel"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SELECT = 'namespace=~"$namespace", generation=~"$generation"'
"""Label matchers every per-generation query carries (dashboard variables)."""


def _query(expr: str, legend: str, ref: str = "A", *, instant: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return query.instant() if instant else query.range()


def _thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=value, color=color) for value, color in steps]
    )


def _legend() -> VizLegendOptions:
    return (VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.RIGHT)
            .show_legend(True))


def _variables(dashboard: Dashboard) -> Dashboard:
    return (
        dashboard.with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
            .query("label_values(flywheel_generation_phase, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
        )
        .with_variable(
            QueryVariable("generation").label("Generation").datasource(DATASOURCE)
            .query('label_values(flywheel_generation_phase{namespace=~"$namespace"}, generation)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
            .hide(VariableHide.DONT_HIDE)
        )
    )


def _pipeline(dashboard: Dashboard) -> Dashboard:
    """Where each generation is, and how long and how reliably its stages run."""
    return (
        dashboard.with_row(Row("Pipeline"))
        .with_panel(
            statetimeline.Panel().title("Phase timeline").span(24).height(9)
            .description("One row per generation and phase: lit while the generation is in that phase.")
            .with_target(_query(f"max by (generation, phase) (flywheel_generation_phase{{{SELECT}}}) == 1",
                                "{{generation}} · {{phase}}"))
            .show_value(VisibilityMode.NEVER).merge_values(True)
            .thresholds(_thresholds((None, "blue")))
        )
        .with_panel(
            stat.Panel().title("Generations by phase").span(6).height(8)
            .with_target(_query('sum by (phase) (flywheel_generations{namespace=~"$namespace"}) > 0',
                                "{{phase}}", instant=True))
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        )
        .with_panel(
            bargauge.Panel().title("Mean stage duration (time range)").span(9).height(8).unit("s")
            .description("Run time of finished attempts per stage, averaged over the dashboard's time range.")
            .with_target(_query(
                'sum by (stage) (increase(flywheel_stage_duration_seconds_sum{namespace=~"$namespace"}'
                "[$__range])) / sum by (stage) (increase(flywheel_stage_duration_seconds_count"
                '{namespace=~"$namespace"}[$__range]))',
                "{{stage}}", instant=True))
            .display_mode(BarGaugeDisplayMode.GRADIENT).orientation(VizOrientation.HORIZONTAL)
        )
        .with_panel(
            bargauge.Panel().title("Stage attempts and failures (time range)").span(9).height(8)
            .with_target(_query("sum by (stage) (increase(flywheel_stage_attempts_total"
                                '{namespace=~"$namespace"}[$__range]))', "{{stage}} attempts", "A", instant=True))
            .with_target(_query("sum by (stage) (increase(flywheel_stage_failures_total"
                                '{namespace=~"$namespace"}[$__range]))', "{{stage}} failures", "B", instant=True))
            .display_mode(BarGaugeDisplayMode.BASIC).orientation(VizOrientation.HORIZONTAL)
        )
        .with_panel(
            timeseries.Panel().title("Stage duration p90").span(12).height(8).unit("s")
            .with_target(_query(
                'histogram_quantile(0.9, sum by (stage, le) (rate(flywheel_stage_duration_seconds_bucket'
                '{namespace=~"$namespace"}[$__rate_interval])))', "{{stage}}"))
            .legend(_legend())
        )
        .with_panel(
            timeseries.Panel().title("Time in current phase").span(12).height(8).unit("s")
            .with_target(_query(f"max by (generation, phase) (flywheel_time_in_phase_seconds{{{SELECT}}})",
                                "{{generation}} · {{phase}}"))
            .legend(_legend())
        )
    )


def _offline(dashboard: Dashboard) -> Dashboard:
    """What the evaluation stage measured, against the offline gate's band."""
    band = WinRateBand()
    return (
        dashboard.with_row(Row("Offline evaluation"))
        .with_panel(
            timeseries.Panel().title("Reward-model win rate over the parent").span(12).height(9)
            .unit("percentunit").min(0).max(1)
            .description(f"Inside the band [{band.min:.2f}, {band.max:.2f}] the candidate may go on; above it "
                         "the policy is likely gaming the reward model (report, V12); a gap between user and "
                         "internal prompts is a red flag.")
            .with_target(_query(
                f'max by (generation, metric) (flywheel_offline_metric{{{SELECT}, '
                'metric=~"win_rate_user|win_rate_internal"})', "{{generation}} · {{metric}}"))
            .thresholds(_thresholds((None, "orange"), (band.min, "green"), (band.max, "red")))
            .thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE_AND_AREA))
            .legend(_legend())
        )
        .with_panel(
            bargauge.Panel().title("Instruction following and violations per generation").span(12).height(9)
            .unit("percentunit").min(0).max(1)
            .with_target(_query(
                f'max by (generation, metric) (flywheel_offline_metric{{{SELECT}, '
                'metric=~"instruction_following|violation_rate|false_refusal_rate"})',
                "{{generation}} · {{metric}}", instant=True))
            .display_mode(BarGaugeDisplayMode.GRADIENT).orientation(VizOrientation.HORIZONTAL)
        )
        .with_panel(
            timeseries.Panel().title("Style artifacts (rates)").span(12).height(8).unit("percentunit")
            .description("Emojis per response, share of list-formatted and stock-phrase responses of the "
                         "candidate; a jump between generations is the reward hacking the report saw.")
            .with_target(_query(
                f'max by (generation, metric) (flywheel_offline_metric{{{SELECT}, '
                'metric=~"emoji_rate|list_rate|stock_phrase_rate"})', "{{generation}} · {{metric}}"))
            .legend(_legend())
        )
        .with_panel(
            timeseries.Panel().title("Style artifacts (mean length, words)").span(12).height(8).unit("none")
            .with_target(_query(
                f'max by (generation) (flywheel_offline_metric{{{SELECT}, metric="mean_length"}})',
                "{{generation}}"))
            .legend(_legend())
        )
    )


def _online(dashboard: Dashboard) -> Dashboard:
    """The canary's A/B test: lift with its always-valid interval, and the alarms."""
    return (
        dashboard.with_row(Row("Online A/B test"))
        .with_panel(
            timeseries.Panel().title("Online lift per generation (estimate and interval)").span(16).height(9)
            .unit("percentunit")
            .description("Relative lift of the candidate over the control arm with its always-valid "
                         "confidence bounds; promotion needs the lower bound above the minimum lift.")
            .with_target(_query(f"max by (generation, metric, bound) (flywheel_online_lift{{{SELECT}}})",
                                "{{generation}} · {{metric}} · {{bound}}"))
            .thresholds(_thresholds((None, "transparent"), (0, "green")))
            .thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE))
            .legend(_legend())
        )
        .with_panel(
            stat.Panel().title("Gate alarms").span(8).height(9)
            .description("1 = raised: sample-ratio mismatch, a guardrail breach, offline/online divergence.")
            .with_target(_query(f"max by (generation) (flywheel_srm_detected{{{SELECT}}})",
                                "{{generation}} SRM", "A", instant=True))
            .with_target(_query(f"max by (generation, guardrail) (flywheel_guardrail_breach{{{SELECT}}})",
                                "{{generation}} {{guardrail}}", "B", instant=True))
            .with_target(_query(f"max by (generation) (flywheel_overfitting_alarm{{{SELECT}}})",
                                "{{generation}} divergence", "C", instant=True))
            .thresholds(_thresholds((None, "green"), (1, "red")))
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        )
        .with_panel(
            timeseries.Panel().title("Gate decisions").span(12).height(8)
            .with_target(_query('sum by (gate, outcome) (increase(flywheel_gate_decisions_total'
                                '{namespace=~"$namespace"}[$__rate_interval]))', "{{gate}} · {{outcome}}"))
            .legend(_legend())
        )
        .with_panel(
            timeseries.Panel().title("Engagement breadth per arm (engaged / exposed users)")
            .span(12).height(8)
            .unit("percentunit")
            .with_target(_query(
                f"sum by (generation, arm) (flywheel_users_engaged_total{{{SELECT}}})"
                f" / sum by (generation, arm) (flywheel_users_exposed_total{{{SELECT}}})",
                "{{generation}} · {{arm}}"))
            .legend(_legend())
        )
    )


def _flywheels(dashboard: Dashboard) -> Dashboard:
    """Flywheels (kube/flywheel.py): the climb of each one, its streaks, and how fast the next turn starts."""
    fw = 'namespace=~"$namespace"'
    return (
        dashboard.with_row(Row("Flywheel trajectory"))
        .with_panel(
            timeseries.Panel().title("Deployed generation per Flywheel").span(8).height(8)
            .description("Number of each Flywheel's latest promoted generation: a climbing staircase while the "
                         "flywheel turns; flat while its generations roll back.")
            .with_target(_query(f"max by (namespace, flywheel) (flywheel_flywheel_last_promoted_generation{{{fw}}})",
                                "{{namespace}}/{{flywheel}}"))
            .legend(_legend())
        )
        .with_panel(
            timeseries.Panel().title("Flywheel generations started, promoted, rolled back").span(8).height(8)
            .with_target(_query(f"sum by (flywheel, event) (increase(flywheel_flywheel_generations_total{{{fw}}}"
                                "[$__rate_interval]))", "{{flywheel}} · {{event}}"))
            .legend(_legend())
        )
        .with_panel(
            stat.Panel().title("Flywheel streaks and pauses").span(8).height(8)
            .description("Generations in a row promoted, rolled back or without a clear lift; paused = 1 when a "
                         "stop rule paused the Flywheel (the reason label says which).")
            .with_target(_query(f"max by (flywheel, kind) (flywheel_flywheel_streak{{{fw}}})",
                                "{{flywheel}} {{kind}}", "A", instant=True))
            .with_target(_query(f"max by (flywheel, reason) (flywheel_flywheel_paused{{{fw}}})",
                                "{{flywheel}} paused {{reason}}", "B", instant=True))
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        )
        .with_panel(
            timeseries.Panel().title("Decision to next start (p50, p95)").span(24).height(7).unit("s")
            .with_target(_query(
                "histogram_quantile(0.5, sum by (le) (rate(flywheel_flywheel_decision_to_start_seconds_bucket"
                f"{{{fw}}}[$__rate_interval])))", "p50", "A"))
            .with_target(_query(
                "histogram_quantile(0.95, sum by (le) (rate(flywheel_flywheel_decision_to_start_seconds_bucket"
                f"{{{fw}}}[$__rate_interval])))", "p95", "B"))
            .legend(_legend())
        )
    )


def _health(dashboard: Dashboard) -> Dashboard:
    """What keeps the experiment and the operator honest: refused event writes, users in both arms, reconcile
    errors (each has an alert in the chart's PrometheusRule and an entry in docs/runbook.md)."""
    return (
        dashboard.with_row(Row("Health: event writes, arms, reconciles"))
        .with_panel(
            timeseries.Panel().title("Refused event writes (exporter)").span(8).height(8).unit("short")
            .description("POST /events refused before its body was read (missing or wrong writers' token): a chat "
                         "backend with a stale token loses engagement events, or something else is writing. "
                         "Alert: FlywheelExporterRefusingWrites.")
            .with_target(_query("sum by (reason) (increase(flywheel_exporter_refused_writes_total"
                                "[$__rate_interval]))", "{{reason}}"))
            .legend(_legend())
        )
        .with_panel(
            timeseries.Panel().title("Crossover users (share of exposed)").span(8).height(8)
            .unit("percentunit").min(0)
            .description("Exposed users seen in both arms, as a share of the exposed users: above the generation's "
                         "promotion.crossoverTolerance (0.01 by default) the arms are not sticky and the gate stops "
                         "the canary. Alert: FlywheelCrossoverUsers.")
            .with_target(_query(
                f"sum by (generation) (flywheel_crossover_users_total{{{SELECT}}})"
                f" / sum by (generation) (flywheel_users_exposed_total{{{SELECT}}})", "{{generation}}"))
            .thresholds(_thresholds((None, "green"), (0.01, "red")))
            .thresholds_style(GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE))
            .legend(_legend())
        )
        .with_panel(
            timeseries.Panel().title("Reconcile errors").span(8).height(8).unit("short")
            .description("Reconciles that ended in an error: invalid_spec (a spec or allowlist refusal), "
                         "api_transient (retried), api_refused (the API server refused a child). "
                         "Alert: FlywheelReconcileErrors.")
            .with_target(_query('sum by (namespace, reason) (increase(flywheel_reconcile_errors_total'
                                '{namespace=~"$namespace"}[$__rate_interval]))', "{{namespace}} · {{reason}}"))
            .legend(_legend())
        )
    )


SCHEMA_VERSION = 42
"""Grafana's current dashboard schema (LATEST_VERSION of its schemaversion migrations, Grafana 12): a dashboard
at it is loaded as it is. The SDK writes 36; nothing this dashboard uses changes in migrations 37-42 (legend,
table and time-picker options it does not set; hideFrom overrides it has none of), which a test checks."""


def build_dashboard() -> Dashboard:
    """The whole dashboard, as a builder."""
    dashboard = (
        Dashboard("CharacterFlywheel").uid(UID).tags(["characterflywheel", "generated"])
        .description("FlywheelGenerations: phases, stages, offline gate, online A/B test. Generated by "
                     "flywheel_operator.dashboard; do not edit by hand.")
        .refresh("1m").time("now-7d", "now").editable()
    )
    return _flywheels(_health(_online(_offline(_pipeline(_variables(dashboard))))))


def render_dashboard() -> str:
    """The dashboard JSON exactly as committed in the chart (sorted keys, two-space indent, final newline)."""
    built = json.loads(JSONEncoder(sort_keys=True).encode(build_dashboard().build()))
    built["schemaVersion"] = SCHEMA_VERSION
    for number, panel in enumerate(built["panels"], start=1):  # the SDK leaves ids null (rows: 0)
        panel["id"] = number
    return json.dumps(built, indent=2, sort_keys=True) + "\n"


def main() -> int:
    sys.stdout.write(render_dashboard())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
