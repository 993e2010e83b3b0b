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
    if (band := band_condition(status)) is not None:
        wanted.append(band)
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


# --- issue 26: whether RL's band control reached its target (h26b) ---------------------------------------------
def band_condition(status: FlywheelGenerationStatus) -> tuple[str, str, str, str] | None:
    """`BandTargetReached` from the rl stage's `band_*` metrics (flywheel_trainer.rl), once it succeeded with the
    band on (`rl.checkpointEvery`): True with how (a checkpoint, or an interpolation toward the parent), False
    when no checkpoint nor interpolation got the win rate down to `rl.bandTarget`."""
    record = status.record("rl")
    if record is None or record.state != "Succeeded" or "band_reached" not in record.metrics:
        return None
    m = record.metrics
    step, alpha, rate, target = int(m["band_chosen_step"]), m["band_alpha"], m["band_win_rate_chosen"], m["band_target"]
    kept = f"RL step {step}" if alpha >= 1 else f"the parent's weights moved {alpha:g} of the way to RL step {step}'s"
    if m["band_reached"]:
        reason = "Checkpoint" if alpha >= 1 else "Interpolation"
        return ("BandTargetReached", "True", reason,
                f"the candidate is {kept}: learned-score win rate {rate:.3f} over the parent, target {target:.2f}.")
    return ("BandTargetReached", "False", "NotReached",
            f"no RL checkpoint nor interpolation toward the parent reached the band target {target:.2f}; the "
            f"candidate is {kept}, the lowest measured, at a learned-score win rate of {rate:.3f} (the offline "
            "gate's win-rate band may stop it).")
# --- end issue 26 ---------------------------------------------------------------------------------------------


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
