"""Issue 26 (h26b): the band's judge has a signal of its own.

The reward stage keeps a network's weight only on held-out evidence (lexical.mix_evidence); in all 24 reward stages
of the last suite it kept none, so the pairwise model's text score was the lexical head fitted on the same pairs as
the pointwise model's learned part: the same function, the same verdict on every prompt, a band gap of +0.000.
The eval stage now judges with the user-signal model, fitted on users' continuation signals
(`signal_judge_statistics`), and reports when a judge's verdicts are the optimised model's on every prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
from flywheel_sim import DEFAULT_WORLD, World, load_world
from flywheel_sim.grammar import compose_response
from flywheel_trainer.calibration import sigmoid
from flywheel_trainer.evaluate import signal_judge_statistics, wins
from flywheel_trainer.lexical import fit_labels, fit_pairs
from flywheel_trainer.scoring import mix_lexical, order_averaged
from hypothesis import given
from hypothesis import strategies as st

from tests.trainer.test_lexical import STYLE, _contexts, _utility

NO_NETWORK = {"model_weight": 0.0, "lexical_weight": 1.0, "bias": 0.0}
"""What mix_evidence fitted in every reward stage of the last suite: the network's weight 0."""


@given(scores=st.lists(st.tuples(*(st.sampled_from([-1.0, 0.0, 0.5, 2.0]),) * 4), min_size=1, max_size=40))
def test_the_statistics_of_a_judge_read_its_own_wins(scores: list[tuple[float, ...]]) -> None:
    ours_c, ours_p, judge_c, judge_p = (np.array(column) for column in zip(*scores, strict=True))
    stats = signal_judge_statistics(ours_c, ours_p, judge_c, judge_p)
    judge = wins(judge_c, judge_p)
    assert stats["judge_win_rate"] == pytest.approx(float(judge.mean()))
    assert stats["judge_ties"] == int(np.sum(judge_c == judge_p))
    assert stats["judge_identical"] is bool(np.array_equal(wins(ours_c, ours_p), judge))
    assert -1.0 <= stats["judge_win_correlation"] <= 1.0
    if len(scores) == 1 or judge.std() == 0:
        assert stats["judge_win_correlation"] == 0.0


def test_a_judge_with_the_optimised_models_verdicts_is_identical_and_its_correlation_is_one() -> None:
    ours_c, ours_p = np.array([1.0, 0.0, 2.0, 0.5]), np.array([0.0, 1.0, 2.0, 0.0])
    same = signal_judge_statistics(ours_c, ours_p, 3 * ours_c + 1, 3 * ours_p + 1)  # another scale, same order
    assert same["judge_identical"] is True and same["judge_win_correlation"] == pytest.approx(1.0)
    flipped = signal_judge_statistics(ours_c, ours_p, ours_p, ours_c)
    assert flipped["judge_identical"] is False and flipped["judge_win_correlation"] == pytest.approx(-1.0)
    assert flipped["judge_win_rate"] == pytest.approx(1 - same["judge_win_rate"])


@pytest.fixture(scope="module")
def world() -> World:
    return load_world(DEFAULT_WORLD)


def test_with_no_network_weight_the_pairwise_judge_is_the_optimised_function_and_the_signal_judge_is_not(
    world: World,
) -> None:
    """Both preference heads are fitted on the same pairs (as the reward stage fits them); the user-signal head
    on continuation labels of single responses. On fresh candidate/parent answers the pairwise judge gives the
    pointwise learned part's verdict on every prompt; the user-signal judge does not, and still orders the
    answers as the hidden utility does far more often than chance."""
    rng = np.random.default_rng(26)
    prompts, chosen, rejected = [], [], []
    for ci, topic, prompt in _contexts(world, rng, 600):
        a, b = (compose_response(rng, world.characters[ci], topic, STYLE) for _ in range(2))
        gap = _utility(world, ci, topic, a) - _utility(world, ci, topic, b)
        first = rng.random() < sigmoid(np.array([2.0 * gap]))[0]
        prompts.append(prompt)
        chosen.append(a if first else b)
        rejected.append(b if first else a)
    pointwise_head, pairwise_head = fit_pairs(prompts, chosen, rejected), fit_pairs(prompts, chosen, rejected)
    signal_prompts, responses, labels = [], [], []
    for ci, topic, prompt in _contexts(world, rng, 1200):
        text = compose_response(rng, world.characters[ci], topic, STYLE)
        signal_prompts.append(prompt)
        responses.append(text)
        labels.append(int(rng.random() < sigmoid(np.array([_utility(world, ci, topic, text) - 1.0]))[0]))
    signal_head = fit_labels(signal_prompts, responses, labels)

    contexts = _contexts(world, rng, 300)
    chats = [c for _, _, c in contexts]
    candidate = [compose_response(rng, world.characters[ci], t, STYLE) for ci, t, _ in contexts]
    parent = [compose_response(rng, world.characters[ci], t, STYLE) for ci, t, _ in contexts]
    text_weight = 0.3  # the pointwise model's learned part: its text weight times its text score
    logits = np.zeros(len(chats))  # the network's logit: any value, weighed 0
    learned_c = text_weight * mix_lexical(NO_NETWORK, logits, pointwise_head.score(chats, candidate))
    learned_p = text_weight * mix_lexical(NO_NETWORK, logits, pointwise_head.score(chats, parent))
    margin = pairwise_head.score(chats, candidate) - pairwise_head.score(chats, parent)
    p_better = order_averaged(sigmoid(mix_lexical(NO_NETWORK, logits, margin) / 1.2),
                              sigmoid(mix_lexical(NO_NETWORK, logits, -margin) / 1.2))
    pairwise = signal_judge_statistics(learned_c, learned_p, p_better, np.full(len(chats), 0.5))
    signal_c = mix_lexical(NO_NETWORK, logits, signal_head.score(chats, candidate))
    signal_p = mix_lexical(NO_NETWORK, logits, signal_head.score(chats, parent))
    signal = signal_judge_statistics(learned_c, learned_p, signal_c, signal_p)

    assert pairwise["judge_identical"] is True
    assert signal["judge_identical"] is False
    assert not np.allclose(np.argsort(signal_c - signal_p), np.argsort(learned_c - learned_p))
    truth = np.array([_utility(world, ci, t, c) - _utility(world, ci, t, p)
                      for (ci, t, _), c, p in zip(contexts, candidate, parent, strict=True)])
    judged = (truth != 0) & (signal_c != signal_p)
    agreement = float(np.mean(np.sign(signal_c - signal_p)[judged] == np.sign(truth)[judged]))
    assert agreement > 0.65, agreement
