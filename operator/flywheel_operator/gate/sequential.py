"""Group-sequential boundaries: Lan–DeMets α-spending with an O'Brien–Fleming-type function (pure numerics).

A one-sided test of a standardised statistic Z_k looked at on a schedule with information fractions
t_1 < t_2 < … ≤ 1 spends α(t) = 2 − 2Φ(z_{1−α/2}/√t) (Lan & DeMets 1983): almost nothing early, the nominal α
at t = 1. Under the null the score S_k = Z_k √t_k is a Brownian motion at the times t_k, so the boundary c_k of
look k solves P(Z_1 < c_1, …, Z_{k−1} < c_{k−1}, Z_k ≥ c_k) = α(t_k) − α(t_{k−1}); that probability is computed by
propagating the density of S over a grid (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19).
The fractions may be whatever the data gave (users arrive when they arrive): only their values, never the
effect, choose the boundaries, so the one-sided error stays ≤ α whatever the schedule, and the last look (t = 1)
spends what is left.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
from scipy import optimize, signal, special

GRID_STEP = 0.01
"""Spacing of the grid over the score S ∈ [−9, 9]: the crossing probabilities are accurate to about 1e-5."""
GRID = np.arange(-9.0, 9.0 + GRID_STEP / 2, GRID_STEP)
FRACTION_DIGITS = 4
"""Fractions are rounded to this many decimals (boundaries are cached on them; the rounding moves nothing)."""
NO_BOUNDARY = math.inf


def obrien_fleming_spent(alpha: float, fraction: float) -> float:
    """α spent by information fraction t ∈ (0, 1]: 2 − 2Φ(z_{1−α/2}/√t); 0 at t → 0, α at t = 1."""
    if fraction <= 0:
        return 0.0
    t = min(fraction, 1.0)
    z = float(special.ndtri(1.0 - alpha / 2.0))
    return float(2.0 * special.ndtr(-z / math.sqrt(t)))


def boundaries(alpha: float, fractions: list[float] | tuple[float, ...]) -> list[float]:
    """The one-sided boundaries (on the Z scale) of looks at `fractions` (increasing, last ≤ 1). A look whose
    increment of spent α is below 1e-12 gets no boundary (∞): it cannot reject."""
    rounded = tuple(round(min(max(f, 0.0), 1.0), FRACTION_DIGITS) for f in fractions)
    if any(b <= a for a, b in itertools.pairwise(rounded)):
        raise ValueError(f"information fractions must increase strictly, got {rounded}")
    return list(_boundaries(round(alpha, 12), rounded))


@lru_cache(maxsize=4096)
def _boundaries(alpha: float, fractions: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(bound for bound, _ in _walk(alpha, fractions, 0.0))


def _walk(alpha: float, fractions: tuple[float, ...], drift: float):
    """Yields (boundary, probability of crossing at this look under `drift`) look by look. The boundaries are
    always those of the null; with drift ≠ 0 only the crossing probabilities change (power)."""
    grid, step = GRID, GRID_STEP
    null: np.ndarray | None = None  # sub-density of S under the null among the paths not stopped yet
    alt: np.ndarray | None = None  # the same under the drift
    previous_t, previous_spent = 0.0, 0.0
    for t in fractions:
        spent = obrien_fleming_spent(alpha, t)
        increment = spent - previous_spent
        sd = math.sqrt(t - previous_t)
        null = _propagate(null, sd, 0.0)
        alt = _propagate(alt, sd, drift * (t - previous_t)) if drift else null
        if increment <= 1e-12:
            bound = NO_BOUNDARY
        else:
            tail = np.cumsum(null[::-1])[::-1] * step  # P(S ≥ grid[i]) among the paths still running
            root = math.sqrt(t)

            def crossing(c: float, tail: np.ndarray = tail, root: float = root) -> float:
                return float(np.interp(c * root, grid - step / 2, tail, left=tail[0], right=0.0))

            low, high = -5.0, 8.9 / root
            if crossing(high) >= increment:
                bound = high
            elif crossing(low) <= increment:
                bound = low
            else:
                bound = float(optimize.brentq(lambda c, a=increment: crossing(c) - a, low, high, xtol=1e-10))
        crossed = 0.0
        if math.isfinite(bound):
            keep = grid - step / 2 < bound * math.sqrt(t)
            crossed = float(alt[~keep].sum() * step)
            null = np.where(keep, null, 0.0)
            alt = np.where(keep, alt, 0.0) if drift else null
        yield bound, crossed
        previous_t, previous_spent = t, spent


def _propagate(density: np.ndarray | None, sd: float, mean: float) -> np.ndarray:
    """The density of S + N(mean, sd²) on the grid (a point mass at 0 when `density` is None)."""
    if density is None:
        return np.exp(-0.5 * ((GRID - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    half = min(int(9 * sd / GRID_STEP) + 1, len(GRID) - 1)
    offsets = np.arange(-half, half + 1) * GRID_STEP
    kernel = np.exp(-0.5 * ((offsets - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    return np.maximum(signal.fftconvolve(density, kernel, mode="same"), 0.0) * GRID_STEP


def crossing_probability(alpha: float, fractions: list[float], drift: float = 0.0) -> float:
    """P(Z crosses one of the boundaries) when the standardised effect at t = 1 is `drift` (Z_k has mean
    drift·√t_k): α at drift 0 (a check of `boundaries`), the power otherwise."""
    rounded = tuple(round(min(max(f, 0.0), 1.0), FRACTION_DIGITS) for f in fractions)
    return sum(crossed for _, crossed in _walk(round(alpha, 12), rounded, drift))
