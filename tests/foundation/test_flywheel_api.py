"""The Flywheel API: the committed CRD is what the models generate, structural, with its printer columns and CEL
rules; the examples validate against both the models and the CRD schema; bad input names its field."""

from __future__ import annotations

import copy
from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml
from flywheel_operator.api.flywheel import FLYWHEEL_NAME_LIMIT, Flywheel, render_template, template_problems
from flywheel_operator.cli import main as flywheel
from flywheel_operator.crd import as_json_schema, flywheel_crd, render_flywheel_crd_yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.foundation.test_crd import _walk

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "flywheel.yaml", ROOT / "examples" / "local" / "flywheel.yaml",
            ROOT / "tests" / "local" / "tiny-flywheel.yaml"]
SCHEMA = flywheel_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
_CEL = celpy.Environment()


def _cel(rule: str, value) -> bool:
    return bool(_CEL.program(_CEL.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


def test_committed_crd_matches_the_models():
    for folder in (ROOT / "crds", ROOT / "charts" / "characterflywheel" / "crds"):
        assert (folder / "flywheels.yaml").read_text() == render_flywheel_crd_yaml(), (
            f"{folder}/flywheels.yaml drifted from the API models: run `make crd`")


def test_crd_names_columns_and_structure():
    doc = flywheel_crd()
    assert doc["metadata"]["name"] == "flywheels.characterflywheel.io"
    assert doc["spec"]["names"]["shortNames"] == ["fw"] and doc["spec"]["names"]["kind"] == "Flywheel"
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["In-flight"] == ".status.inFlight" and columns["Phase"] == ".status.inFlightPhase"
    assert columns["Last-promoted"] == ".status.lastPromoted" and columns["Streak"] == ".status.streak"
    assert columns["Next-start"] == ".status.nextStartAt"
    forbidden = {"$ref", "anyOf", "allOf", "oneOf", "$defs", "title", "const"}
    for path, node in _walk(SCHEMA):
        if path.endswith(".properties") or path.endswith("x-kubernetes-validations"):
            continue
        assert not forbidden & node.keys(), f"{path} has {forbidden & node.keys()}"
    template = SCHEMA["properties"]["spec"]["properties"]["template"]["properties"]["spec"]["properties"]
    assert {"generation", "parent", "basePolicy", "suspend"}.isdisjoint(template)
    assert {"data", "stages", "canary", "promotion"} <= set(template)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_models_and_crd(path):
    doc = yaml.safe_load(path.read_text())
    Flywheel.model_validate(doc)
    jsonschema.Draft4Validator(SCHEMA).validate(doc)
    jsonschema.validate(doc, as_json_schema(SCHEMA))
    assert all(_cel(r["rule"], doc) for r in SCHEMA["x-kubernetes-validations"])
    schedule_rules = SCHEMA["properties"]["spec"]["properties"]["schedule"]["x-kubernetes-validations"]
    assert all(_cel(r["rule"], doc["spec"].get("schedule", {"policy": "on-decision"})) for r in schedule_rules)


@pytest.mark.parametrize(("schedule", "field"), [
    ({"policy": "interval"}, "interval"), ({"policy": "cron"}, "cron"),
    ({"policy": "cron", "cron": "61 * * * *"}, "cron"),
    ({"policy": "on-decision", "interval": "7d"}, "interval"),
])
def test_schedule_problems_name_the_field_in_models_and_crd(schedule, field):
    doc = yaml.safe_load(EXAMPLES[0].read_text())
    doc["spec"]["schedule"] = schedule
    with pytest.raises(Exception, match=f"schedule.{field}"):
        Flywheel.model_validate(doc)
    rules = SCHEMA["properties"]["spec"]["properties"]["schedule"]["x-kubernetes-validations"]
    if "61" not in str(schedule):  # the cron syntax is checked by the operator's model, not CEL
        assert not all(_cel(r["rule"], {"concurrencyPolicy": "Forbid", **schedule}) for r in rules)


@given(st.from_regex(r"\A[a-z][-a-z0-9]{0,45}\Z"))
def test_name_rule_agrees_with_the_model(name):
    doc = yaml.safe_load(EXAMPLES[2].read_text())
    doc["metadata"]["name"] = name
    crd_ok = all(_cel(r["rule"], doc) for r in SCHEMA["x-kubernetes-validations"])
    try:
        Flywheel.model_validate(doc)
        model_ok = True
    except Exception:
        model_ok = False
    assert crd_ok == (len(name) <= FLYWHEEL_NAME_LIMIT and not name.endswith("-"))
    if crd_ok:  # the CRD refuses no name the model accepts; the model also checks the derived names
        assert model_ok or len(name) > 20


@given(st.dictionaries(st.sampled_from(["generation", "window.start", "window.end", "window.days", "flywheel"]),
                       st.text(alphabet="abc123-", min_size=1, max_size=8), min_size=5, max_size=5))
def test_render_replaces_every_variable(variables):
    text = "s3://b/{{ flywheel }}/{{generation}}/{{ window.start }}_{{ window.end }}?d={{  window.days }}"
    assert not template_problems(text)
    rendered = render_template({"a": [text]}, variables)["a"][0]
    assert "{{" not in rendered and variables["window.start"] in rendered


def test_validate_command_accepts_flywheels(capsys):
    assert flywheel(["validate", *map(str, EXAMPLES)]) == 0
    assert "examples/flywheel.yaml: OK (Flywheel chat, from generation 15)" in capsys.readouterr().out


def test_validate_command_names_a_bad_template_variable(tmp_path, capsys):
    doc = copy.deepcopy(yaml.safe_load(EXAMPLES[0].read_text()))
    doc["spec"]["template"]["spec"]["data"]["userTraffic"]["uri"] = "s3://logs/{{ window.from }}/"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert flywheel(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "spec.template.spec.data.userTraffic.uri" in out and "window.from" in out
