"""kopf's bookkeeping in our annotations, as kopf's own annotation storages keep it, without its deep copies.

For every watch event of a FlywheelGeneration, kopf (1.45) builds the object's *essence* (spec, labels and
annotations: what its change handlers compare) by deep-copying the whole body and then deleting `status` from
the copy, and clears its progress annotations from the old and the new essence by deep-copying each once more.
A generation's status (stage records, conditions, the gate's plan) is most of its body, and every status write
comes back as an event: under a burst of finished Jobs these copies were a tenth of the operator's time
(`python bench/operator.py --profile`, docs/benchmarks.md). The storages below give the same essences (checked
against kopf's in tests/operator/test_bookkeeping.py) from copies of only what they keep or edit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


def _root(field: Any) -> str:
    """The first key of a kopf field spec: `"status.x"`, `("status", "x")` or `["status", "x"]`."""
    if isinstance(field, str):
        return field.split(".", 1)[0]
    parts = list(field)
    return str(parts[0]) if parts else ""


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's `AnnotationsDiffBaseStorage`, building the essence from the body without its status (which the
    essence drops anyway) unless a handler watches a status field (`extra_fields`).

    kopf builds the essence of every event of every resource it handles, but only change handlers (create,
    update, resume) and daemons read it. With `kinds` given, the objects of other kinds (the stage Jobs, whose
    only handlers are an event handler and an index) get an empty essence instead of a deep copy of their spec
    and pod template: a third of the events under a burst of finished Jobs."""

    def __init__(self, *, prefix: str, kinds: Iterable[str] | None = None) -> None:
        super().__init__(prefix=prefix)
        self.kinds = None if kinds is None else frozenset(kinds)

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        if self.kinds is not None and body.get("kind") not in self.kinds:
            return kopf.BodyEssence()
        fields = list(extra_fields or ())
        if "status" in body and not any(_root(field) == "status" for field in fields):
            body = kopf.Body({key: value for key, value in body.items() if key != "status"})
        return super().build(body=body, extra_fields=fields)


class ProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's `AnnotationsProgressStorage`, clearing its annotations from a copy of only the dicts it edits (the
    essence, its metadata and annotations) instead of a deep copy; the rest is shared with the given essence,
    which kopf builds afresh for this call (processing._detect_causes) and never edits."""

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        cleared: dict[str, Any] = dict(essence)
        metadata = cleared.get("metadata")
        if isinstance(metadata, dict):
            cleared["metadata"] = metadata = dict(metadata)
            if isinstance(metadata.get("annotations"), dict):
                metadata["annotations"] = dict(metadata["annotations"])
        # From here on as kopf.AnnotationsProgressStorage.clear, after its deep copy.
        annotations = cleared.get("metadata", {}).get("annotations", {})
        keys = {key for key in annotations if self.prefix and key.startswith(f"{self.prefix}/")}
        self.remove_annotations(cleared, keys)  # type: ignore[arg-type]
        self.remove_empty_stanzas(cleared)  # type: ignore[arg-type]
        return cleared  # type: ignore[return-value]
