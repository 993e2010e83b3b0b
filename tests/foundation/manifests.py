"""Manifest builders shared by the foundation tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "gen15.yaml", ROOT / "examples" / "local" / "gen1.yaml"]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def minimal(**spec_overrides: Any) -> dict[str, Any]:
    """The smallest valid manifest; overrides are merged into spec."""
    manifest = {
        "apiVersion": "characterflywheel.io/v1alpha1",
        "kind": "FlywheelGeneration",
        "metadata": {"name": "gen2", "generation": 1, "uid": "uid-gen2"},
        "spec": {
            "generation": 2,
            "basePolicy": "/models/base",
            "data": {"userTraffic": {"uri": "/logs/user"}, "internalTraffic": {"uri": "/logs/internal"}},
            "canary": {"inferenceService": "chat"},
        },
    }
    manifest["spec"].update(copy.deepcopy(spec_overrides))
    return manifest


def set_path(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of `document` with the dotted `path` set (list indices as numbers); value DELETE removes it."""
    out = copy.deepcopy(document)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()
