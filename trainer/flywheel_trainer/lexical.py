"""The lexical head of a reward model: a small linear model over what a response does with the words of its
context, learned from the same preference pairs or user signals as the model's text score and mixed with it.

Why: a small reward model reads little of what users react to beyond surface style. On the local default's logs
the tiny 2-layer backbone orders pairs that differ in staying on topic or in the character's persona words little
better than chance (docs/local.md, "Reward models: the learned part"), although the logged labels carry enough to
order most of them. Persona is which words a character uses, topic is whether the response picks up the words of
the user's message: each is one number per response once the words are known, and one weight learned from a few
thousand noisy labels is precise where a transformer (or a bag of words, one weight per word) fitted on the same
labels memorises them. Nothing here knows the simulator: the word lists are statistics of the training text and
every weight is learned, so a column users ignore gets a weight near 0.

Columns of one response in its context: `question_mark` (it asks something), `echo_count` (distinct words it
shares with the user's last message), `echo_rare` (the same, leaving out words found in at least COMMON_SHARE of
the user messages: the topic, not "tell me about"), `character_words` (distinct words distinctive of its character,
at least LIFT times likelier in that character's responses than in all, that no user message of the training data
contains: the persona), `echo_rare_any` and `character_any` (whether each of those two counts is above 0: whether a
response picks up the user's topic at all, or speaks in character at all, which a count mixes with how many such
words it piles up), `words_10` and `words_10_squared` (length in tens of words).

Why users' words are left out of a character's words: a character's responses also name the topics its users ask
about, so those are distinctive of it too; in a response the user did not ask about them (another topic: off topic,
not persona). Counting them as persona words gave `character_words` a negative weight in some generated worlds
(world 108's generation 1: -0.24; the text score's oracle agreement 0.604). Measured on the saved generation-1 logs
of development worlds by `bench/rm_text.py --heads` (docs/local.md, "Reward models: the learned part").

Context columns (`turn:<n>`, `sys:<character>`) cancel within a pair (both sides share the prompt) and absorb a
context's base rate in a user-signal classifier. Emojis are left out on purpose: preference pairs that differ in
them are dropped by curation, and the users' pull toward them is the simulated world's trap (docs/simulator.md).

The fit is ridge-penalised maximum likelihood (Bradley–Terry on pair differences, logistic regression with an
intercept on labels); the penalty is chosen by 3-fold cross-validation on the training rows grouped by prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOKEN = re.compile(r"[^\W\d_]+|\d+|[^\w\s]")
MIN_COUNT = 3
"""A word is distinctive of a character only when at least this many of its training responses use it."""
LIFT = 2.0
COMMON_SHARE = 0.15
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1)
"""Penalties tried by cross-validation (per example: the loss is a mean)."""
FOLDS = 3
MAX_TURN = 8
RESPONSE_COLUMNS = ("question_mark", "echo_count", "echo_rare", "character_words", "echo_rare_any", "character_any",
                    "words_10", "words_10_squared")
Chat = Sequence[Mapping[str, str]]


def tokens(text: str) -> list[str]:
    """Lower-cased words, numbers and single punctuation or emoji characters of `text`."""
    return TOKEN.findall(text.lower())


def _words(text: str) -> set[str]:
    return {t for t in tokens(text) if t.isalpha()}


def _character(prompt: Chat) -> str:
    system = next((m["content"] for m in prompt if m["role"] == "system"), "")
    return hashlib.sha256(system.encode()).hexdigest()[:8]


def _last_user(prompt: Chat) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


@dataclass(frozen=True)
class Vocabulary:
    """Statistics of the training text the columns read: words common in user messages, words distinctive of each
    character's responses that no user message contains (keyed by its system prompt's digest)."""

    common: frozenset[str] = frozenset()
    characters: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, prompts: Sequence[Chat], responses: Sequence[str]) -> Vocabulary:
        asked = {json.dumps(_last_user(p)): _words(_last_user(p)) for p in prompts}
        share = Counter(w for words in asked.values() for w in words)
        common = frozenset(w for w, n in share.items() if n >= COMMON_SHARE * len(asked))
        user_words = {w for p in prompts for m in p if m["role"] == "user" for w in _words(m["content"])}
        by_character: dict[str, Counter] = defaultdict(Counter)
        served: Counter = Counter()
        for prompt, response in zip(prompts, responses, strict=True):
            by_character[_character(prompt)].update(_words(response))
            served[_character(prompt)] += 1
        overall, total = sum(by_character.values(), Counter()), sum(served.values())
        characters = {
            c: frozenset(w for w, n in counts.items()
                         if n >= MIN_COUNT and (n / served[c]) >= LIFT * overall[w] / total and w not in user_words)
            for c, counts in by_character.items()
        }
        return cls(common, characters)

    def to_json(self) -> dict[str, Any]:
        return {"common": sorted(self.common), "characters": {c: sorted(w) for c, w in sorted(self.characters.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Vocabulary:
        return cls(frozenset(data["common"]), {c: frozenset(w) for c, w in data["characters"].items()})


def features(prompt: Chat, response: str, vocabulary: Vocabulary = Vocabulary()) -> dict[str, float]:
    """The named column values of `response` after `prompt` (absent names are 0)."""
    said, asked = _words(response), _words(_last_user(prompt))
    character = _character(prompt)
    echoed = said & asked
    rare = len(echoed - vocabulary.common)
    persona = len((said & vocabulary.characters.get(character, frozenset())) - asked)
    words = sum(1 for t in tokens(response) if t.isalnum())
    turn = min(sum(1 for m in prompt if m["role"] == "user"), MAX_TURN)
    return {
        "question_mark": float("?" in response),
        "echo_count": float(len(echoed)),
        "echo_rare": float(rare),
        "character_words": float(persona),
        "echo_rare_any": float(rare > 0),
        "character_any": float(persona > 0),
        "words_10": words / 10.0,
        "words_10_squared": (words / 10.0) ** 2,
        f"turn:{turn}": 1.0,
        f"sys:{character}": 1.0,
    }


@dataclass(frozen=True)
class LexicalModel:
    """A fitted lexical head: score = bias + Σ weight × column value."""

    columns: list[str]
    weights: list[float]
    bias: float = 0.0
    ridge: float = 0.0
    vocabulary: Vocabulary = Vocabulary()

    def score(self, prompts: Sequence[Chat], responses: Sequence[str]) -> np.ndarray:
        """The head's logit for each response after its prompt."""
        rows = [features(p, r, self.vocabulary) for p, r in zip(prompts, responses, strict=True)]
        return np.asarray(_matrix(rows, self.columns) @ np.asarray(self.weights, dtype=float)).ravel() + self.bias

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "weights": self.weights, "bias": self.bias, "ridge": self.ridge,
                "vocabulary": self.vocabulary.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LexicalModel:
        vocabulary = Vocabulary.from_json(data["vocabulary"]) if "vocabulary" in data else Vocabulary()
        return cls(list(data["columns"]), [float(w) for w in data["weights"]], float(data.get("bias", 0.0)),
                   float(data.get("ridge", 0.0)), vocabulary)

    def response_weights(self) -> dict[str, float]:
        """The weights of the response columns (for reports)."""
        return {c: w for c, w in zip(self.columns, self.weights, strict=True) if c in RESPONSE_COLUMNS}


