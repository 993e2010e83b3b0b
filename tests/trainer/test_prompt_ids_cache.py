"""prompt_ids_many assembles the local tokenizer's prompt ids from cached per-message ids: pinned here to give
exactly the ids of rendering each chat with `apply_chat_template`, and to leave every tokenizer it cannot
prove that for (another template, an added token that strips whitespace) on the rendered path."""

from __future__ import annotations

import copy

import pytest
from flywheel_trainer import generation
from flywheel_trainer.generation import prompt_ids, prompt_ids_many
from flywheel_trainer.tinymodel import CHAT_TEMPLATE, train_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CONTROL_STRINGS = ["</s>", "<s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>", "<|", "|>", "</s", "<", ">"]
WHITESPACE = [" ", "  ", "\n", "\t", " \n "]


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["the captain flies to the stars tonight", "where are you, Nova?", "ahoy! 🙂 héllo\nworld"]
    return train_tokenizer(texts * 5, vocab_size=300)


contents = st.lists(
    st.one_of(st.text(max_size=8), st.sampled_from(CONTROL_STRINGS), st.sampled_from(WHITESPACE)), max_size=8
).map("".join)
chats_of = st.lists(
    st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), contents), max_size=6),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chats=chats_of, max_tokens=st.one_of(st.none(), st.integers(1, 60)))
def test_assembled_ids_are_the_rendered_ids(tokenizer, chats, max_tokens) -> None:
    """Edge whitespace, newlines, unicode and literal control-token strings in a content give the ids of the
    render (the batched render for an empty chat too, which one call alone refuses), with and without
    truncation; the cache carries over between examples, as over a simulated day."""
    conversations = [[{"role": role, "content": text} for role, text in chat] for chat in chats]
    assert generation._Concatenation.of(tokenizer) is not None
    assembled = prompt_ids_many(tokenizer, conversations, max_tokens=max_tokens)
    rendered = generation._rendered_ids(tokenizer, conversations)
    assert assembled == [ids[-max_tokens:] if max_tokens else ids for ids in rendered]
    assert [ids for ids, chat in zip(assembled, conversations, strict=True) if chat] == [
        prompt_ids(tokenizer, chat, max_tokens=max_tokens) for chat in conversations if chat
    ]


def test_a_full_cache_is_emptied_and_the_ids_stay_those_of_the_render(tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(generation._Concatenation, "CACHE_LIMIT", 3)
    chats = [
        [{"role": "user", "content": f"turn {i}"}, {"role": "assistant", "content": f"reply {i} "}] for i in range(5)
    ]
    for chat in chats:
        assert prompt_ids_many(tokenizer, [chat]) == [prompt_ids(tokenizer, chat)]
        assert len(generation._Concatenation.of(tokenizer).contents) <= 3


def test_rows_are_fresh_lists(tokenizer) -> None:
    chat = [{"role": "user", "content": "hello"}]
    first, second = prompt_ids_many(tokenizer, [chat, chat])
    first.append(-1)
    assert second == prompt_ids(tokenizer, chat) == prompt_ids_many(tokenizer, [chat])[0]


def test_other_tokenizers_take_the_rendered_path(tokenizer) -> None:
    """A different template, or an EOS that strips the whitespace before it (the render then drops a content's
    trailing spaces, which the assembly would keep), is not assembled; the ids are the render's."""
    chat = [{"role": "user", "content": "hi  "}, {"role": "assistant", "content": " ahoy"}]
    other_template = copy.deepcopy(tokenizer)
    other_template.chat_template = CHAT_TEMPLATE.replace("{{ eos_token }}", "\n{{ eos_token }}")
    stripping = copy.deepcopy(tokenizer)
    from tokenizers import AddedToken

    stripping.add_tokens([AddedToken("</s>", lstrip=True, normalized=False, special=True)], special_tokens=True)
    for tok in (other_template, stripping):
        assert generation._Concatenation.of(tok) is None
        rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert prompt_ids_many(tok, [chat]) == [list(rendered["input_ids"])]
        assert prompt_ids_many(tok, [chat]) != prompt_ids_many(tokenizer, [chat])


def test_an_unknown_role_or_a_non_text_content_is_left_to_the_template(tokenizer) -> None:
    with pytest.raises(Exception, match="unknown role tool"):
        prompt_ids_many(tokenizer, [[{"role": "tool", "content": "x"}]])
    chat = [{"role": "user", "content": None}]
    assert prompt_ids_many(tokenizer, [chat]) == [prompt_ids(tokenizer, chat)]
