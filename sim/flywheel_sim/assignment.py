"""Sticky A/B assignment: a user's arm is a pure function of the experiment salt and the user id.

Hashing (not a random draw) keeps a user on one arm across days and sessions, the way a chat app routes a
user bucket to a KServe canary; a new experiment salt re-randomises everybody.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["control", "treatment"]


def bucket(user_id: str, salt: str) -> float:
    """The user's position in [0, 100) for this experiment (uniform over users, stable over time)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def assign(user_id: str, salt: str, traffic_percent: float) -> Arm | None:
    """Treatment for buckets below `traffic_percent`, control for the next `traffic_percent`, else no arm
    (the user is served the control policy but is not part of the experiment)."""
    if not 0 < traffic_percent <= 50:
        raise ValueError(f"traffic_percent must be in (0, 50] (a share of users per arm); got {traffic_percent}")
    b = bucket(user_id, salt)
    if b < traffic_percent:
        return "treatment"
    if b < 2 * traffic_percent:
        return "control"
    return None
