"""The chat predictor the trainer image serves: KServe's v1 shapes, batched, reproducible, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_local.users import PredictorPolicy
from flywheel_trainer.predictor import ChatPredictor
from kserve.errors import InvalidInput

CHATS = [
    [{"role": "system", "content": "You are Luna, an astronomer."}, {"role": "user", "content": "Tell me of stars"}],
    [{"role": "user", "content": "hello there"}],
    [{"role": "user", "content": "what is a comet?"}, {"role": "assistant", "content": "ice"},
     {"role": "user", "content": "and more?"}],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    texts = [m["content"] for chat in CHATS for m in chat] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    directory = tmp_path_factory.mktemp("predictor") / "model"
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> ChatPredictor:
    model = ChatPredictor("chat", model_dir, max_new_tokens=8)
    assert model.load() and model.ready
    return model


def test_one_prediction_per_instance_in_order_and_reproducible(predictor: ChatPredictor) -> None:
    payload = {"instances": [{"messages": chat} for chat in CHATS], "parameters": {"seed": 3}}
    first = predictor.predict(payload)["predictions"]
    assert len(first) == len(CHATS) and all(isinstance(p["content"], str) for p in first)
    assert predictor.predict(payload)["predictions"] == first
    single = predictor.predict({"instances": [{"messages": CHATS[0]}], "parameters": {"seed": 3}})
    assert isinstance(single["predictions"][0]["content"], str)


def test_the_simulators_policy_goes_through_predict(predictor: ChatPredictor) -> None:
    policy = PredictorPolicy(predictor, "gen1")
    payload = {"instances": [{"messages": chat} for chat in CHATS], "parameters": {"seed": 11}}
    assert policy(CHATS, seed=11) == [p["content"] for p in predictor.predict(payload)["predictions"]]


@pytest.mark.parametrize(
    "payload",
    [{}, {"instances": []}, {"instances": [{"text": "hi"}]}, {"instances": [{"messages": [{"role": "user"}]}]}],
)
def test_malformed_requests_are_invalid_input(predictor: ChatPredictor, payload: dict) -> None:
    with pytest.raises(InvalidInput):
        predictor.predict(payload)


def test_a_directory_without_a_model_fails_to_load(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        ChatPredictor("chat", tmp_path).load()
