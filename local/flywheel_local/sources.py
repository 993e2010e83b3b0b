"""`sim://` URIs of a local generation: generation 0 and simulated traffic, resolved to real files.

`basePolicy: sim://generation-0` is the simulator's generation 0 for the world (built once, cached by content
hash); `sim://users` and `sim://internal-testers` are days of traffic from the world's users or internal
testers chatting with the generation's starting policy, written into the run directory before curate.
Query parameters tune them for small runs: `sim://generation-0?steps=50`, `sim://users?days=3&people=200`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

SCHEME = "sim"
TRAFFIC_KINDS = {"users": "user", "internal-testers": "internal"}
DEFAULT_TRAFFIC_DAYS = 3


class SimUriError(ValueError):
    """A `sim://` URI the local runner cannot resolve; the message names the URI and the accepted forms."""


@dataclass(frozen=True)
class Generation0Uri:
    """`sim://generation-0[?steps=N]`."""

    steps: int | None = None


@dataclass(frozen=True)
class TrafficUri:
    """`sim://users|internal-testers[?days=N&people=M]`."""

    source: Literal["user", "internal"]
    days: int = DEFAULT_TRAFFIC_DAYS
    people: int | None = None


def is_sim(uri: str | None) -> bool:
    return uri is not None and uri.startswith(f"{SCHEME}://")


def _int_params(uri: str, query: str, allowed: tuple[str, ...]) -> dict[str, int]:
    params = parse_qs(query, strict_parsing=False)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise SimUriError(f"{uri}: unknown parameter(s) {unknown}; allowed: {list(allowed)}")
    values = {}
    for name, found in params.items():
        try:
            value = int(found[-1])
        except ValueError as exc:
            raise SimUriError(f"{uri}: parameter {name!r} must be a whole number, got {found[-1]!r}") from exc
        if value < 1:
            raise SimUriError(f"{uri}: parameter {name!r} must be at least 1, got {value}")
        values[name] = value
    return values


def parse_sim_uri(uri: str) -> Generation0Uri | TrafficUri:
    """Parse a `sim://` URI; SimUriError names what is wrong and what is accepted."""
    parts = urlsplit(uri)
    if parts.scheme != SCHEME or parts.path not in ("", "/"):
        raise SimUriError(f"{uri}: expected sim://generation-0, sim://users or sim://internal-testers")
    if parts.netloc == "generation-0":
        return Generation0Uri(**_int_params(uri, parts.query, ("steps",)))
    if parts.netloc in TRAFFIC_KINDS:
        return TrafficUri(source=TRAFFIC_KINDS[parts.netloc], **_int_params(uri, parts.query, ("days", "people")))  # type: ignore[arg-type]
    raise SimUriError(
        f"{uri}: unknown simulated resource {parts.netloc!r}; use generation-0 (a policy) or users / "
        "internal-testers (traffic)"
    )


def generation0(uri: str, world_file: Path, cache_dir: Path) -> Path:
    """The generation-0 model directory of `world_file` (built on first use; later calls hit the cache)."""
    from flywheel_sim import build_generation0, load_world

    parsed = parse_sim_uri(uri)
    if not isinstance(parsed, Generation0Uri):
        raise SimUriError(f"{uri}: a policy must be sim://generation-0, not simulated traffic")
    return build_generation0(load_world(world_file), cache_dir, steps=parsed.steps)
