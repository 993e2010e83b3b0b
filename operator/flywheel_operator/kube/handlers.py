"""Thin kopf handlers: each one asks the Reconciler to reconcile a generation and translates its errors.

- create / resume / update(spec): reconcile now; an invalid spec is a kopf.PermanentError (the status already
  says Failed with a Stalled condition and an Event), a transient API error a kopf.TemporaryError with backoff.
- a daemon per generation sleeps until the planner's `requeue_at` (retry backoffs, canary polls, gate checks),
  capped by `poll` as a safety net, and exits once the generation is terminal;
- Job events (finished Jobs labelled with a generation) reconcile the owning generation at once, so the next
  stage starts within the handling latency rather than a poll interval;
- a generation's DELETED event drops its metric series; its daemon ends at its next reconcile (children go with
  their owner references). kopf's own finalizer is never used: it would make `kubectl delete fwg` (or deleting
  the CRD) hang for ever once the operator is uninstalled. Only a generation whose canary is live holds one, the
  revert finalizer (kube/revert.py): deleting it rolls the canary back first, as Flagger's `revertOnDeletion`.

Job events and the daemon's due timers reconcile at Priority.PROGRESS, create/resume/update at Priority.ADMIT, and
the daemon's safety-net polls (nothing was due before the `poll` cap) at Priority.POLL: when many generations
arrive at once, those already running move on first, and new or merely polled ones hold only a share of the
reconcile slots (kube/admission.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import kopf

from flywheel_operator.api import GROUP, KIND, PLURAL, TERMINAL_PHASES, VERSION
from flywheel_operator.api.flywheel import FLYWHEEL_KIND
from flywheel_operator.kube import bookkeeping, revert, views
from flywheel_operator.kube.admission import Priority
from flywheel_operator.kube.backend import job_observation
from flywheel_operator.kube.client import ApiError, KubeClient
from flywheel_operator.kube.manifests import GENERATION_LABEL
from flywheel_operator.kube.reconciler import InvalidSpec, Reconciler
from flywheel_operator.planner import Event

log = logging.getLogger(__name__)

TRANSIENT_DELAY = 1.0
"""Seconds before a handler retries after a timeout, conflict or server error."""
PERSISTENT_DELAY = 30.0
"""Seconds before retrying an error that needs a person (RBAC, an admission webhook), without giving up."""
REVERT_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits between tries to revert a deleted generation's live canary (then a watch replay tries again)."""
ANNOTATION_PREFIX = "characterflywheel.io"

Login = Callable[..., kopf.ConnectionInfo | None]


def kopf_event(body: dict[str, Any], event: Event) -> None:
    """Plan events become Kubernetes Events on the generation (posted by kopf in the background)."""
    kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the kubeconfig (as kopf itself does)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def configure(settings: kopf.OperatorSettings) -> None:
    """Settings every deployment needs: kopf's bookkeeping in our annotations, none in status."""
    # kopf's annotation storages, without deep-copying each event's body (kube/bookkeeping.py)
    settings.persistence.progress_storage = bookkeeping.ProgressStorage(prefix=ANNOTATION_PREFIX)
    # (the kinds with change handlers or daemons: FlywheelGenerations and Flywheels; Jobs need no essence)
    settings.persistence.diffbase_storage = bookkeeping.DiffBaseStorage(prefix=ANNOTATION_PREFIX,
                                                                        kinds=(KIND, FLYWHEEL_KIND))
    # No handler requires a finalizer (`_without_finalizer`): kopf adds this one to no generation and removes it
    # from generations an older operator version marked.
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/operator"


