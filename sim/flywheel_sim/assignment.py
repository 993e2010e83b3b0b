"""Sticky A/B assignment, as the operator and the chat backend compute it (`flywheel_operator.arms`, the one
definition): the simulated users are split by the same function real users are."""

from __future__ import annotations

from flywheel_operator.arms import Arm, assign, bucket

__all__ = ["Arm", "assign", "bucket"]
