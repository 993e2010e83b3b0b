"""Durations and quantities read as Kubernetes reads them, in `flywheel validate` and in the CRD (issue 28 point 6,
issue 24 item 13): Go's duration grammar plus days, apimachinery's quantity grammar, a CEL rule for
minDuration < maxDuration checked with cel-python (and Kubernetes' `split`, which cel-python lacks)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import celpy
import pytest
from celpy import celtypes
from flywheel_operator.api import parse_duration
from flywheel_operator.api.durations import DURATION_PATTERN
from flywheel_operator.api.quantities import QUANTITY_PATTERN, parse_quantity
from flywheel_operator.crd import crd
from flywheel_operator.validation import problems_of
from hypothesis import given
from hypothesis import strategies as st

from tests.foundation.manifests import minimal, set_path

CANARY = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["canary"]
_CEL = celpy.Environment()


def _split(text: celtypes.StringType, separator: celtypes.StringType) -> celtypes.ListType:
    """Kubernetes' CEL strings library `split` (Go's strings.Split)."""
    return celtypes.ListType([celtypes.StringType(part) for part in str(text).split(str(separator))])


def canary_rules_accept(canary: dict) -> bool:
    return all(
        bool(_CEL.program(_CEL.compile(rule["rule"]), functions={"split": _split}).evaluate(
            {"self": celpy.json_to_cel(canary)}))
        for rule in CANARY["x-kubernetes-validations"]
    )


def crd_pattern_accepts(field: str, value: str) -> bool:
    schema = CANARY["properties"][field]
    return len(value) <= schema["maxLength"] and re.search(schema["pattern"], value) is not None


GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h30m", 5400), ("90s", 90), ("1.5h", 5400), ("300ms", 0.3), (".5h", 1800), ("2h45m30s", 9930), ("0", 0),
     ("7d", 7 * 86400), ("1d12h", 36 * 3600), ("1d0.5h", 86400 + 1800), ("10m", 600)],
)
def test_durations_read_as_go_reads_them_plus_days(text, seconds):
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)
    assert crd_pattern_accepts("minDuration", text)


@pytest.mark.parametrize("text", ["banana", "7", "-1h", "+1h", "1.5d", "1h1d", "", " 7d", "1 h", "1hh", "1H", "d"])
def test_bad_durations_are_refused_by_validate_and_by_the_crd(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
    assert not crd_pattern_accepts("minDuration", text)


@given(st.integers(0, 30), st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(list(GO_UNITS))), max_size=4))
def test_composed_durations_add_up(days, parts):
    if not parts and not days:
        return
    text = (f"{days}d" if days else "") + "".join(f"{n}{unit}" for n, unit in parts)
    expected = days * 86400 + sum(n * GO_UNITS[unit] for n, unit in parts)
    # timedelta keeps microseconds: nanoseconds round away, as Kubernetes' own durations would matter nowhere here
    assert parse_duration(text).total_seconds() == pytest.approx(expected, abs=1e-6 * (len(parts) + 1))
    assert crd_pattern_accepts("maxDuration", text)


@given(st.text(alphabet="0123456789.dhmsun+- ", max_size=7))
def test_crd_pattern_and_validate_agree(text):
    try:
        parse_duration(text)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == bool(re.search(DURATION_PATTERN, text))


durations = st.builds(lambda d, h, m: (f"{d}d" if d else "") + (f"{h}h" if h or not d else "") + (f"{m}m" if m else ""),
                      st.integers(0, 9), st.integers(0, 48), st.integers(0, 90))


@given(durations, durations)
def test_cel_min_below_max_rule_agrees_with_validate(low, high):
    manifest = set_path(set_path(minimal(), "spec.canary.minDuration", low), "spec.canary.maxDuration", high)
    validate_ok = not any(p.path == "spec.canary" for p in problems_of(manifest))
    assert validate_ok == (parse_duration(low) < parse_duration(high))
    canary = {"minDuration": low, "maxDuration": high, "checkInterval": "10m"}
    assert canary_rules_accept(canary) == validate_ok


def test_issue_24_item_13_cases_are_refused_by_the_crd():
    assert not crd_pattern_accepts("minDuration", "banana")
    assert not canary_rules_accept({"minDuration": "7d", "maxDuration": "2d", "checkInterval": "10m"})
    assert not canary_rules_accept({"minDuration": "1d", "maxDuration": "2d", "checkInterval": "0s"})
    assert canary_rules_accept({"minDuration": "1h30m", "maxDuration": "2d", "checkInterval": "10m"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Decimal("0.5")), ("16", Decimal(16)), ("200Gi", Decimal(200 * 2**30)), ("1e3", Decimal(1000)),
     ("1.5G", Decimal(1_500_000_000)), ("2E", Decimal(2 * 10**18)), ("100n", Decimal("1e-7")), (".5", Decimal("0.5"))],
)
def test_quantities_read_as_apimachinery_reads_them(text, value):
    assert parse_quantity(text) == value
    assert re.fullmatch(QUANTITY_PATTERN, text)


@pytest.mark.parametrize("text", ["lots", "900GB", "2 cores", "-1", "1e", "1Kb", "Gi", "", "1.2.3"])
def test_bad_quantities_are_refused(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)
    assert not re.fullmatch(QUANTITY_PATTERN, text)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.resources.cpu", "lots", "'lots' is not a Kubernetes quantity"),
        ("spec.canary.serving.cpu", "lots", "'lots' is not a Kubernetes quantity"),
        ("spec.canary.serving.memory", "900GB", "write 900Gi (powers of 2) or 900G (powers of 10)"),
        ("spec.resources.memory", "900GB", "'B' is not a unit"),
        ("spec.promotion.prometheusUrl", "not-a-url", "'not-a-url' is not an http(s) URL"),
        ("spec.canary.checkInterval", "0s", "'0s' is zero"),
        ("spec.canary.minDuration", "banana", "'banana' is not a duration"),
    ],
)
def test_validate_refuses_the_issue_28_values_naming_the_field(path, value, message):
    problems = problems_of(set_path(minimal(), path, value))
    assert [p.path for p in problems] == [path]
    assert message in str(problems[0])


def test_validate_accepts_go_durations_and_kubernetes_quantities():
    manifest = minimal(canary={"inferenceService": "chat", "minDuration": "1h30m", "maxDuration": "1d12h",
                               "checkInterval": "90s", "serving": {"cpu": "500m", "memory": "1.5Gi"}})
    assert problems_of(manifest) == []


def test_cross_field_problems_are_listed_with_field_errors():
    manifest = minimal(canary={"inferenceService": "chat", "minDuration": "7d", "maxDuration": "2d",
                               "trafficPercent": -5})
    manifest["spec"]["resources"] = {"storage": {"pvc": "claim", "uri": "/data"}, "cpu": "lots"}
    text = "\n".join(map(str, problems_of(manifest)))
    assert "spec.canary.trafficPercent" in text
    assert "spec.canary: canary.minDuration (7d) must be shorter than maxDuration (2d)" in text
    assert "spec.resources.cpu" in text and "spec.resources.storage: set exactly one" in text


def test_a_cross_field_check_on_a_default_that_replaced_a_bad_value_is_not_reported():
    manifest = minimal(canary={"inferenceService": "chat", "minDuration": "banana", "maxDuration": "12h"})
    problems = problems_of(manifest)
    assert [p.path for p in problems] == ["spec.canary.minDuration"]  # not "1d (the default) >= 12h"


def test_durations_are_timedeltas():
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)
