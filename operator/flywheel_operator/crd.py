"""The CustomResourceDefinition, generated from the API models (`flywheel crd`; a test fails on drift).

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema: no $refs, no anyOf for
optional fields (`nullable` instead), boolean `exclusiveMinimum`, no `additionalProperties: false` (the API
server prunes unknown fields instead). Cross-field rules become CEL `x-kubernetes-validations`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from flywheel_operator.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    FlywheelGenerationSpec,
    FlywheelGenerationStatus,
    RetryPolicy,
    StageSettings,
    names,
)
from flywheel_operator.api.durations import cel_duration

# Cross-field rules, keyed by the model's JSON-schema title. They mirror the pydantic validators so a bad
# manifest is refused by `kubectl apply` with the same meaning as by `flywheel validate`.
CEL_RULES: dict[str, list[dict[str, str]]] = {
    "FlywheelGenerationSpec": [
        {
            "rule": "has(self.parent) || has(self.basePolicy)",
            "message": "set parent (a promoted FlywheelGeneration) or basePolicy (a model id or URI)",
        },
        {"rule": "!(has(self.parent) && has(self.basePolicy))", "message": "set only one of parent and basePolicy"},
    ],
    # Durations (issue 24 item 13): the pattern refuses `banana`; CEL compares them, days rewritten to hours.
    "CanarySpec": [
        {
            "rule": f"{cel_duration('minDuration')} < "
            f"{cel_duration('maxDuration')}",
            "message": "canary.minDuration must be shorter than canary.maxDuration",
            "fieldPath": ".minDuration",
        },
        {
            "rule": f"{cel_duration('checkInterval')} > duration('0s')",
            "message": "canary.checkInterval must be above zero, e.g. 10m",
            "fieldPath": ".checkInterval",
        },
    ],
    "WinRateBand": [{"rule": "self.min < self.max", "message": "winRateBand.min must be below winRateBand.max"}],
    "StorageSpec": [{"rule": "has(self.pvc) != has(self.uri)", "message": "set exactly one of pvc and uri"}],
    "RewardModelSettings": [
        {
            "rule": "self.kind != 'user-signal' || has(self.signal)",
            "message": "a user-signal reward model needs signal: continue or thumb-up",
        },
        {
            "rule": "self.kind == 'user-signal' || !has(self.signal)",
            "message": "signal applies only to user-signal reward models",
        },
        {
            "rule": "self.kind == 'pointwise' || !has(self.ruleFeatures) || size(self.ruleFeatures) == 0",
            "message": "ruleFeatures applies only to pointwise reward models",
        },
        {
            "rule": "!has(self.ruleFeatures) || self.ruleFeatures.all(f, self.ruleFeatures.exists_one(g, g == f))",
            "message": "ruleFeatures lists a feature twice; list each once",
        },
    ],
    "StageSettings": [
        {
            "rule": "!has(self.rewardModels) || self.rewardModels.exists(m, m.kind == 'pointwise')",
            "message": "rewardModels needs at least one pointwise model",
        },
    ],
}


def _root_rules() -> list[dict[str, str]]:
    """Rules over metadata.name and the spec together: the names the operator derives (api/names.py) must fit
    Kubernetes' limits. Absent fields take the API's defaults, which the rules spell out."""
    default_models = ", ".join(f"'{m.name}'" for m in StageSettings().reward_models)
    models = (
        "(has(self.spec.stages) && has(self.spec.stages.rewardModels) ? "
        f"self.spec.stages.rewardModels.map(m, m.name) : [{default_models}])"
    )
    attempts = (
        "(has(self.spec.retry) && has(self.spec.retry.maxAttempts) ? self.spec.retry.maxAttempts : "
        f"{RetryPolicy().max_attempts})"
    )
    child = f"size(self.metadata.name) + {len('-reward-') + len('-')} + size(n) + size(string({attempts}))"
    canary = (
        f"size(self.spec.canary.inferenceService) + {len('-' + names.CANARY_PREFIX + names.PREDICTOR_SUFFIX)} "
        "+ size(self.metadata.name)"
    )
    return [
        {
            "rule": f"size(self.metadata.name) <= 40 && self.metadata.name.matches('{names.DNS_1035}')",
            "message": "metadata.name must be a DNS-1035 label (a letter first) of at most 40 characters",
        },
        {
            "rule": f"{models}.all(n, {child} <= {names.CHILD_NAME_LIMIT})",
            "message": f"a stage Job name <name>-reward-<rewardModel>-<attempt> would exceed "
            f"{names.CHILD_NAME_LIMIT} characters: shorten metadata.name or the reward model names",
            "fieldPath": ".spec.stages.rewardModels",
        },
        {
            "rule": f"has(self.spec.canary.mode) && self.spec.canary.mode == 'knative' "
            f"|| {canary} <= {names.NAME_LIMIT}",
            "message": f"KServe's canary name <inferenceService>-candidate-<name>-predictor would exceed "
            f"{names.NAME_LIMIT} characters: shorten metadata.name or canary.inferenceService",
            "fieldPath": ".spec.canary.inferenceService",
        },
    ]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one JSON-schema node (recursively) into Kubernetes' structural OpenAPI v3 subset."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    node = dict(node)
    variants = node.pop("anyOf", None)
    if variants is not None:
        kept = [v for v in variants if v.get("type") != "null"]
        if len(kept) != 1:
            raise ValueError(f"cannot express anyOf {variants} structurally; simplify the model")
        node = {**kept[0], **node, "nullable": True} if len(kept) < len(variants) else {**kept[0], **node}
        if "default" in node and node["default"] is None:
            node.pop("default")
        if "$ref" in node:
            return _structural(node, defs)
    title = node.pop("title", None)
    node.pop("$defs", None)
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if isinstance(node.get("description"), str):
        node["description"] = " ".join(node["description"].split())  # docstrings wrap; the CRD reads on one line
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("format") == "duration":
        node.pop("format")  # Kubernetes' duration format is Go's, which has no 'd'; the pattern checks instead
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    out = {key: _structural(value, defs) for key, value in node.items()}
    if title in CEL_RULES:
        out["x-kubernetes-validations"] = CEL_RULES[title]
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    """Structural schema of one API model, camelCase keys as on the wire."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    """The CRD document as a dict."""
    spec_schema = openapi_schema(FlywheelGenerationSpec)
    status_schema = openapi_schema(FlywheelGenerationStatus)
    columns = [
        {"name": "Gen", "type": "integer", "jsonPath": ".spec.generation"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
        {"name": "Lift", "type": "string", "jsonPath": ".status.lift"},
        {"name": "Decision", "type": "string", "jsonPath": ".status.decisionSummary"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd_document(
        kind=KIND, plural=PLURAL, short_name=SHORT_NAME, columns=columns, root_rules=_root_rules(),
        description=f"{KIND} ({API_VERSION}): one turn of the engagement flywheel.",
        spec_schema=spec_schema, status_schema=status_schema,
    )


def _crd_document(
    *,
    kind: str,
    plural: str,
    short_name: str,
    columns: list[dict[str, str]],
    root_rules: list[dict[str, str]],
    description: str,
    spec_schema: dict[str, Any],
    status_schema: dict[str, Any],
) -> dict[str, Any]:
    """A namespaced CRD of this API group with one served version, a status subresource and printer columns."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "characterflywheel"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["characterflywheel"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "x-kubernetes-validations": root_rules,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated by `flywheel crd` from flywheel_operator.api — do not edit; run `make crd`.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


