"""curate: error budget with row numbers, privacy and safety filters, near-duplicates, disjoint eval sets,
pair filters, and all-or-nothing outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from flywheel_operator.api import StageConfig
from flywheel_trainer.curate import main as curate
from flywheel_trainer.outputs import StageError, read_jsonl
from flywheel_trainer.synthetic import synthetic_records, write_jsonl
from flywheel_trainer.turns import Pair, Turn, context_key, pair_filter_reason
from hypothesis import given
from hypothesis import strategies as st


def _config(log: Path, out: Path, **curate_settings: Any) -> StageConfig:
    return StageConfig.model_validate(
        {
            "stage": "curate",
            "name": "curate",
            "generation": "gen1",
            "outputDir": str(out),
            "policy": "unused",
            "data": {"userTraffic": {"uri": str(log)}},
            "settings": {"curate": curate_settings},
        }
    )


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return synthetic_records(120, seed=3)


def test_malformed_rows_within_budget_are_reported_by_row_and_skipped(tmp_path: Path, records: list) -> None:
    lines = [json.dumps(r) for r in records]
    missing_source = {k: v for k, v in records[0].items() if k != "source"}
    lines[4] = "{not json"
    lines[9] = json.dumps(missing_source)
    log = _write_lines(tmp_path / "log.jsonl", lines)
    result = curate(_config(log, tmp_path / "out", error_budget=0.05))
    report = json.loads(Path(result.artifacts["report"]).read_text())
    assert report["malformed_rows"] == 2 and result.metrics["malformed_rows"] == 2
    rows = {entry["row"]: entry["reasons"] for entry in report["malformed"]}
    assert set(rows) == {f"{log}:5", f"{log}:10"}
    assert "not valid JSON" in rows[f"{log}:5"][0]
    assert any("source" in reason for reason in rows[f"{log}:10"])


def test_malformed_rows_above_budget_fail_and_write_nothing(tmp_path: Path, records: list) -> None:
    lines = [json.dumps(r) for r in records[:20]] + ["[1, 2]", "{}", "garbage"]
    log = _write_lines(tmp_path / "log.jsonl", lines)
    out = tmp_path / "out"
    with pytest.raises(StageError, match=r"3 of 23 log rows are malformed.*errorBudget.*log\.jsonl:21"):
        curate(_config(log, out, error_budget=0.1))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [log]


def test_personal_data_and_flagged_turns_are_dropped(tmp_path: Path, records: list) -> None:
    dirty = copy.deepcopy(records)
    dirty[0]["messages"][0]["content"] += " mail me at jo.doe@example.com"
    dirty[1]["messages"][0]["content"] += " my number is +1 415 555 0199"
    dirty[2]["messages"][0]["content"] += " card 4111111111111111"
    flagged = next(r for r in dirty[3:] if len(r["messages"]) >= 4)
    flagged["messages"][1]["flagged"] = True
    log = write_jsonl(dirty, tmp_path / "log.jsonl")
    result = curate(_config(log, tmp_path / "out"))
    dropped = json.loads(Path(result.artifacts["report"]).read_text())["dropped"]
    assert dropped["pii"] == 3
    assert dropped["pii_email"] == 1 and dropped["pii_phone"] >= 1 and dropped["pii_digit_run"] == 1
    assert dropped["flagged_turns"] >= 1 and dropped["no_usable_turns"] >= 1
    texts = Path(result.artifacts["signals"]).read_text() + Path(result.artifacts["pairs"]).read_text()
    assert "jo.doe@example.com" not in texts and "4111111111111111" not in texts


def test_near_duplicates_are_removed_at_the_configured_threshold(tmp_path: Path, records: list) -> None:
    copies = copy.deepcopy(records[:10])
    for i, record in enumerate(copies):
        record["conversation_id"] = f"copy-{i}"
    log = write_jsonl(records + copies, tmp_path / "log.jsonl")
    strict = curate(_config(log, tmp_path / "strict", dedup_threshold=0.85))
    assert strict.metrics["dropped_near_duplicate"] >= 10
    kept_all = curate(_config(log, tmp_path / "loose", dedup_threshold=1.0))
    assert kept_all.metrics["kept_conversations"] > strict.metrics["kept_conversations"]


def test_evaluation_prompts_are_disjoint_from_everything_trained_on(tmp_path: Path, records: list) -> None:
    result = curate(_config(write_jsonl(records, tmp_path / "log.jsonl"), tmp_path / "out", eval_fraction=0.2))
    eval_keys = {
        context_key(r["prompt"]) for key in ("eval_user", "eval_internal") for r in read_jsonl(result.artifacts[key])
    }
    assert eval_keys
    for key in ("pairs", "signals", "sft_prompts", "rl_prompts"):
        rows = read_jsonl(result.artifacts[key])
        assert rows, key
        assert not eval_keys & {context_key(r["prompt"]) for r in rows}, key
    assert {r["source"] for r in read_jsonl(result.artifacts["eval_internal"])} == {"internal"}


def _sharing_openings(records: list[dict[str, Any]], openings: int) -> list[dict[str, Any]]:
    """The records with their first user message replaced by one of a few openings, as a world's users open."""
    shared = copy.deepcopy(records)
    for index, record in enumerate(shared):
        first = next(m for m in record["messages"] if m["role"] == "user")
        first["content"] = f"hello, can we talk about topic {index % openings}?"
    return shared


