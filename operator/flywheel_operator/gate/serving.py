"""Hard SRE guardrails on the predictor's serving metrics (pure): errors and p95 latency, Flagger-style.

Each `ServingGuardrail` is checked at most once per `interval`, on the window of that length that KServe's request
metrics give for both arms: `errors` fails when the canary's 5xx ratio exceeds the parent's by more than
`threshold`, `latency-p95` when the canary's p95 exceeds the parent's × `threshold`. A window with fewer than
`minRequests` canary requests (or a failed read) is not judged; a passed check resets the count; `failures` failed
checks in a row roll the canary back. They never promote and spend no α: they are thresholds, not tests. The
failure counts and the last check's time are carried in the decision's numbers (`serving.<metric>.*`).
"""

from __future__ import annotations

from datetime import timedelta

from flywheel_operator.api import GateCheck, ServingGuardrail, ServingReading, ServingWindow, parse_duration


def evaluate_serving(
    guardrails: list[ServingGuardrail],
    reading: ServingReading | None,
    elapsed: timedelta,
    carried: dict[str, float],
    numbers: dict[str, float],
) -> tuple[list[GateCheck], list[str], list[str]]:
    """(checks, harm reasons, waiting reasons) of this look. A guardrail with failed checks in a row (fewer than
    `failures`) holds promotion back until a check passes."""
    checks: list[GateCheck] = []
    harm: list[str] = []
    waiting: list[str] = []
    hours = elapsed.total_seconds() / 3600.0
    for guardrail in guardrails:
        key = f"serving.{guardrail.metric}"
        failed_in_a_row = int(carried.get(f"{key}.failures", 0.0))
        last = carried.get(f"{key}.checked_hours")
        interval_hours = parse_duration(guardrail.interval).total_seconds() / 3600.0
        if last is not None and hours - last < interval_hours - 1e-9:
            if failed_in_a_row:
                waiting.append(f"serving guardrail {guardrail.metric} failed its last {failed_in_a_row} check(s)")
            continue  # checked less than an interval ago: the windows would overlap
        windows = (reading.windows.get(guardrail.metric) if reading is not None else None) or {}
        control, treatment = windows.get("control"), windows.get("treatment")
        if control is None or treatment is None:
            if reading is not None and guardrail.metric in reading.errors:
                checks.append(
                    GateCheck(
                        name=key,
                        passed=False,
                        message=f"not read: {reading.errors[guardrail.metric]} (not judged this time)",
                    )
                )
            if failed_in_a_row:
                waiting.append(f"serving guardrail {guardrail.metric} failed its last {failed_in_a_row} check(s)")
            continue
        value, why_not = _value(guardrail, control, treatment)
        numbers[f"{key}.checked_hours"] = hours
        numbers[f"{key}.canary_requests"] = treatment.requests
        if value is None:
            checks.append(GateCheck(name=key, passed=True, message=f"not judged: {why_not}."))
            if failed_in_a_row:
                waiting.append(f"serving guardrail {guardrail.metric} failed its last {failed_in_a_row} check(s)")
            continue
        numbers[f"{key}.value"] = value
        failed = value > guardrail.threshold
        failed_in_a_row = failed_in_a_row + 1 if failed else 0
        numbers[f"{key}.failures"] = float(failed_in_a_row)
        limit = f"<= {guardrail.threshold:g} ({guardrail.failures} failed checks in a row roll back)"
        what = (
            f"the canary's 5xx ratio exceeds the parent's by {value:+.4f} over the last {guardrail.interval}"
            if guardrail.metric == "errors"
            else f"the canary's p95 latency is {value:.2f}× the parent's over the last {guardrail.interval}"
        )
        checks.append(
            GateCheck(
                name=key,
                passed=not failed,
                value=value,
                limit=limit,
                n=round(treatment.requests),
                message=f"{what} ({failed_in_a_row} failed check(s) in a row).",
            )
        )
        if failed_in_a_row >= guardrail.failures:
            harm.append(
                f"serving guardrail {guardrail.metric} failed {failed_in_a_row} checks in a row: {what}, above the "
                f"threshold {guardrail.threshold:g}"
            )
        elif failed_in_a_row:
            waiting.append(f"serving guardrail {guardrail.metric} failed its last {failed_in_a_row} check(s)")
    return checks, harm, waiting


def _value(guardrail: ServingGuardrail, control: ServingWindow, treatment: ServingWindow) -> tuple[float | None, str]:
    """The checked value, or None and why the window is not judged."""
    if treatment.requests < guardrail.min_requests:
        return None, f"{treatment.requests:g} canary requests in the window (minRequests {guardrail.min_requests})"
    if control.requests <= 0:
        return None, "the parent served no requests in the window"
    if guardrail.metric == "errors":
        return min(treatment.errors, treatment.requests) / treatment.requests - min(
            control.errors, control.requests
        ) / control.requests, ""
    if treatment.latency_p95_seconds is None or not control.latency_p95_seconds:
        return None, "no p95 latency for an arm"
    return treatment.latency_p95_seconds / control.latency_p95_seconds, ""
