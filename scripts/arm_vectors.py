"""Writes docs/arm-vectors.json: test vectors for the sticky A/B assignment of `flywheel_operator.arms`.

A chat backend in any language reimplements `assign(user_id, salt, traffic_percent)` from docs/install.md
("Sticky arms: the algorithm") and checks itself against these vectors; tests/foundation/test_arm_vectors.py
checks the Python implementation against the same file and fails when the file drifts from it.

    python scripts/arm_vectors.py > docs/arm-vectors.json
"""

from __future__ import annotations

import hashlib
import json
import math
import sys

from flywheel_operator.arms import assign, bucket

SALTS = ["characters/gen15/6f1c9a2e-8d1b-4c3f-9e0a-5b7d2c4f1a38", "exp", "", "ns/gen-2/ü", "キャラ/世代"]
USERS = ["u", "7", "alice@example.com", "Zoë", "用户-123", "a:b", " leading space", "user-65535"]
MANY_USERS = [f"user-{i}" for i in range(200)]
"""Under the first salt only: enough users that small percents put some in each arm."""
PERCENTS = [0.5, 1, 5, 10, 12.5, 33.3, 50]
INVALID_PERCENTS = [0, -1, 50.5, 100]


def _percents(b: float) -> list[float]:
    """The fixed percents, plus the bucket itself and the next double above it (where <= 50): the comparisons are
    strict, so there the user is control, then treatment."""
    edges = [p for p in (b, math.nextafter(b, math.inf)) if 0 < p <= 50]
    return [float(p) for p in PERCENTS] + edges


def vectors() -> dict:
    cases = []
    pairs = [(SALTS[0], user) for user in MANY_USERS] + [(salt, user) for salt in SALTS for user in USERS]
    for salt, user in pairs:
            key = f"{salt}:{user}".encode()
            digest = hashlib.sha256(key).digest()
            cases.append({
                "userId": user,
                "salt": salt,
                "first8BytesHex": digest[:8].hex(),
                "bucket": bucket(user, salt),
                "arms": [{"trafficPercent": p, "arm": assign(user, salt, p)} for p in _percents(bucket(user, salt))],
            })
    return {
        "description": "Sticky A/B arm assignment of flywheel_operator.arms (docs/install.md, 'Sticky arms: the "
                       "algorithm'). For each case and each entry of 'arms', assign(userId, salt, "
                       "trafficPercent) must return 'arm' (null: not in the experiment, served the control "
                       "policy). 'bucket' is the double in [0, 100) that the arm is read from.",
        "generatedBy": "python scripts/arm_vectors.py > docs/arm-vectors.json",
        "invalidTrafficPercents": INVALID_PERCENTS,
        "cases": cases,
    }


def render() -> str:
    """The file's text: one case per line, so a diff shows which case changed."""
    data = vectors()
    cases = data.pop("cases")
    head = json.dumps(data, indent=1, ensure_ascii=False)[:-2]
    lines = ",\n  ".join(json.dumps(case, ensure_ascii=False) for case in cases)
    return f'{head},\n "cases": [\n  {lines}\n ]\n}}\n'


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