def test_conversations_sharing_an_opening_stay_on_one_side_and_no_training_turn_is_lost(
    tmp_path: Path, records: list
) -> None:
    shared = _sharing_openings(records, openings=6)
    result = curate(_config(write_jsonl(shared, tmp_path / "log.jsonl"), tmp_path / "out", eval_fraction=0.2))
    report = json.loads(Path(result.artifacts["report"]).read_text())
    assert "eval_overlap" not in report["dropped"]
    eval_rows = [r for key in ("eval_user", "eval_internal") for r in read_jsonl(result.artifacts[key])]
    eval_keys = {context_key(r["prompt"]) for r in eval_rows}
    assert {r["source"] for r in eval_rows} == {"user", "internal"}
    signal_keys = {context_key(r["prompt"]) for r in read_jsonl(result.artifacts["signals"])}
    assert signal_keys and not eval_keys & signal_keys
    assert any(len(r["prompt"]) <= 2 for r in eval_rows), "some openings are held out whole"


def test_pairs_prefer_engaged_responses_and_pass_the_filters(tmp_path: Path, records: list) -> None:
    result = curate(_config(write_jsonl(records, tmp_path / "log.jsonl"), tmp_path / "out"))
    pairs = read_jsonl(result.artifacts["pairs"])
    assert pairs
    good_words = {"love", "wonderful", "adore"}
    for pair in pairs:
        assert good_words & set(pair["chosen"][0]["content"].split())
        assert not good_words & set(pair["rejected"][0]["content"].split())


def _turn() -> Turn:
    return Turn(
        context=[{"role": "user", "content": "hi"}],
        response="",
        continued=True,
        thumb=None,
        label="chosen",
        rejected=(),
        character={"id": "c"},
        source="user",
        conversation_id="x",
        day=0,
    )


@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 4), st.integers(0, 4))
def test_pair_filter_drops_length_and_emoji_shortcuts(
    chosen_words: int, rejected_words: int, chosen_emojis: int, rejected_emojis: int
) -> None:
    pair = Pair(
        _turn(),
        " ".join(["word"] * chosen_words) + "🙂" * chosen_emojis,
        " ".join(["word"] * rejected_words) + "🙂" * rejected_emojis,
    )
    reason = pair_filter_reason(pair, max_length_ratio=1.5, max_emoji_difference=1)
    long, short = max(chosen_words, rejected_words), min(chosen_words, rejected_words)
    if long > 1.5 * short:
        assert reason == "length_ratio"
    elif abs(chosen_emojis - rejected_emojis) > 1:
        assert reason == "emoji_difference"
    else:
        assert reason is None


def test_parquet_logs_curate_like_jsonl(tmp_path: Path, records: list) -> None:
    from flywheel_trainer.conversation import write_conversations

    parquet = write_conversations(records, tmp_path / "log.parquet")
    jsonl = write_conversations(records, tmp_path / "log.jsonl")
    a = curate(_config(parquet, tmp_path / "a"))
    b = curate(_config(jsonl, tmp_path / "b"))
    assert a.metrics == b.metrics
    assert Path(a.artifacts["pairs"]).read_bytes() == Path(b.artifacts["pairs"]).read_bytes()