def _columns(rows: Sequence[Mapping[str, float]]) -> list[str]:
    context = sorted({name for row in rows for name in row} - set(RESPONSE_COLUMNS))
    return [*RESPONSE_COLUMNS, *context]


def _matrix(rows: Sequence[Mapping[str, float]], columns: Sequence[str]) -> Any:
    from scipy.sparse import csr_matrix

    index = {name: i for i, name in enumerate(columns)}
    data, cols, pointers = [], [], [0]
    for row in rows:
        for name, value in row.items():
            if name in index and value:
                cols.append(index[name])
                data.append(value)
        pointers.append(len(cols))
    return csr_matrix((data, cols, pointers), shape=(len(rows), len(columns)), dtype=np.float64)


def _fit(
    x: Any, y: np.ndarray | None, ridge: float, *, nonnegative: bool = False, offset: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Weights (and bias) minimising the mean log loss + ridge × |w|²: Bradley–Terry on difference rows when
    `y` is None (every row's first side preferred; no intercept), logistic regression with an unpenalised
    intercept on labels `y` otherwise; `nonnegative` keeps every weight (not the bias) at or above 0; `offset`
    is a fixed term added to every row's logit (a part whose weight is not fitted here)."""
    from scipy.optimize import minimize

    n, d = x.shape
    with_bias = y is not None
    fixed = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], (theta[d] if with_bias else 0.0)
        z = x @ w + b + fixed
        if y is None:
            value = np.mean(np.logaddexp(0.0, -z))
            residual = -1.0 / (1.0 + np.exp(np.clip(z, -60, 60)))
        else:
            value = np.mean(np.logaddexp(0.0, z) - y * z)
            residual = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))) - y
        grad_w = x.T @ residual / n + 2 * ridge * w
        grad = np.append(grad_w, residual.mean()) if with_bias else grad_w
        return float(value + ridge * w @ w), grad

    bounds = [(0.0, None) if nonnegative else (None, None)] * d + [(None, None)] * with_bias
    theta = minimize(loss, np.zeros(d + with_bias), jac=True, method="L-BFGS-B", bounds=bounds,
                     options={"maxiter": 500}).x
    return theta[:d], float(theta[d]) if with_bias else 0.0


