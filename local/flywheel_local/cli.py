"""`flywheel`: the operator's command line plus the local mode's run, status and report.

The console script points here; every other subcommand is flywheel_operator.cli's, which never imports this package.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from flywheel_operator import cli as operator_cli

ORACLE_DRAWS_HELP = (
    "draws of each model's responses behind the report's oracle (default 16: a depth lift's 95 %% interval is "
    "+-1.9-2.5 %%; 8 draws take about half the report's sampling time at +-3.5-5.1 %%, so more candidates end a "
    "tie; bench/results/history/oracle@3660d55.json). The gates never read the oracle: decisions do not change"
)


def _run(args: argparse.Namespace) -> int:
    from flywheel_local.commands import run_command

    return run_command(
        args.file, generations=args.generations, run_dir=args.run_dir, world=args.world, cache_dir=args.cache_dir,
        oracle_draws=args.oracle_draws,
    )


def _status(args: argparse.Namespace) -> int:
    from flywheel_local.commands import status_command

    return status_command(args.run_dir, as_json=args.json)


def _report(args: argparse.Namespace) -> int:
    from flywheel_local.commands import report_command

    return report_command(args.run_dir, out=args.out, oracle=not args.no_oracle, oracle_draws=args.oracle_draws)


def _world_generate(args: argparse.Namespace) -> int:
    from flywheel_local.world_command import world_generate_command

    return world_generate_command(args.seed, users=args.users, out=args.out)


def _world_check(args: argparse.Namespace) -> int:
    from flywheel_local.world_command import world_check_command

    return world_check_command(args.file, generated=args.generated)


def add_local_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a generation, or a Flywheel of generations, locally against simulated users")
    p.add_argument("file", help="FlywheelGeneration or Flywheel manifest, e.g. examples/local/gen1.yaml or "
                   "examples/local/flywheel.yaml")
    p.add_argument("--generations", type=int, default=None,
                   help="a FlywheelGeneration: chain N generations, each promoted one the parent (default 1); a "
                   "Flywheel: stop after N generations (overrides spec.stopRules.maxGenerations)")
    p.add_argument("--run-dir", help="run directory (default: resources.storage.uri of the manifest); rerun to resume")
    p.add_argument("--world", help="simulated world file (default: examples/local/world.yaml)")
    p.add_argument("--cache-dir", help="cache of generation-0 builds and their simulated traffic (default: runs/cache)")
    p.add_argument("--oracle-draws", type=int, default=None, help=ORACLE_DRAWS_HELP)
    p.set_defaults(func=_run)

    p = sub.add_parser("status", help="show the status documents of a local run")
    p.add_argument("run_dir", help="run directory printed by `flywheel run`, or one generation's directory")
    p.add_argument("--json", action="store_true", help="print the status documents as JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser("report", help="write the HTML report (with PNG plots) of a local run")
    p.add_argument("run_dir", help="run directory printed by `flywheel run`")
    p.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    p.add_argument("--no-oracle", action="store_true", help="skip the simulator's ground-truth engagement")
    p.add_argument("--oracle-draws", type=int, default=None, help=ORACLE_DRAWS_HELP)
    p.set_defaults(func=_report)

    p = sub.add_parser("world", help="seeded out-of-sample worlds for the simulator (flywheel_sim.worldgen)")
    world = p.add_subparsers(dest="world_command", required=True, metavar="{generate,check}")
    g = world.add_parser("generate", help="print the world file drawn from a seed (the same seed, the same world)")
    g.add_argument("--seed", type=int, required=True, help="the world's seed (also its traffic and generation-0 seed)")
    g.add_argument("--users", type=int, default=10_000, help="simulated users (default: the default world's 10000)")
    g.add_argument("--out", help="write the world file here instead of printing it")
    g.set_defaults(func=_world_generate)
    c = world.add_parser("check", help="check that a world file is sane: words, instructions, a trap that bites")
    c.add_argument("file", help="world file, e.g. examples/local/world.yaml")
    c.add_argument("--generated", action="store_true", help="also hold it to the generator's ranges")
    c.set_defaults(func=_world_check)


def build_parser() -> argparse.ArgumentParser:
    return operator_cli.build_parser(extensions=(add_local_commands,))


def main(argv: Sequence[str] | None = None) -> int:
    return operator_cli.main(argv, extensions=(add_local_commands,))


if __name__ == "__main__":
    raise SystemExit(main())
