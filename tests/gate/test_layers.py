"""The gate's public surface and its layers: the pure modules import no HTTP stack."""

from __future__ import annotations

import ast
from pathlib import Path

import flywheel_operator.gate as gate

PURE = ("stats.py", "online.py", "offline.py", "divergence.py", "__init__.py")
IO_LIBRARIES = {"httpx", "prometheus_client", "http", "socketserver", "subprocess", "kopf", "kubernetes", "requests"}


def test_public_surface() -> None:
    assert gate.__all__ == ["decision_plan", "detect_divergence", "evaluate_offline", "evaluate_online", "plan_edits"]


def test_pure_modules_import_no_io_library() -> None:
    root = Path(gate.__file__).parent
    for name in PURE:
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in IO_LIBRARIES, f"{name} imports {module}"
                assert module not in {"flywheel_operator.gate.exporter", "flywheel_operator.gate.readers"}