def _log_loss(z: np.ndarray, y: np.ndarray | None) -> float:
    if y is None:
        return float(np.mean(np.logaddexp(0.0, -z)))
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _group_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    return np.array([int(hashlib.sha256(g.encode()).hexdigest(), 16) % folds for g in groups])


def _choose_ridge(x: Any, y: np.ndarray | None, groups: Sequence[str]) -> float:
    """The penalty of RIDGES with the lowest cross-validated log loss (folds by prompt)."""
    fold = _group_folds(groups, FOLDS)
    if len(set(fold.tolist())) < 2:
        return RIDGES[len(RIDGES) // 2]
    losses = []
    for ridge in RIDGES:
        total = 0.0
        for k in set(fold.tolist()):
            train, test = fold != k, fold == k
            w, b = _fit(x[train], None if y is None else y[train], ridge)
            total += _log_loss(x[test] @ w + b, None if y is None else y[test]) * test.sum()
        losses.append(total)
    return RIDGES[int(np.argmin(losses))]


def _prompt_key(prompt: Chat) -> str:
    return json.dumps([[m["role"], m["content"]] for m in prompt])


def fit_pairs(prompts: Sequence[Chat], chosen: Sequence[str], rejected: Sequence[str]) -> LexicalModel:
    """A lexical head fitted by Bradley–Terry on preference pairs (each chosen response over its rejected one)."""
    vocabulary = Vocabulary.build([*prompts, *prompts], [*chosen, *rejected])
    good = [features(p, r, vocabulary) for p, r in zip(prompts, chosen, strict=True)]
    bad = [features(p, r, vocabulary) for p, r in zip(prompts, rejected, strict=True)]
    columns = _columns(good + bad)
    x = _matrix(good, columns) - _matrix(bad, columns)
    ridge = _choose_ridge(x, None, [_prompt_key(p) for p in prompts])
    weights, _ = _fit(x, None, ridge)
    return LexicalModel(columns, [float(w) for w in weights], 0.0, ridge, vocabulary)


def fit_labels(prompts: Sequence[Chat], responses: Sequence[str], labels: Sequence[int]) -> LexicalModel:
    """A lexical head fitted by logistic regression on binary labels of single responses (a user signal)."""
    vocabulary = Vocabulary.build(prompts, responses)
    rows = [features(p, r, vocabulary) for p, r in zip(prompts, responses, strict=True)]
    columns = _columns(rows)
    x = _matrix(rows, columns)
    y = np.asarray(labels, dtype=float)
    ridge = _choose_ridge(x, y, [_prompt_key(p) for p in prompts])
    weights, bias = _fit(x, y, ridge)
    return LexicalModel(columns, [float(w) for w in weights], bias, ridge, vocabulary)


MIX_RIDGE = 1e-6


def fit_on_top(column: np.ndarray, offset: np.ndarray, labels: np.ndarray | None = None) -> tuple[float, float]:
    """The non-negative weight of one held-out `column` added to a fixed score `offset` (and, with `labels`, a
    bias): Bradley–Terry on (chosen − rejected) margins without labels, logistic regression with them. For a part
    whose scores on its own training data are overconfident (a transformer's logit), weighed on top of parts whose
    weights were fitted on the training data and stay as fitted."""
    weight, bias = _fit(np.asarray(column, dtype=float).reshape(-1, 1),
                        None if labels is None else np.asarray(labels, dtype=float), MIX_RIDGE, nonnegative=True,
                        offset=np.asarray(offset, dtype=float))
    return float(weight[0]), bias


MIX_ALPHA = 0.05
"""The transformer's logit gets its held-out weight only when it lowers the held-out log loss on prompts it was not
weighed on at this one-sided significance level (mix_evidence)."""
MIX_FOLDS = 10
"""Folds of held-out prompts in mix_evidence (fewer when fewer prompts are held out)."""
MIN_MIX_PROMPTS = 4
"""Below this many held-out prompts there is no spread to test: the fitted weight is kept as it is."""


def _prompt_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """Each row's fold: the distinct groups ordered by digest and dealt round-robin, so no fold is empty."""
    order = sorted(set(groups), key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    rank = {g: i % folds for i, g in enumerate(order)}
    return np.array([rank[g] for g in groups])


def mix_evidence(
    column: np.ndarray, offset: np.ndarray, groups: Sequence[str], labels: np.ndarray | None = None
) -> float | None:
    """One-sided p-value that adding `column` (the transformer's held-out logit or margin) on top of `offset` (the
    lexical head's) lowers the log loss on held-out prompts it was not weighed on; None when fewer than
    MIN_MIX_PROMPTS prompts are held out.

    The held-out rows are clustered: ~12 prompts in a generated world's reward stage, each with up to
    `maxPairsPerContext` pairs of correlated verdicts, so a weight fitted as if its ~350 rows were independent
    follows whichever dozen prompts the split drew (bench/results/rm_seeds.json: on the default world the
    transformer got weight 0.39-0.79 at 3 of 9 seeds and the text score's oracle agreement fell from the head's
    0.734-0.754 to 0.648-0.711). Here the prompts are dealt into folds (MIX_FOLDS); per fold, the weight (and
    with `labels` the bias) is fitted on the other folds and the loss of the head alone (its own bias refitted
    alike) minus the loss with the column is taken on the fold; the p-value is a one-sided t-test of those
    per-fold gains."""
    from scipy.stats import t as student

    column, offset = np.asarray(column, dtype=float), np.asarray(offset, dtype=float)
    y = None if labels is None else np.asarray(labels, dtype=float)
    distinct = len(set(groups))
    if distinct < MIN_MIX_PROMPTS:
        return None
    fold = _prompt_folds(groups, min(MIX_FOLDS, distinct))
    gains = []
    for k in range(int(fold.max()) + 1):
        test, train = fold == k, fold != k
        if y is not None and len(set(y[train].tolist())) < 2:
            continue
        weight, bias = fit_on_top(column[train], offset[train], None if y is None else y[train])
        alone = 0.0 if y is None else fit_on_top(np.zeros(int(train.sum())), offset[train], y[train])[1]
        held = None if y is None else y[test]
        gains.append(_log_loss(offset[test] + alone, held) - _log_loss(offset[test] + weight * column[test] + bias,
                                                                        held))
    gains_array = np.asarray(gains)
    if len(gains_array) < 2:
        return None
    spread = float(gains_array.std(ddof=1))
    if spread == 0.0:
        return 0.0 if gains_array.mean() > 0 else 1.0
    statistic = float(gains_array.mean()) / (spread / np.sqrt(len(gains_array)))
    return float(student.sf(statistic, len(gains_array) - 1))


def fit_mix(
    columns: np.ndarray, labels: np.ndarray | None = None, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, float]:
    """Weights (model, lexical) and, with `labels`, a bias mixing a model's logit (column 0) with its lexical
    head's score (column 1) on held-out data.

    The head keeps weight 1: its few weights were fitted on the training data with a penalty chosen by
    cross-validation over the training prompts, so its scale is already an out-of-sample estimate, from about nine
    times the prompts the held-out set has. Only the model's weight is fitted here, non-negative, on top of the
    head's score (fit_on_top): the model's logits on its own training data are overconfident, so the held-out data
    are the only fair place to weigh it, and a negative weight would be fitting their noise. Fitting the head's
    weight on the held-out set as well let a few held-out prompts (10 % of ~125 in a generated world: ~12, each
    with up to `maxPairsPerContext` correlated pairs) zero both parts and leave a constant text score
    (bench/rm_seeds.py). With `groups` (each row's prompt), the model keeps its weight only when it earns it on
    held-out prompts it was not weighed on (mix_evidence below MIX_ALPHA); otherwise it is 0 and the text score is
    the head's."""
    x = np.asarray(columns, dtype=float)
    weight, bias = fit_on_top(x[:, 0], x[:, 1], labels)
    if groups is not None and weight > 0:
        p_value = mix_evidence(x[:, 0], x[:, 1], groups, labels)
        if p_value is not None and p_value >= MIX_ALPHA:
            weight, bias = fit_on_top(np.zeros(len(x)), x[:, 1], labels)
    return np.array([weight, 1.0]), bias
