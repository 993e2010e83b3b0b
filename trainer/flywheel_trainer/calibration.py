"""Calibration of binary reward-model probabilities: expected calibration error and temperature scaling; and,
for classifiers of an unbalanced user signal, the area under the ROC curve, whose chance level is 1/2 whatever
the base rate (a p(continue) model that always says "continues" is 66 % accurate when two users in three do).

Every reward model here ends in one logit per example whose sigmoid is a probability (chosen beats rejected,
A beats B, the user continues). Temperature scaling divides the logits by one fitted T > 0; it changes
confidence, never the ranking, so accuracy is unchanged. T is fitted by two-fold cross-fitting on the
held-out set (fit on one half, apply to the other), so "after" is not measured on the data it was fitted on.
The halves are a seeded shuffle stratified by label: held-out sets are often laid out by class (the pairwise
model's forward/backward orders alternate 1, 0, 1, 0), and a split by position would fit each half on one class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 10
SPLIT_SEED = 0


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int], *, bins: int = ECE_BINS) -> float:
    """ECE of P(label = 1): the count-weighted mean gap between confidence and accuracy over equal-width bins
    of the predicted class's confidence (Guo et al. 2017)."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=int)
    if p.size == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    predicted = (p >= 0.5).astype(int)
    confidence = np.where(predicted == 1, p, 1 - p)
    correct = (predicted == y).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return float(error)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = np.clip(sigmoid(logits / temperature), 1e-12, 1 - 1e-12)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_temperature(logits: Sequence[float], labels: Sequence[int]) -> float:
    """The T in [0.05, 20] minimising the negative log-likelihood of sigmoid(logit / T)."""
    from scipy.optimize import minimize_scalar

    x = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=float)
    found = minimize_scalar(
        lambda log_t: _nll(x, y, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20.0)), method="bounded"
    )
    return float(np.exp(found.x))


def cross_fit_halves(labels: np.ndarray, seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Two boolean masks that split the examples in half within each label, in a seeded random order."""
    rng = np.random.default_rng(seed)
    first = np.zeros(labels.size, dtype=bool)
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        first[members[: (members.size + 1) // 2]] = True
    return [first, ~first]


Z95 = 1.959963984540054


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> dict[str, float] | None:
    """{"auc", "auc_low", "auc_high"}: P(a positive scores above a negative; ties count half) with its 95 %
    interval (Hanley & McNeil 1982, clipped to [0, 1]); None without both classes."""
    from scipy.stats import rankdata

    x = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(x)  # average ranks: a tie between a positive and a negative counts half
    auc = float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    half = Z95 * float(np.sqrt(max(variance, 0.0)))
    return {"auc": auc, "auc_low": max(0.0, auc - half), "auc_high": min(1.0, auc + half)}


def calibration_report(logits: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, ECE before and after cross-fitted temperature scaling, and T fitted on all held-out data."""
    x = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=int)
    if x.size == 0:
        raise ValueError("calibration_report needs held-out predictions; the held-out set is empty")
    scaled = np.empty_like(x)
    halves = cross_fit_halves(y)
    for fit_on, apply_to in (halves, halves[::-1]):
        if fit_on.any() and apply_to.any():
            scaled[apply_to] = x[apply_to] / fit_temperature(x[fit_on], y[fit_on])
        elif apply_to.any():
            scaled[apply_to] = x[apply_to]
    return {
        "accuracy": float(np.mean((x > 0).astype(int) == y)),
        "ece": expected_calibration_error(sigmoid(x), y),
        "ece_calibrated": expected_calibration_error(sigmoid(scaled), y),
        "temperature": fit_temperature(x, y),
    }
