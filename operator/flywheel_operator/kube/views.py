"""In-memory views of what the operator watches, fed by kopf indexes, so that a reconcile reads its generation and
the generation's Jobs without an API request (client-go's informer caches; kopf's `@kopf.index`).

kopf keeps one watch per resource kind and calls the indexing functions below on each of its events before any
handler sees that event, and it starts no resource handler before the indexes hold the initial listing (kopf's
"In-memory indexing", Guarantees). A view can still be behind the API server: a Job this operator has just
created, a status it has just written, arrive through the watch a moment later. Where that would change a
decision, the reader falls back to the API (`KubernetesBackend.observe`, `Reconciler`):

- a generation's Jobs come from the index only when it holds every Job the status says is running; otherwise
  (a Job created a moment ago, not echoed yet) they are listed as before;
- a generation's body comes from the index with, as its status, the last status this operator wrote, as long as
  the watch has shown only statuses this operator wrote (`StatusLedger`), or no status at all (a new
  generation); the first reconcile of a generation that has a status (after a restart), and any reconcile after
  the watch showed a status written by someone else or another object of the same name, read it with a GET.

Without kopf (unit tests, a backend built by hand), nothing is bound and every read goes to the API as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flywheel_operator.kube import manifests
from flywheel_operator.planner import JobObservation

Key = tuple[str, str]
Index = Mapping[Any, Iterable[Any]]
"""A kopf.Index (read-only: key -> the values the indexing function returned for each object), or a dict of lists."""

GENERATIONS_INDEX = "flywheel_generation_bodies"
"""Index ids: also the kwargs kopf passes to every handler (two words and plural, as kopf's docs advise)."""
JOBS_INDEX = "flywheel_stage_jobs"


@dataclass(frozen=True)
class IndexedJob:
    """A stage Job as the planner sees it (no result yet: the backend reads that once the Job succeeded)."""

    stage: str
    observation: JobObservation


def generation_entry(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """What the generations index keeps of a FlywheelGeneration event: its body, copied one level deep (kopf's
    body of an object with a daemon is replaced in place on the next event; the nested dicts of one event's
    parsed JSON are never changed, so they are shared)."""
    return {(namespace, name): {key: body[key] for key in body}}


def job_entry(namespace: str, labels: Mapping[str, str], observation: JobObservation) -> dict[Key, IndexedJob]:
    """What the jobs index keeps of a stage Job event (`observation`: `backend.job_observation` of its body),
    under (namespace, its generation)."""
    stage = labels.get(manifests.STAGE_LABEL, "")
    return {(namespace, labels[manifests.GENERATION_LABEL]): IndexedJob(stage, observation)}


@dataclass
class WatchedState:
    """The indexes the backend and the reconciler read, bound by `flywheel_operator.kube.handlers.register` when
    kopf starts (the kopf.Index objects are live: later events update them in place). Unbound: None everywhere."""

    generations: Index | None = None
    jobs: Index | None = None

    def bind(self, indexes: Mapping[str, Any]) -> None:
        self.generations = indexes[GENERATIONS_INDEX]
        self.jobs = indexes[JOBS_INDEX]

    def generation(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The generation's latest watched body (a shallow copy the caller may change), None if unbound or not
        seen (not created yet, deleted, or not echoed yet)."""
        if self.generations is None:
            return None
        for body in self.generations.get((namespace, name)) or ():
            return dict(body)  # one object per (namespace, name)
        return None

    def jobs_of(self, namespace: str, name: str) -> list[IndexedJob] | None:
        """The generation's watched Jobs; None when unbound (then the caller lists them)."""
        if self.jobs is None:
            return None
        return list(self.jobs.get((namespace, name)) or ())


@dataclass
class StatusLedger:
    """The statuses this operator wrote to each generation and the watch has not shown yet, to tell a watch that is
    merely behind (it shows a status from this list: use the newest) from one that shows a status written by
    someone else, or another object of the same name (read the generation from the API then).

    Per generation: the uid of the object, then the status the watch was last known to agree with, then the
    status the API server stored at each later write (from the PATCH response)."""

    statuses: dict[Key, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)
    limit: int = 32
    """Writes kept per generation: a watch further behind than this is treated as unknown (a GET)."""
    unsure: set[Key] = field(default_factory=set)
    """Generations whose watched status cannot be trusted until a GET (`seed`) has been made."""

    def settle(self, key: Key, uid: str, watched: dict[str, Any]) -> dict[str, Any] | None:
        """The status to plan from, given the object's uid and the status the watch shows. None when the watch
        shows a status this operator did not write, or another object, or when nothing is known of a generation
        that has a status: read it from the API then (`seed`). A generation never seen with no status is new (its
        first reconcile): the watch has all of it."""
        known_uid, known = self.statuses.get(key, ("", []))
        if known and known_uid == uid:
            for position in range(len(known) - 1, -1, -1):
                if known[position] == watched:
                    del known[:position]  # the watch has caught up to here
                    return known[-1]
        if key in self.statuses:
            self.statuses.pop(key)
            self.unsure.add(key)
        if watched or key in self.unsure:
            return None
        self.seed(key, uid, watched)
        return watched

    def seed(self, key: Key, uid: str, status: dict[str, Any]) -> None:
        """The status just read from the API: the ledger starts over from it."""
        self.statuses[key] = (uid, [status])
        self.unsure.discard(key)

    def wrote(self, key: Key, uid: str, status: dict[str, Any]) -> None:
        """A status write to the object `uid` went through, and the API server stored `status`."""
        known_uid, known = self.statuses.get(key, ("", []))
        if known_uid != uid or len(known) >= self.limit:
            self.statuses.pop(key, None)  # unknown object, or a watch that far behind: start over with a GET
            self.unsure.add(key)
            return
        known.append(status)

    def forget(self, key: Key) -> None:
        """The generation was deleted: a new one of the same name starts afresh."""
        self.statuses.pop(key, None)
        self.unsure.discard(key)
