"""`flywheel`: the product's command line. Each subcommand is a thin wrapper over a module that does the work.

Heavy imports happen inside the subcommand functions so `flywheel validate` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _validate(args: argparse.Namespace) -> int:
    from flywheel_operator.validation import validate_files

    return validate_files(args.files)


def _crd(args: argparse.Namespace) -> int:
    from flywheel_operator.crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml())
    return 0


def _docs(args: argparse.Namespace) -> int:
    from flywheel_operator.apidocs import render_api_markdown

    sys.stdout.write(render_api_markdown())
    return 0


def _run(args: argparse.Namespace) -> int:
    sys.stderr.write(
        f"flywheel run {args.file}: the local runner is not built yet (issue 'Local runner').\n"
        "It will: validate the generation, build generation 0 of the simulated world, run curate → reward models →\n"
        "rejection-sampling SFT → RL → eval as `flywheel-train` subprocesses, gate offline, run a simulated A/B\n"
        "canary against simulated users and decide with the online gate. Until then nothing is run.\n"
    )
    return 2


def _exporter(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from flywheel_operator.gate.exporter import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    snapshot = Path(args.snapshot) if args.snapshot else None
    return serve(args.host, args.port, snapshot, engaged_min_days=args.engaged_min_days)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check FlywheelGeneration manifests; every error with its field path")
    p.add_argument("files", nargs="+", help="YAML manifests (several documents per file are fine)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API models")
    p.set_defaults(func=_crd)

    p = sub.add_parser("docs", help="print generated documentation")
    p.add_argument("what", choices=["api"], help="api: the CRD field reference (docs/api.md)")
    p.set_defaults(func=_docs)

    p = sub.add_parser("run", help="run a generation locally against simulated users")
    p.add_argument("file", help="FlywheelGeneration manifest, e.g. examples/local/gen1.yaml")
    p.set_defaults(func=_run)

    # Further subcommands (exporter, operator, status, report) are added below by their modules' owners.
    p = sub.add_parser("exporter", help="serve the engagement exporter: POST /events, GET /metrics, GET /healthz")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=9101, help="port to listen on")
    p.add_argument("--snapshot", default=None, help="file that keeps the counts across restarts (+ .journal)")
    p.add_argument(
        "--engaged-min-days",
        type=int,
        default=2,
        help="distinct active days (≥ 1 turn each) that make an exposed user engaged, the breadth numerator "
        "(default 2: one visit is exposure, coming back is engagement)",
    )
    p.set_defaults(func=_exporter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
