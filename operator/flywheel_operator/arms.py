"""Sticky A/B arms: a user's arm is a pure function of the experiment's salt and the user id.

The one definition of the assignment. The simulator's users, the operator's published routing (the salt,
the percent and each arm's endpoint in `status.canary.routing`) and the chat backend all use it, so the users
an arm's model answers are the users the gate counts in that arm. Hashing (not a random draw per request) keeps
a user on one arm across requests, sessions and days; a new salt re-randomises everybody.

Standard library only, so a chat backend can import it (or copy its dozen lines) without the operator's
dependencies:

    from flywheel_operator.arms import endpoint_for
    url = endpoint_for(user_id, generation_status["canary"].get("routing"), default=INFERENCE_SERVICE_URL)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

Arm = Literal["control", "treatment"]
ARMS: tuple[Arm, ...] = ("control", "treatment")


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


def endpoint_for(user_id: str, routing: Mapping[str, Any] | None, *, default: str) -> str:
    """The URL that serves `user_id` under `routing` (a generation's `status.canary.routing`: `salt`,
    `trafficPercent`, `endpoints` per arm), else `default` (the InferenceService's URL): while the canary is Ready
    the treatment arm gets the candidate's endpoint and everybody else the control's, so the candidate answers
    exactly the users the gate counts as treatment; before and after, `endpoints` is empty."""
    endpoints = (routing or {}).get("endpoints") or {}
    if not endpoints:
        return default
    assert routing is not None
    arm = assign(user_id, str(routing["salt"]), float(routing["trafficPercent"])) or "control"
    return str(endpoints[arm])
