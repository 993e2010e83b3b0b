"""kube/bookkeeping.py keeps kopf's bookkeeping as kopf's own annotation storages do: the same essences for any
body, the same cleared progress annotations, and nothing of the given objects edited or shared with what kopf
stores (only the copies differ)."""

from __future__ import annotations

import copy

import kopf
from flywheel_operator.kube import bookkeeping
from flywheel_operator.kube.handlers import ANNOTATION_PREFIX, configure
from hypothesis import given, settings
from hypothesis import strategies as st

PREFIXES = [ANNOTATION_PREFIX, "kopf.zalando.org", "other.example.com"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=4))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abcd"), inner, max_size=3)),
    max_leaves=12,
)
annotation_keys = st.one_of(
    st.sampled_from([f"{p}/{k}" for p in PREFIXES for k in ("last-handled-configuration", "_created", "x")]),
    st.sampled_from(["kubectl.kubernetes.io/last-applied-configuration", "team", "note"]),
)
metadata = st.fixed_dictionaries(
    {"name": st.just("gen1")},
    optional={
        "labels": st.dictionaries(st.sampled_from(["app", "tier"]), st.text(max_size=3), max_size=2),
        "annotations": st.dictionaries(annotation_keys, st.text(max_size=5), max_size=4),
        "resourceVersion": st.text(min_size=1, max_size=3),
    },
)
bodies = st.fixed_dictionaries(
    {"apiVersion": st.just("characterflywheel.io/v1alpha1"), "kind": st.just("FlywheelGeneration"),
     "metadata": metadata},
    optional={key: st.dictionaries(st.sampled_from(["a", "phase", "stages"]), json_values, max_size=3)
              for key in ("spec", "status", "extra")},
)
field_sets = st.lists(st.sampled_from(["spec", "status.phase", ("status", "stages"), ["spec", "a"], "extra"]),
                      max_size=2)
PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(body=bodies, fields=field_sets, prefix=st.sampled_from(PREFIXES))
def test_the_essence_is_kopfs(body, fields, prefix):
    before = copy.deepcopy(body)
    ours = bookkeeping.DiffBaseStorage(prefix=prefix).build(body=kopf.Body(body), extra_fields=fields)
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=prefix).build(body=kopf.Body(body), extra_fields=fields)
    assert ours == theirs
    assert body == before
    # a deep copy still: editing the essence leaves the body alone
    for value in ours.values():
        if isinstance(value, dict):
            value.clear()
    assert body == before


@PROPERTY
@given(body=bodies, prefix=st.sampled_from(PREFIXES))
def test_progress_annotations_are_cleared_as_kopf_does(body, prefix):
    essence = kopf.AnnotationsDiffBaseStorage(prefix=prefix).build(body=kopf.Body(body))
    before = copy.deepcopy(essence)
    ours = bookkeeping.ProgressStorage(prefix=prefix).clear(essence=essence)
    theirs = kopf.AnnotationsProgressStorage(prefix=prefix).clear(essence=copy.deepcopy(essence))
    assert ours == theirs
    assert essence == before  # the given essence is not edited


def test_the_operator_uses_them():
    settings = kopf.OperatorSettings()
    configure(settings)
    assert isinstance(settings.persistence.diffbase_storage, bookkeeping.DiffBaseStorage)
    assert isinstance(settings.persistence.progress_storage, bookkeeping.ProgressStorage)
    assert settings.persistence.diffbase_storage.prefix == ANNOTATION_PREFIX


@settings(max_examples=50, deadline=None)
@given(spec=st.dictionaries(st.sampled_from(["template", "parallelism"]), json_values, max_size=2))
def test_objects_without_change_handlers_get_an_empty_essence_and_generations_kopfs(spec) -> None:
    """Jobs (an event handler and an index only) need no essence: kopf's diff of theirs is never read (issue 29)."""
    ours = kopf.OperatorSettings()
    configure(ours)
    storage = ours.persistence.diffbase_storage
    job = kopf.Body({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": spec})
    assert storage.build(body=job) == {}
    for kind in ("FlywheelGeneration", "Flywheel"):
        body = kopf.Body({"apiVersion": "characterflywheel.io/v1alpha1", "kind": kind, "metadata": {"name": "g"},
                          "spec": spec, "status": {"phase": "Curating"}})
        kopfs = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX).build(body=body)
        assert storage.build(body=body) == kopfs
