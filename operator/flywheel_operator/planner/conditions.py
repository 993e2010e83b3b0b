"""kstatus-style conditions derived from the status, so `kubectl wait --for=condition=Promoted` works.

`Finished` is True on every terminal outcome (Promoted, RolledBack, Failed) with the phase as its reason, so
`kubectl wait --for=condition=Finished` returns whatever the outcome; `Promoted` alone would wait out its timeout
on a rollback or a failure.

A condition's lastTransitionTime moves only when its status flips; otherwise the previous one is kept, so an
unchanged generation produces an unchanged status (and no status write).
"""

from __future__ import annotations

from datetime import datetime

from flywheel_operator.api import Condition, FlywheelGeneration, FlywheelGenerationStatus

TERMINAL_PHASES = ("Promoted", "RolledBack", "Failed")
"""Phases a generation never leaves; each sets the `Finished` condition."""


def _desired(status: FlywheelGenerationStatus) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) for every condition that applies now."""
    phase, message = status.phase, status.message or ""
    terminal_success = phase == "Promoted"
    finished = phase in TERMINAL_PHASES
    wanted = [
        ("Ready", "True" if terminal_success else "False", phase, message),
        (
            "Reconciling",
            "True" if phase not in (*TERMINAL_PHASES, "Suspended") else "False",
            phase,
            message,
        ),
        ("Stalled", "True" if phase == "Failed" else "False", phase, message if phase == "Failed" else ""),
        (
            "Finished",
            "True" if finished else "False",
            phase,
            "; ".join(status.decision.reasons) if finished and status.decision else message if finished else "",
        ),
        (
            "Promoted",
            {"Promoted": "True", "RolledBack": "False", "Failed": "False"}.get(phase, "Unknown"),
            status.decision.outcome if status.decision else "Undecided",
            "; ".join(status.decision.reasons) if status.decision else "",
        ),
    ]
    if status.offline_gate is not None:
        gate = status.offline_gate
        wanted.append(
            (
                "OfflineGatePassed",
                "True" if gate.passed else "False",
                "ChecksPassed" if gate.passed else "ChecksFailed",
                "; ".join(gate.reasons),
            )
        )
    if status.canary is not None:
        ready = status.canary.phase in ("Ready", "Promoted")
        wanted.append(("CanaryReady", "True" if ready else "False", status.canary.phase, status.canary.message or ""))
    if status.online is not None and status.online.divergence is not None:
        alarm = not status.online.divergence.passed
        wanted.append(
            (
                "OverfittingSuspected",
                "True" if alarm else "False",
                "OfflineOnlineDivergence" if alarm else "Consistent",
                status.online.divergence.message,
            )
        )
    return wanted


def update_conditions(
    status: FlywheelGenerationStatus, previous: FlywheelGenerationStatus, generation: FlywheelGeneration, now: datetime
) -> None:
    before = {c.type: c for c in previous.conditions}
    conditions = []
    for kind, state, reason, message in _desired(status):
        old = before.get(kind)
        changed = old is None or old.status != state
        conditions.append(
            Condition(
                type=kind,
                status=state,
                reason=reason,
                message=message[:1000],  # type: ignore[arg-type]
                last_transition_time=now if changed else old.last_transition_time,
                observed_generation=generation.metadata.generation,
            )
        )
    status.conditions = conditions
