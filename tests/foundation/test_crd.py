"""The committed CRD and API reference are exactly what the models generate, and the CRD is structural."""

from __future__ import annotations

import typing
from pathlib import Path

import yaml
from flywheel_operator.apidocs import models_in_order, render_api_markdown
from flywheel_operator.crd import crd, render_crd_yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_models():
    committed = (ROOT / "crds" / "flywheelgenerations.yaml").read_text()
    assert committed == render_crd_yaml(), "crds/ drifted from the API models: run `make crd` and commit"


def test_committed_api_docs_match_the_models():
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == render_api_markdown(), "docs/api.md drifted from the API models: run `make crd`"


def test_api_docs_describe_every_field():
    text = render_api_markdown()
    for model in models_in_order():
        assert f"## {model.__name__}" in text
        for name, info in model.model_fields.items():
            assert f"| `{info.alias or name}` |" in text, f"{model.__name__}.{name} missing from docs/api.md"
            assert (info.description or "").strip(), f"{model.__name__}.{name} has no docstring"


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def test_schema_is_structural():
    version = crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    forbidden = {"$ref", "anyOf", "allOf", "oneOf", "$defs", "title", "const"}
    for path, node in _walk(schema):
        if path.endswith(".properties") or path.endswith("x-kubernetes-validations"):
            continue
        assert not forbidden & node.keys(), f"{path} has {forbidden & node.keys()}"
        if "description" in node or "properties" in node or "items" in node:
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert node.get("additionalProperties") is not False, path


def test_crd_names_columns_and_subresources():
    doc = crd()
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "flywheelgenerations.characterflywheel.io"
    assert spec["names"]["shortNames"] == ["fwg"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"].upper() for c in version["additionalPrinterColumns"]] == [
        "GEN",
        "PHASE",
        "STAGE",
        "LIFT",
        "DECISION",
        "AGE",
    ]
    rules = [r["rule"] for _, node in _walk(version["schema"]) for r in node.get("x-kubernetes-validations", [])]
    assert "self.min < self.max" in rules
    assert any("basePolicy" in r for r in rules)


def test_status_schema_covers_every_status_field():
    status = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    from flywheel_operator.api import FlywheelGenerationStatus

    assert set(status) == {info.alias for info in FlywheelGenerationStatus.model_fields.values()}


def test_every_model_field_has_a_type_hint():
    for model in models_in_order():
        hints = typing.get_type_hints(model)
        assert issubclass(model, BaseModel)
        assert set(model.model_fields) <= set(hints)


def test_crd_yaml_parses_back():
    assert yaml.safe_load(render_crd_yaml()) == crd()
