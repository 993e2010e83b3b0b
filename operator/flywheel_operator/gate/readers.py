"""Readers of the per-arm sufficient statistics: PromQL over Prometheus' HTTP API, the exporter's store, and (for
`promotion.source.sql`) one SQL query over the event log (gate.sqlsource).

A failed read is data, not an exception (house style: decisions as data): the reader returns an OnlineReading
whose `error` says why, and the gate turns that into CONTINUE, never into zeros. Empty results, NaN, more than
one series, stale samples, HTTP errors and timeouts are all "no data". Optional series (the CUPED sums, a
guardrail) that are missing only switch CUPED off or leave that guardrail unproven; a missing crossover count is 0
(the exporter writes it only once a user crossed).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from pydantic import ValidationError

from flywheel_operator.api import (
    ArmStats,
    DecisionPlan,
    OnlineReading,
    PromotionSpec,
    ServingReading,
    ServingWindow,
)
from flywheel_operator.gate.store import EngagementStore

ARMS = ("control", "treatment")
REQUIRED = ("users", "engaged", "depth_sum", "depth_sum_squares", "responses")
OPTIONAL = (
    "pre_sum",
    "pre_sum_squares",
    "pre_cross_sum",
    "responses_sum_squares",
    "adopted",
    "depth_log_sum",
    "depth_log_sum_squares",
)
"""Missing ones read as None: CUPED off, a guardrail or depth refused by the gate with the fix in its reason."""


class NoData(Exception):
    """A query returned nothing usable; the message says which query and why."""


@dataclass
class PrometheusReader:
    """Reads both arms with instant queries evaluated at the same `now`, so all sums come from one scrape."""

    promotion: PromotionSpec
    client: httpx.Client | None = None
    timeout: float = 10.0
    """Seconds per HTTP request (also sent to Prometheus as the query timeout)."""
    retries: int = 2
    """Further attempts after a transport error, a timeout or a 5xx; a 4xx (bad query) is not retried."""
    backoff: float = 0.5
    """Seconds before the first retry, doubled for each further one."""
    max_age: timedelta = timedelta(minutes=5)
    """A sample older than this at `now` is stale: no data."""
    max_event_age: timedelta = timedelta(minutes=30)
    """The experiment's latest event (`queries.last_event`) older than this at `now`: no data. An aggregated
    instant query is always evaluated at `now`, so only the exporter's own clock shows that events stopped."""
    sleep: Callable[[float], None] = time.sleep

    def read(
        self, *, generation: str, namespace: str, now: datetime, revisions: dict[str, str] | None = None
    ) -> OnlineReading:
        """Both arms' sums; with `revisions` (the arms' predictor revisions, `serving_revisions`) also the serving
        metrics of the hard SRE guardrails, read even when the engagement sums are not there (yet)."""
        client = self.client or httpx.Client(base_url=self.promotion.prometheus_url, timeout=self.timeout)
        serving = None
        try:
            if revisions and self.promotion.serving_guardrails:
                serving = self.read_serving(client, namespace=namespace, revisions=revisions, now=now)
            self._check_events_flow(client, generation, namespace, now)
            arms = {arm: self._read_arm(client, arm, generation, namespace, now) for arm in ARMS}
            crossover = self._crossover(client, generation, namespace, now)
        except NoData as exc:
            return OnlineReading(at=now, error=str(exc), serving=serving)
        finally:
            if self.client is None:
                client.close()
        try:
            control = ArmStats.model_validate(arms["control"])
            treatment = ArmStats.model_validate(arms["treatment"])
            return OnlineReading(
                at=now, control=control, treatment=treatment, crossover_users=crossover, serving=serving
            )
        except ValidationError as exc:
            return OnlineReading(
                at=now, error=f"inconsistent sums from Prometheus: {exc.errors()[0]['msg']}", serving=serving
            )

    # --- issue 25: KServe's serving metrics for the hard SRE guardrails (h25) ------------------------------
    def read_serving(
        self, client: httpx.Client, *, namespace: str, revisions: dict[str, str], now: datetime
    ) -> ServingReading:
        """Each serving guardrail's window of both arms (requests, 5xx, p95 latency). A guardrail whose queries
        fail is reported in `errors` and not judged this time; it never blocks the engagement reading."""
        queries = self.promotion.serving_queries
        windows: dict[str, dict[str, ServingWindow]] = {}
        errors: dict[str, str] = {}
        for guardrail in self.promotion.serving_guardrails:
            try:
                arms = {}
                for arm in ARMS:
                    labels = {"namespace": namespace, "revision": revisions[arm], "window": guardrail.interval}
                    requests = self._value(client, queries.requests.format(**labels), now, empty=0.0)
                    errors_ = self._value(client, queries.errors.format(**labels), now, empty=0.0)
                    p95 = None
                    if guardrail.metric == "latency-p95" and requests > 0:
                        p95 = self._value(client, queries.latency_p95.format(**labels), now)
                    arms[arm] = ServingWindow(requests=requests, errors=errors_, latency_p95_seconds=p95)
                windows[guardrail.metric] = arms
            except (NoData, KeyError, ValidationError) as exc:
                errors[guardrail.metric] = f"no {arm} revision known" if isinstance(exc, KeyError) else str(exc)
        return ServingReading(windows=windows, errors=errors)

    # --- end issue 25 -------------------------------------------------------------------------------------

    def _crossover(self, client: httpx.Client, generation: str, namespace: str, now: datetime) -> int:
        """Users seen in both arms; no series is 0 (none crossed yet), anything else unusable is no data."""
        template = self.promotion.queries.crossover
        if not template:
            return 0
        query = template.format(generation=generation, namespace=namespace)
        return _whole(self._value(client, query, now, empty=0.0), "crossover")

    def _read_arm(self, client: httpx.Client, arm: str, generation: str, namespace: str, now: datetime) -> dict:
        queries = self.promotion.queries
        labels = {"arm": arm, "generation": generation, "namespace": namespace}
        values: dict = {}
        for name in REQUIRED:
            values[name] = self._value(client, getattr(queries, name).format(**labels), now)
        for name in OPTIONAL:
            try:
                values[name] = self._value(client, getattr(queries, name).format(**labels), now)
            except NoData:
                values[name] = None
        values["guardrails"] = {}
        for guardrail in self.promotion.guardrails:
            query = queries.guardrail.format(**labels, guardrail=guardrail.name)
            # A missing guardrail stays missing: the gate reports it unmeasured and will not promote.
            with contextlib.suppress(NoData):
                values["guardrails"][guardrail.name] = self._value(client, query, now)
            if guardrail.name in values["guardrails"]:  # present but not a count: the whole reading is no data
                values["guardrails"][guardrail.name] = _whole(
                    values["guardrails"][guardrail.name], f"guardrail {guardrail.name!r}"
                )
            for field, template in (
                ("guardrail_sum_squares", queries.guardrail_sum_squares),
                ("guardrail_cross_sums", queries.guardrail_cross_sum),
            ):  # per-user sums: missing ones leave that guardrail with the per-response variance
                with contextlib.suppress(NoData):
                    values.setdefault(field, {})[guardrail.name] = self._value(
                        client, template.format(**labels, guardrail=guardrail.name), now
                    )
        values["users"] = _whole(values["users"], "users")
        values["engaged_users"] = _whole(values.pop("engaged"), "engaged")
        values["responses"] = _whole(values["responses"], "responses")
        adopted = values.pop("adopted")
        values["adopted_users"] = _whole(adopted, "adopted") if adopted is not None else 0
        return values

    def _check_events_flow(self, client: httpx.Client, generation: str, namespace: str, now: datetime) -> None:
        template = self.promotion.queries.last_event
        if not template:
            return
        latest = self._value(client, template.format(generation=generation, namespace=namespace), now)
        age = now.timestamp() - latest
        if age > self.max_event_age.total_seconds():
            raise NoData(
                f"the latest engagement event of {generation!r} is {age:.0f}s old (limit "
                f"{self.max_event_age.total_seconds():.0f}s, stale): is the chat backend still posting events?"
            )

    def _value(self, client: httpx.Client, query: str, now: datetime, *, empty: float | None = None) -> float:
        """The one fresh, finite sample of `query`; `empty` (when given) stands for a result with no series."""
        payload = self._query(client, query, now)
        data = payload.get("data", {})
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            samples = [result]
        elif kind == "vector":
            if not result and empty is not None:
                return empty
            if not result:
                raise NoData(f"query {query!r} returned no series (nothing exported yet, or the target is down)")
            if len(result) > 1:
                raise NoData(f"query {query!r} returned {len(result)} series; the template must aggregate to one")
            samples = [result[0]["value"]]
        else:
            raise NoData(f"query {query!r} returned a {kind!r}; an instant vector or scalar is needed")
        timestamp, text = samples[0]
        value = float(text)
        if math.isnan(value) or math.isinf(value):
            raise NoData(f"query {query!r} returned {text}")
        age = now.timestamp() - float(timestamp)
        if age > self.max_age.total_seconds():
            raise NoData(f"query {query!r} returned a sample {age:.0f}s old (stale)")
        return value

    def _query(self, client: httpx.Client, query: str, now: datetime) -> dict:
        params = {"query": query, "time": f"{now.timestamp():.3f}", "timeout": f"{self.timeout:g}s"}
        delay = self.backoff
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(delay)
                delay *= 2
            try:
                response = client.get("/api/v1/query", params=params, timeout=self.timeout)
            except httpx.HTTPError as exc:
                last = f"Prometheus at {self.promotion.prometheus_url} is unreachable: {type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = f"Prometheus answered {response.status_code}: {response.text[:200]}"
                continue
            try:
                payload = response.json()
            except ValueError:
                raise NoData(f"Prometheus answered {response.status_code} with a body that is not JSON") from None
            if response.status_code >= 400 or payload.get("status") != "success":
                raise NoData(f"query {query!r} failed: {payload.get('errorType')}: {payload.get('error')}")
            return payload
        raise NoData(f"{last} (after {self.retries + 1} attempts)")


