"""flywheel_operator.gate.events at its edges (issue 31): experiment keys and labels, the error messages a client
reads to fix a batch, and all-or-nothing batches with their line numbers."""

from __future__ import annotations

import json

import pytest
from flywheel_operator.gate.events import (
    EngagementEvent,
    ExposureEvent,
    experiment_key,
    experiment_labels,
    parse_batch,
    parse_event,
)


def line(**fields: object) -> str:
    return json.dumps({"type": "engagement", "generation": "gen2", "user": "u1", **fields})


def test_the_experiment_key_and_its_labels_round_trip() -> None:
    assert experiment_key("gen2") == "gen2" and experiment_key("gen2", "team-a") == "team-a/gen2"
    assert experiment_labels("gen2") == {"generation": "gen2"}
    assert experiment_labels("team-a/gen2") == {"namespace": "team-a", "generation": "gen2"}
    event = parse_event(line(namespace="team-a"))
    assert event.experiment == "team-a/gen2" and parse_event(line()).experiment == "gen2"


def test_an_event_is_an_exposure_or_an_engagement_by_its_type() -> None:
    exposure = parse_event(json.dumps({"type": "exposure", "generation": "gen2", "user": "u", "arm": "control"}))
    assert isinstance(exposure, ExposureEvent) and exposure.pre_depth == 0.0
    engagement = parse_event(line(turns=3))
    assert isinstance(engagement, EngagementEvent) and engagement.served == 3 and engagement.responses is None
    assert parse_event(line(turns=3, responses=5)).served == 5
    assert parse_event(line(turns=0, responses=0)).served == 0  # responses 0 is not "unset"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{oops", "not JSON: Expecting property name enclosed in double quotes at column 2"),
        ("[1, 2]", 'an event must be a JSON object with "type": "exposure" or "engagement"'),
        ('"exposure"', 'an event must be a JSON object with "type": "exposure" or "engagement"'),
    ],
)
def test_what_is_not_an_event_object_is_refused_in_words(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_event(text)
    assert str(error.value) == message


def test_field_errors_name_the_field_without_the_type_tag() -> None:
    with pytest.raises(ValueError) as error:
        parse_event(line(turns=-1))
    assert str(error.value).startswith("field 'turns': ")
    with pytest.raises(ValueError) as error:
        parse_event(line(guardrails={"Bad_Name": 1}))
    assert str(error.value).startswith("field 'guardrails.Bad_Name.[key]': ")
    with pytest.raises(ValueError) as error:  # two problems: both named, joined by "; "
        parse_event(line(turns=-1, responses=-2))
    assert str(error.value).count("field '") == 2 and "; " in str(error.value)
    with pytest.raises(ValueError) as error:  # an unknown type has no field to name
        parse_event(json.dumps({"type": "click", "generation": "gen2", "user": "u1"}))
    assert not str(error.value).startswith("field")


def test_a_batch_is_all_or_nothing_with_every_bad_lines_number() -> None:
    good, bad = line(), "{oops"
    events, errors = parse_batch(f"{good}\n\n   \n{good}")
    assert len(events) == 2 and errors == []
    events, errors = parse_batch(f"{good}\n{bad}\n\n{bad}")
    assert events == [] and [e.split(":")[0] for e in errors] == ["line 2", "line 4"]
    assert errors[0] == "line 2: not JSON: Expecting property name enclosed in double quotes at column 2"
    assert parse_batch("") == ([], [])


def test_the_utc_day_ignores_the_machines_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from datetime import UTC, datetime

    from flywheel_operator.gate.events import utc_day

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: late on the 23rd in UTC is the 24th there
    time.tzset()
    try:
        assert utc_day(datetime(2026, 11, 23, 23, 30, tzinfo=UTC)) == 20_780  # days since 1970-01-01
    finally:
        monkeypatch.undo()
        time.tzset()
    with pytest.raises(ValueError) as error:
        utc_day(datetime(2026, 11, 23))
    assert str(error.value) == "utc_day needs a timezone-aware datetime, e.g. datetime.now(UTC)"
