"""Arm assignment for chat backends in any language: docs/arm-vectors.json pins flywheel_operator.arms.

The file is what another implementation is checked against, so it must say exactly what the Python does: a test
reads every vector through `assign`, re-derives each bucket from the algorithm as docs/install.md states it, and
fails when the file drifts from `scripts/arm_vectors.py`.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import struct

import pytest
from flywheel_operator.arms import assign, bucket

from tests.chart.conftest import ROOT

VECTORS = ROOT / "docs" / "arm-vectors.json"


def _vectors() -> dict:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


def test_the_python_implementation_matches_every_published_vector() -> None:
    data = _vectors()
    checked = 0
    for case in data["cases"]:
        assert bucket(case["userId"], case["salt"]) == case["bucket"]
        for entry in case["arms"]:
            assert assign(case["userId"], case["salt"], entry["trafficPercent"]) == entry["arm"], (case, entry)
            checked += 1
    assert checked > 1000
    arms = {entry["arm"] for case in data["cases"] for entry in case["arms"]}
    assert arms == {"treatment", "control", None}
    for percent in data["invalidTrafficPercents"]:
        with pytest.raises(ValueError, match="traffic_percent"):
            assign("user-0", "exp", percent)


def _documented_bucket(user_id: str, salt: str) -> float:
    """docs/install.md's algorithm, step by step, as another language would write it."""
    digest = hashlib.sha256((salt + ":" + user_id).encode("utf-8")).digest()
    (n,) = struct.unpack(">Q", digest[:8])  # unsigned 64-bit big-endian
    return float(n) / 18446744073709551616.0 * 100.0  # nearest double, exact division by 2^64, then x100


def test_the_documented_algorithm_reproduces_the_vectors() -> None:
    for case in _vectors()["cases"]:
        digest = hashlib.sha256(f"{case['salt']}:{case['userId']}".encode()).digest()
        assert digest[:8].hex() == case["first8BytesHex"]
        b = _documented_bucket(case["userId"], case["salt"])
        assert b == case["bucket"]
        for entry in case["arms"]:
            p = entry["trafficPercent"]
            expected = "treatment" if b < p else "control" if b < 2 * p else None
            assert expected == entry["arm"]
    text = (ROOT / "docs" / "install.md").read_text()
    assert "docs/arm-vectors.json" in text and "Sticky arms: the algorithm" in text


def test_the_vectors_file_is_what_the_generator_writes_today() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "arm_vectors.py"))["render"]
    assert VECTORS.read_text(encoding="utf-8") == render(), (
        "docs/arm-vectors.json drifted: run `python scripts/arm_vectors.py > docs/arm-vectors.json`"
    )
