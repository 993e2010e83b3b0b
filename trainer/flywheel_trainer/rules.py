"""Rule features of a pointwise reward model: the trainer's own checks on a response, weighted next to the text
score by a Bradley–Terry fit on the same preference pairs (as rule-based rewards combine propositions with a
reward model's score).

A tiny reward model reads little from the text (bench/rm_ceiling.py: on the local default it orders 0.66–0.69
of held-out pairs as the hidden truth does, while a regression on these rules, fitted on the same noisy labels,
orders 0.78–0.79). The rules are the product's own (flywheel_trainer.style, .verifiers), computed from the
response and its character's spec (name and instructions, the `character` of every curated row); their weights
are learned from the logged preferences, never set by hand, so a rule users do not care about gets a weight
near zero. Length enters as tens of words and its square, so the fit can find a preferred length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flywheel_trainer import style, verifiers

RULES: dict[str, tuple[str, ...]] = {
    "asks-back": ("asks_back",),
    "follows-instructions": ("follows_instructions",),
    "emojis": ("emojis",),
    "length": ("words_10", "words_10_squared"),
    "refusal": ("refusal",),
}
"""Each rule feature (the API's `ruleFeatures` values) and the columns it adds."""
RIDGE = 1e-3
"""L2 penalty of the fit (a handful of weights, thousands of pairs: it only keeps a column that never varies,
such as emojis when curation drops every pair that differs in them, at zero)."""


def columns(features: Sequence[str]) -> list[str]:
    """The column names of `features`, in order."""
    return [column for feature in features for column in RULES[feature]]


def rule_matrix(
    features: Sequence[str], characters: Sequence[Mapping[str, Any]], responses: Sequence[str]
) -> np.ndarray:
    """(responses, columns) values of the rule `features` for each response of its character."""
    rows = []
    for character, response in zip(characters, responses, strict=True):
        values: list[float] = []
        for feature in features:
            if feature == "asks-back":
                values.append(float(style.asks_question(response)))
            elif feature == "follows-instructions":
                instructions = character.get("instructions") or []
                name = character.get("name", "")
                values.append(float(verifiers.follows_all(instructions, response, character_name=name)))
            elif feature == "emojis":
                values.append(float(style.emoji_count(response)))
            elif feature == "length":
                tens = style.word_count(response) / 10.0
                values.extend((tens, tens * tens))
            elif feature == "refusal":
                values.append(float(style.is_refusal(response)))
            else:
                raise ValueError(f"unknown rule feature {feature!r}; known: {', '.join(RULES)}")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(columns(features)))


def rule_differences(
    features: Sequence[str], characters: Sequence[Mapping[str, Any]], chosen: Sequence[str], rejected: Sequence[str]
) -> np.ndarray:
    """(pairs, columns) rule values of each chosen response minus its rejected one, both of the pair's character."""
    return rule_matrix(features, characters, chosen) - rule_matrix(features, characters, rejected)


def pair_differences(features: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """rule_differences of curated preference rows (`character`, `chosen` and `rejected` as curate writes them)."""
    return rule_differences(
        features,
        [r["character"] for r in rows],
        [r["chosen"][0]["content"] for r in rows],
        [r["rejected"][0]["content"] for r in rows],
    )


def fit_bradley_terry(differences: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Weights w of P(chosen preferred) = sigmoid(w · (x_chosen − x_rejected)) on rows of feature differences
    (chosen − rejected), by ridge-penalised maximum likelihood. Both orientations of every pair are fitted, so
    the fit has no intercept to absorb and a column that never varies gets weight 0."""
    from scipy.optimize import minimize

    x = np.vstack([differences, -differences])
    y = np.concatenate([np.ones(len(differences)), np.zeros(len(differences))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        p = 1.0 / (1.0 + np.exp(-z))
        value = float(np.mean(np.logaddexp(0.0, z) - y * z) + ridge * w @ w)
        return value, x.T @ (p - y) / len(y) + 2 * ridge * w

    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x
