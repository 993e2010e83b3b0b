"""`flywheel`: the product's command line. Each subcommand is a thin wrapper over a module that does the work.

Heavy imports happen inside the subcommand functions so `flywheel validate` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from flywheel_operator.kube.admission import MAX_CONCURRENT_RECONCILES


def _validate(args: argparse.Namespace) -> int:
    from flywheel_operator.validation import validate_files

    return validate_files(args.files)


def _crd(args: argparse.Namespace) -> int:
    from flywheel_operator.crd import render_crd_yaml, render_flywheel_crd_yaml

    sys.stdout.write(render_flywheel_crd_yaml() if args.kind == "flywheel" else render_crd_yaml())
    return 0


def _docs(args: argparse.Namespace) -> int:
    from flywheel_operator.apidocs import render_api_markdown

    sys.stdout.write(render_api_markdown())
    return 0


def _exporter(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from flywheel_operator.gate.exporter import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    snapshot = Path(args.snapshot) if args.snapshot else None
    if args.token_file is None and not args.allow_unauthenticated_writes:
        logging.getLogger("flywheel.exporter").error(
            "give --token-file (the chat backend's bearer token, from a Secret) or, for a local test only, "
            "--allow-unauthenticated-writes"
        )
        return 2
    shard = None
    if args.shards > 1 or args.shard_index is not None:
        from flywheel_operator.gate.shards import parse_shard_index

        try:
            shard = (parse_shard_index(args.shard_index or "0", args.shards), args.shards)
        except ValueError as exc:
            logging.getLogger("flywheel.exporter").error("%s", exc)
            return 2
    return serve(
        args.host,
        args.port,
        snapshot,
        engaged_min_days=args.engaged_min_days,
        token_file=Path(args.token_file) if args.token_file else None,
        metrics_port=args.metrics_port,
        state=Path(args.state) if args.state else None,
        shard=shard,
        token_grace=args.token_grace,
        cache_mib=args.cache_mib,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _operator(args: argparse.Namespace) -> int:
    from flywheel_operator.kube.policy import StagePolicy
    from flywheel_operator.kube.run import run

    return run(namespaces=args.namespaces or (), all_namespaces=args.all_namespaces, metrics_port=args.metrics_port,
               health_port=args.health_port, peering=None if args.standalone else args.peering,
               standalone=args.standalone, max_concurrent_reconciles=args.max_concurrent_reconciles,
               policy=StagePolicy(images=tuple(args.allowed_images), service_accounts=tuple(args.allowed_accounts)))


def version() -> str:
    """The installed distribution's version (pyproject.toml's `version`)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("characterflywheel")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


# A function that adds subcommands to the parser's subparsers: how a package above the operator (flywheel_local adds
# run, status and report) extends this command line without the operator importing it.
CommandsHook = Callable[[argparse._SubParsersAction], None]


def build_parser(extensions: Sequence[CommandsHook] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check FlywheelGeneration manifests; every error with its field path")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="YAML manifest (several documents per file are fine; other kinds are skipped with a note), "
                   "a directory (its *.yaml and *.yml files, recursively) or - for standard input")
    p.set_defaults(func=_validate)

    p = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API models")
    p.add_argument("kind", nargs="?", choices=["generation", "flywheel"], default="generation",
                   help="generation: FlywheelGeneration (crds/flywheelgenerations.yaml, the default); flywheel: "
                   "Flywheel (crds/flywheels.yaml)")
    p.set_defaults(func=_crd)

    p = sub.add_parser("docs", help="print generated documentation")
    p.add_argument("what", choices=["api"], help="api: the CRD field reference (docs/api.md)")
    p.set_defaults(func=_docs)

    for extend in extensions:
        extend(sub)

    # Further subcommands (exporter, operator, status, report) are added below by their modules' owners.
    p = sub.add_parser("exporter", help="serve the engagement exporter: POST /events, GET /metrics, GET /healthz")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=9101, help="port to listen on")
    p.add_argument(
        "--state",
        default=None,
        help="SQLite database that keeps every user's state across restarts (WAL mode; the store for millions of "
        "users). With --snapshot too, an existing JSON snapshot is imported into a new database once",
    )
    p.add_argument(
        "--snapshot",
        default=None,
        help="JSON snapshot (+ .journal) of earlier versions: alone, the legacy whole-state store; with --state, "
        "imported once",
    )
    p.add_argument(
        "--shards", type=_positive_int, default=1, help="exporter replicas the users are split over (default 1)"
    )
    p.add_argument(
        "--shard-index",
        default=None,
        help="this replica's shard, 0 … shards-1, or a StatefulSet pod name ending in -<ordinal> ($(POD_NAME))",
    )
    p.add_argument(
        "--token-grace",
        type=float,
        default=600.0,
        help="seconds the previous writers' token stays valid after --token-file changes (default 600; 0 for a "
        "leaked token)",
    )
    p.add_argument("--cache-mib", type=_positive_int, default=256, help="SQLite page cache of --state, MiB")
    p.add_argument(
        "--engaged-min-days",
        type=int,
        default=2,
        help="distinct active days (≥ 1 turn each) that make an exposed user engaged, the breadth numerator "
        "(default 2: one visit is exposure, coming back is engagement)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="file holding the bearer token writers must send (`Authorization: Bearer …`); the chart mounts it from "
        "a Secret",
    )
    p.add_argument(
        "--allow-unauthenticated-writes",
        action="store_true",
        help="serve POST /events without a token (local tests only: anyone who reaches the port steers the A/B)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve GET /metrics and /healthz, read-only, on this port (for scrapers the NetworkPolicy admits)",
    )
    p.set_defaults(func=_exporter)

    p = sub.add_parser("operator", help="run the Kubernetes operator (kopf): reconcile FlywheelGenerations")
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--namespace", action="append", dest="namespaces", metavar="NS", help="watch NS (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics")
    p.add_argument("--health-port", type=int, default=8081, help="port of kopf's liveness endpoint /healthz")
    p.add_argument("--max-concurrent-reconciles", type=_positive_int, default=MAX_CONCURRENT_RECONCILES, metavar="N",
                   help="reconciles in flight at once; running generations go before new ones (default %(default)s)")
    p.add_argument("--allowed-image", dest="allowed_images", action="append", default=[], metavar="PATTERN",
                   help="stage image a generation may use (shell pattern, e.g. 'ghcr.io/acme/trainer:*'; repeatable; "
                   "none: any image)")
    p.add_argument("--allowed-service-account", dest="allowed_accounts", action="append", default=[],
                   metavar="PATTERN", help="ServiceAccount stage pods may run as (unset means 'default'; repeatable; "
                   "none: any)")
    peers = p.add_mutually_exclusive_group()
    peers.add_argument("--peering", default="characterflywheel", help="kopf peering name (active/standby replicas)")
    peers.add_argument("--standalone", action="store_true", help="no peering: a single replica")
    p.set_defaults(func=_operator)
    return parser


def main(argv: Sequence[str] | None = None, extensions: Sequence[CommandsHook] = ()) -> int:
    args = build_parser(extensions).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `flywheel status … | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