def _whole(value: float, name: str) -> int:
    """Counts must be whole numbers; a fractional one means the template does not read a count."""
    if value < 0 or abs(value - round(value)) > 1e-6:
        raise NoData(f"{name} = {value} is not a non-negative whole count; check the query template")
    return round(value)


# --- issue 25: the reader reads the frozen plan (h25) ---------------------------------------------------------
def frozen_promotion(promotion: PromotionSpec, status: dict | None) -> PromotionSpec:
    """The promotion settings a reader uses: the copy in the plan frozen at the canary's start
    (`status.online.plan.promotion`: its `queries`, `servingQueries`, `prometheusUrl` and `source`), so editing
    the spec's queries during a live canary cannot change what is measured; the spec's own until a plan exists."""
    plan = ((status or {}).get("online") or {}).get("plan")
    if not plan:
        return promotion
    return DecisionPlan.model_validate(plan).promotion


# --- end issue 25 ---------------------------------------------------------------------------------------------


def reader_for(promotion: PromotionSpec):
    """The gate's reader of a promotion spec: the SQL source when `source.sql` is set, else Prometheus. Both have
    `read(generation=, namespace=, now=) -> OnlineReading`."""
    if promotion.source.sql is not None:
        from flywheel_operator.gate.sqlsource import SqlReader

        return SqlReader(promotion)
    return PrometheusReader(promotion)


