"""`flywheel world generate` and `flywheel world check`: seeded out-of-sample worlds and a world's sanity check."""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_INSANE = 1
"""A world file that loads but is not sane (or a seed that gave no sane world)."""


def world_generate_command(seed: int, *, users: int, out: str | None) -> int:
    """Print (or write to `out`) the world file drawn from `seed` (flywheel_sim.worldgen)."""
    from flywheel_sim.worldgen import WorldGenerationError, generate_world, world_yaml

    try:
        world, check = generate_world(seed, users=users)
    except WorldGenerationError as exc:
        print(f"flywheel world generate: {exc}", file=sys.stderr)
        return EXIT_INSANE
    text = world_yaml(world, check)
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {out}: seed {seed}, {len(world.characters)} characters, "
              f"{len(world.users.segments)} segments, digest {world.digest()[:12]}", file=sys.stderr)
    return 0


def world_check_command(file: str, *, generated: bool) -> int:
    """Check a world file (any world; `generated`: also against the generator's ranges) and print what it found."""
    from flywheel_sim import WorldFileError, load_world
    from flywheel_sim.worldgen import check_lines, check_world, describe

    try:
        world = load_world(file)
    except (WorldFileError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INSANE
    check = check_world(world, generated=generated)
    facts = describe(world)
    print(f"{file}: seed {facts['seed']}, digest {facts['digest']}, characters {', '.join(facts['characters'])}")
    for s in facts["segments"]:
        print(f"  segment {s['name']}: share {s['share']:.2f}, weighs {s['favourite']} most, "
              f"emoji pull {s['emoji']:+.2f}")
    print(f"  trap: threshold {facts['trap_threshold']} emojis per response, return penalty "
          f"{facts['trap_return_penalty']}")
    for line in check_lines(check.numbers):
        print(f"  {line}")
    for problem in check.problems:
        print(f"  problem: {problem}")
    print("sane" if check.sane else f"not sane: {len(check.problems)} problem(s)")
    return 0 if check.sane else EXIT_INSANE
