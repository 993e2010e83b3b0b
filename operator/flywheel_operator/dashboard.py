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
                'sum by (generation, arm) (flywheel_users_engaged_total{generation=~"$generation"})'
                ' / sum by (generation, arm) (flywheel_users_exposed_total{generation=~"$generation"})',
                "{{generation}} · {{arm}}"))
            .legend(_legend())
        )
    )


def build_dashboard() -> Dashboard:
    """The whole dashboard, as a builder."""
    dashboard = (
        Dashboard("CharacterFlywheel").uid(UID).tags(["characterflywheel", "generated"])
        .description("FlywheelGenerations: phases, stages, offline gate, online A/B test. Generated by "
                     "flywheel_operator.dashboard; do not edit by hand.")
        .refresh("1m").time("now-7d", "now").editable()
    )
    return _online(_offline(_pipeline(_variables(dashboard))))


def render_dashboard() -> str:
    """The dashboard JSON exactly as committed in the chart (sorted keys, two-space indent, final newline)."""
    built = build_dashboard().build()
    return json.dumps(json.loads(JSONEncoder(sort_keys=True).encode(built)), indent=2, sort_keys=True) + "\n"


def main() -> int:
    sys.stdout.write(render_dashboard())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
