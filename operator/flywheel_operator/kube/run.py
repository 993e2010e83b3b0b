"""`flywheel operator`: start kopf with the handlers, /metrics, the liveness endpoint and peering."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from flywheel_operator.kube.admission import MAX_CONCURRENT_RECONCILES, Admission
from flywheel_operator.kube.backend import KubernetesBackend
from flywheel_operator.kube.client import KubeClient
from flywheel_operator.kube.handlers import configure, kopf_event, register
from flywheel_operator.kube.policy import StagePolicy
from flywheel_operator.kube.reconciler import Reconciler
from flywheel_operator.metrics import METRICS

PEERING_NAME = "characterflywheel"


def run(
    *,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    metrics_port: int = 8080,
    health_port: int = 8081,
    peering: str | None = PEERING_NAME,
    standalone: bool = False,
    poll: float = 60.0,
    max_concurrent_reconciles: int = MAX_CONCURRENT_RECONCILES,
    policy: StagePolicy | None = None,
) -> int:
    """Block running the operator until it is stopped (SIGTERM/SIGINT)."""
    if not all_namespaces and not namespaces:
        raise SystemExit("flywheel operator: give --namespace NS (repeatable) or --all-namespaces")
    level = logging.DEBUG if os.environ.get("FLYWHEEL_DEBUG") else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    policy = policy or StagePolicy()
    registry = kopf.OperatorRegistry()
    backend = KubernetesBackend(client=KubeClient(server=""))  # replaced by the login handler
    reconciler = Reconciler(
        backend=backend,
        metrics=METRICS,
        post_event=kopf_event,
        admission=Admission(max_concurrent_reconciles),
        policy=policy,
    )
    unlimited = [what for what, allowed in (("image", policy.images), ("ServiceAccount", policy.service_accounts))
                 if not allowed]
    if unlimited:
        logging.getLogger(__name__).warning(
            "stage Jobs may use any %s a FlywheelGeneration names; narrow with --allowed-image and "
            "--allowed-service-account", " and any ".join(unlimited)
        )
    register(registry, reconciler, poll=poll)

    @kopf.on.startup(registry=registry)
    def _settings(settings: kopf.OperatorSettings, **_: object) -> None:
        configure(settings)
        settings.scanning.disabled = True  # resources are resolved once at start-up: no namespace/CRD watches
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        settings.peering.standalone = standalone or peering is None
        if not settings.peering.standalone:
            settings.peering.name = peering or PEERING_NAME
            settings.peering.mandatory = True  # replicas without the KopfPeering object would all be active
            settings.peering.priority = random.randint(0, 32767)

    @kopf.on.startup(registry=registry)
    def _freeze_heap(**_: object) -> None:
        freeze_heap()

    start_http_server(metrics_port, registry=METRICS.registry)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=all_namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
        )
    )
    return 0


def freeze_heap() -> None:
    """Move everything start-up left on the heap (the modules, kopf, pydantic's schemas, the clients: most of the
    operator's objects) out of the garbage collector's reach (`gc.freeze`), after collecting what is garbage.
    A full collection walks every tracked object, and with 200 generations in flight one came every ~20 s and
    stopped the event loop for 0.6-1 s on a loaded 2-core machine, every handoff in flight waiting (the operator
    benchmark's tail, docs/benchmarks.md); afterwards it walks only what the generations brought."""
    gc.collect()
    gc.freeze()
