"""`flywheel_generations` (generations by namespace and phase) after any sequence of phase changes and deletions
is what `metrics.phase_counts` gives for the generations the reconciler knows: every phase of a namespace that
has generations (zeros included), none of a namespace that has none. The reconciler moves only the changed
series once a namespace's are there."""

from __future__ import annotations

from flywheel_operator.kube.backend import KubernetesBackend
from flywheel_operator.kube.client import KubeClient
from flywheel_operator.kube.reconciler import Reconciler
from flywheel_operator.metrics import PHASES, OperatorMetrics, phase_counts
from hypothesis import given, settings
from hypothesis import strategies as st

keys = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["g1", "g2", "g3"]))
steps = st.lists(st.one_of(st.tuples(st.just("phase"), keys, st.sampled_from(PHASES)),
                           st.tuples(st.just("forget"), keys, st.none())), max_size=30)


def _series(metrics: OperatorMetrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["namespace"], s.labels["phase"]): s.value
        for family in metrics.generations.collect()
        for s in family.samples
    }


@settings(max_examples=150, deadline=None)
@given(steps=steps)
def test_generations_by_phase_follow_every_change(steps):
    metrics = OperatorMetrics()
    reconciler = Reconciler(backend=KubernetesBackend(client=KubeClient(server="")), metrics=metrics,
                            post_event=lambda body, event: None)
    for kind, (namespace, name), phase in steps:
        if kind == "phase":
            reconciler._set_phase((namespace, name), phase)
        else:
            reconciler.forget(namespace, name)
        expected = phase_counts((ns, p) for (ns, _), p in reconciler._phases.items())
        assert _series(metrics) == {key: float(count) for key, count in expected.items()}