def as_json_schema(openapi: Any) -> Any:
    """OpenAPI `nullable` → JSON Schema null type, so `jsonschema` can validate manifests against the CRD."""
    if isinstance(openapi, list):
        return [as_json_schema(item) for item in openapi]
    if not isinstance(openapi, dict):
        return openapi
    node = {k: as_json_schema(v) for k, v in openapi.items() if not k.startswith("x-kubernetes-")}
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    if node.get("exclusiveMinimum") is True:
        node["exclusiveMinimum"] = node.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        node["exclusiveMaximum"] = node.pop("maximum")
    return node


# ------------------------------------------------------------------------------------------------- Flywheel
FLYWHEEL_CEL_RULES: dict[str, list[dict[str, str]]] = {
    "FlywheelSchedule": [
        {"rule": "self.policy != 'interval' || has(self.interval)",
         "message": "schedule.policy interval needs schedule.interval, e.g. `interval: 7d`"},
        {"rule": "self.policy != 'cron' || has(self.cron)",
         "message": "schedule.policy cron needs schedule.cron, e.g. `cron: \"0 6 * * 1\"`"},
        {"rule": "self.policy == 'interval' || !has(self.interval)",
         "message": "schedule.interval applies only to `policy: interval`"},
        {"rule": "self.policy == 'cron' || !has(self.cron)", "message": "schedule.cron applies only to `policy: cron`"},
    ],
}
CEL_RULES.update(FLYWHEEL_CEL_RULES)  # titles of Flywheel models only: the FlywheelGeneration CRD is unchanged


def flywheel_crd() -> dict[str, Any]:
    """The Flywheel CRD document as a dict."""
    from flywheel_operator.api.flywheel import (
        FLYWHEEL_KIND,
        FLYWHEEL_NAME_LIMIT,
        FLYWHEEL_PLURAL,
        FLYWHEEL_SHORT_NAME,
        FlywheelSpec,
        FlywheelStatus,
    )

    columns = [
        {"name": "In-flight", "type": "string", "jsonPath": ".status.inFlight"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.inFlightPhase"},
        {"name": "Last-promoted", "type": "string", "jsonPath": ".status.lastPromoted"},
        {"name": "Streak", "type": "string", "jsonPath": ".status.streak"},
        {"name": "Next-start", "type": "date", "jsonPath": ".status.nextStartAt"},
        {"name": "State", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd_document(
        kind=FLYWHEEL_KIND, plural=FLYWHEEL_PLURAL, short_name=FLYWHEEL_SHORT_NAME, columns=columns,
        root_rules=[{
            "rule": f"size(self.metadata.name) <= {FLYWHEEL_NAME_LIMIT} && "
            f"self.metadata.name.matches('{names.DNS_1035}')",
            "message": f"metadata.name must be a DNS-1035 label (a letter first) of at most "
            f"{FLYWHEEL_NAME_LIMIT} characters: generations are named <name>-<number>",
        }],
        description=f"{FLYWHEEL_KIND} ({API_VERSION}): generation after generation from one template, each "
        "starting from the latest promoted one.",
        spec_schema=openapi_schema(FlywheelSpec), status_schema=openapi_schema(FlywheelStatus),
    )


def render_flywheel_crd_yaml() -> str:
    header = "# Generated by `flywheel crd flywheel` from flywheel_operator.api — do not edit; run `make crd`.\n"
    return header + yaml.safe_dump(flywheel_crd(), sort_keys=False, width=120, allow_unicode=True)