def read_local(store: EngagementStore, *, generation: str, now: datetime) -> OnlineReading:
    """The local runner's reader: the same sums, straight from the exporter's in-process store."""
    with store.lock:
        control, treatment = store.arm_stats(generation)
        crossover = store.crossover_users(generation)
    if control is None or treatment is None:
        missing = [arm for arm, stats in zip(ARMS, (control, treatment), strict=True) if stats is None]
        return OnlineReading(at=now, error=f"no user exposed to {' and '.join(missing)} of {generation!r} yet")
    return OnlineReading(at=now, control=control, treatment=treatment, crossover_users=crossover)


# --- issue 25 (h25) ---------------------------------------------------------------------------------------


def serving_revisions(mode: str, revisions: dict[str, str]) -> dict[str, str] | None:
    """The arms' predictor revisions from `status.canary.revisions` (kube/knative.py, kube/standard.py): Knative's
    latest created revision is the canary and the latest rolled-out one the parent; Standard mode names the
    predictor (control) and the canary. None until both are known."""
    if mode == "knative":
        arms = {
            "treatment": revisions.get("latestCreatedRevision"),
            "control": revisions.get("latestRolledoutRevision"),
        }
    else:
        arms = {"treatment": revisions.get("canary"), "control": revisions.get("predictor")}
    if not all(arms.values()) or arms["treatment"] == arms["control"]:
        return None
    return {arm: name for arm, name in arms.items() if name}