def _retry(exc: ApiError) -> kopf.TemporaryError:
    delay = TRANSIENT_DELAY if exc.transient else PERSISTENT_DELAY
    return kopf.TemporaryError(f"Kubernetes API: {exc}", delay=delay)


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    *,
    login: Login = default_login,
    poll: float = 60.0,
) -> None:
    """Add the operator's handlers to `registry`; `poll` caps how long a generation goes unobserved."""
    resource = {"group": GROUP, "version": VERSION, "plural": PLURAL, "registry": registry}

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        if info is not None:
            reconciler.backend.client = KubeClient.from_connection(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def _close(**_: Any) -> None:
        await reconciler.backend.client.close()

    # The watch's in-memory views (kube/views.py): kopf fills them from its watches, before any handler sees the
    # event and, at start-up, before any resource handler runs; the reconciler reads them instead of a GET of
    # the generation and a list of its Jobs per reconcile.
    @kopf.index(**resource, id=views.GENERATIONS_INDEX)
    async def _index_generation(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return views.generation_entry(namespace, name, body)

    @kopf.index("batch", "v1", "jobs", labels={GENERATION_LABEL: kopf.PRESENT}, registry=registry, id=views.JOBS_INDEX)
    async def _index_job(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return views.job_entry(namespace, labels, job_observation(body))  # type: ignore[arg-type]

    @kopf.on.startup(registry=registry)
    async def _bind_views(**kwargs: Any) -> None:
        reconciler.backend.view.bind(kwargs)  # the live kopf.Index objects, still empty here

    async def reconcile_or_raise(namespace: str, name: str) -> None:
        try:
            await reconciler.reconcile(namespace, name, priority=Priority.ADMIT)
        except InvalidSpec as exc:
            raise kopf.PermanentError(f"invalid FlywheelGeneration spec: {exc}") from exc
        except ApiError as exc:
            raise _retry(exc) from exc

    @kopf.on.create(**resource)
    async def _created(namespace: str, name: str, **_: Any) -> None:
        await reconcile_or_raise(namespace, name)

    @kopf.on.resume(**resource)
    async def _resumed(namespace: str, name: str, **_: Any) -> None:
        await reconcile_or_raise(namespace, name)

    @kopf.on.update(**resource, field="spec")
    async def _updated(namespace: str, name: str, **_: Any) -> None:
        await reconcile_or_raise(namespace, name)

    @kopf.on.event(**resource)
    async def _deleted(event: kopf.RawEvent, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        if event.get("type") == "DELETED":  # a daemon still running ends at its next reconcile (≤ poll)
            reconciler.forget(namespace, name)
        elif body.get("metadata", {}).get("deletionTimestamp") and revert.FINALIZER in (
            body.get("metadata", {}).get("finalizers") or []
        ):
            await _revert(namespace, name)

    async def _revert(namespace: str, name: str) -> None:
        """Roll back the live canary of a generation being deleted, then let it go (kube/revert.py). Event
        handlers are not retried by kopf: transient errors are retried here, and a watch's replay retries later."""
        for delay in REVERT_BACKOFF:
            try:
                await reconciler.revert_deleted(namespace, name)
                return
            except ApiError as exc:
                log.warning("reverting the canary of deleted %s/%s failed, retrying in %ss: %s", namespace, name,
                            delay, exc)
                await asyncio.sleep(delay if exc.transient else PERSISTENT_DELAY)
        log.error("the canary of deleted %s/%s is not reverted yet; its finalizer %s stays until it is",
                  namespace, name, revert.FINALIZER)

    @kopf.daemon(**resource, cancellation_timeout=1.0)
    async def _watch_over(namespace: str, name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        def finished(result: Any) -> bool:
            if result is None:
                reconciler.forget(namespace, name)  # deleted (its DELETED event may still be on the way)
                return True
            return result.status.phase in TERMINAL_PHASES

        await watch(
            f"{namespace}/{name}", lambda: reconciler.reconcile(namespace, name), wake=reconciler.wake_event(
                (namespace, name)), due=lambda: reconciler.requeue_at.get((namespace, name)), clock=reconciler.clock,
            stopped=stopped, poll=poll, finished=finished, invalid_delay=None,
            safety_net=lambda: reconciler.reconcile(namespace, name, priority=Priority.POLL),
        )

    _without_finalizer(registry, _watch_over)

    @kopf.on.event("batch", "v1", "jobs", labels={GENERATION_LABEL: kopf.PRESENT}, registry=registry)
    async def _job_changed(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> None:
        conditions = (body.get("status") or {}).get("conditions") or []
        if not any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions):
            return
        owner = labels[GENERATION_LABEL]
        try:
            await reconciler.reconcile(namespace, owner)
        except InvalidSpec:
            pass  # the generation's own handlers report it
        except ApiError as exc:
            log.warning("reconcile of %s/%s after a Job event failed; the daemon retries: %s", namespace, owner, exc)
            reconciler.requeue_at[(namespace, owner)] = reconciler.clock() + timedelta(seconds=TRANSIENT_DELAY)
            reconciler.wake_event((namespace, owner)).set()

    from flywheel_operator.kube.flywheel import register_flywheels  # Flywheels: generations after each other

    register_flywheels(registry, reconciler, poll=poll, without_finalizer=_without_finalizer)


def _without_finalizer(registry: kopf.OperatorRegistry, daemon: Callable[..., Any]) -> None:
    """kopf marks every daemon as needing a finalizer, to stop it before its object goes. This daemon holds
    nothing that must be released (it ends by itself once the generation is gone), so the finalizer would only
    block `kubectl delete` whenever no operator runs. kopf 1.45 has no public switch; the registered handler is
    replaced by a copy that requires none (tests/operator/test_uninstall.py checks that no finalizer appears)."""
    spawning = registry._spawning
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if getattr(h, "fn", None) is daemon else h
        for h in spawning._handlers
    ]


async def watch(
    what: str,
    reconcile: Callable[[], Awaitable[Any]],
    *,
    wake: asyncio.Event,
    due: Callable[[], datetime | None],
    clock: Callable[[], datetime],
    stopped: kopf.DaemonStopped,
    poll: float,
    finished: Callable[[Any], bool],
    invalid_delay: float | None,
    safety_net: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """A daemon's loop over one object (a FlywheelGeneration, a Flywheel): reconcile when its planner's requeue
    time `due` comes (at most `poll` apart) or when another handler's reconcile moved that time (`wake`); retry API
    errors; end once `finished(result)` says so. An invalid spec ends the loop (`invalid_delay` None) or is looked
    at again after `invalid_delay` seconds. A wake-up that only the `poll` cap brought (nothing was due) calls
    `safety_net` instead of `reconcile` when given: the generations' daemons reconcile then at Priority.POLL, so
    the polls of many generations that came to life together, coming due together, queue behind every Job
    handoff and admission (kube/admission.py)."""
    delay: float | None = None
    polling = False
    while not stopped:
        if delay is None:
            when = due()
            delay = poll if when is None else (when - clock()).total_seconds()
            polling = delay >= poll
        delay = min(max(delay, 0.0), poll)
        woken = await _wait(wake, stopped, delay)
        if stopped:
            return
        if woken:
            wake.clear()
            delay = None
            continue
        try:
            result = await (safety_net() if polling and safety_net is not None else reconcile())
        except InvalidSpec:
            if invalid_delay is None:
                return
            delay, polling = invalid_delay, False  # the spec may be fixed: look again now and then
            continue
        except ApiError as exc:
            log.warning("reconcile of %s failed, retrying: %s", what, exc)
            delay, polling = (TRANSIENT_DELAY if exc.transient else PERSISTENT_DELAY), False
            continue
        if finished(result):
            return
        wake.clear()
        delay = None


async def _wait(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> bool:
    """Sleep up to `timeout`; True when woken by a reconcile elsewhere (the wake-up time may have moved)."""
    if wake.is_set():
        return True
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
    return wake.is_set()
