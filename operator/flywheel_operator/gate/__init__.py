"""The promotion gate: an offline guard over evaluation metrics and an online A/B gate over engagement.

The three functions the planner calls are pure (no I/O, no clocks). The exporter and the readers in
`flywheel_operator.gate.exporter` and `flywheel_operator.gate.readers` are the I/O adapters that feed them;
they are imported from their modules, never from here, so importing the gate pulls in no HTTP stack.
"""

from flywheel_operator.gate.divergence import detect_divergence
from flywheel_operator.gate.offline import evaluate_offline
from flywheel_operator.gate.online import decision_plan, evaluate_online, plan_edits

__all__ = ["decision_plan", "detect_divergence", "evaluate_offline", "evaluate_online", "plan_edits"]
