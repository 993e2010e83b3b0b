"""Stage `curate`: fresh traffic logs → filtered, deduplicated, stratified training and evaluation sets.

Order (the report's data consolidation): schema check (malformed rows reported and skipped within the error
budget) → privacy and safety filters → MinHash near-duplicate removal → stratified sampling per character →
held-out evaluation conversations → preference pairs, user-signal labels, the rejection-sampling and RL
prompt pools. Every drop is counted by reason in the curation report.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flywheel_operator.api import StageConfig, StageResult, TrafficSource

from flywheel_trainer.conversation import ConversationLoadError, load_conversations_lenient
from flywheel_trainer.dedup import keep_first_of_clusters
from flywheel_trainer.outputs import StageError, atomic_output_dir, finish_result, sha256_path, write_jsonl
from flywheel_trainer.privacy import pii_kinds
from flywheel_trainer.runtime import existing_uri
from flywheel_trainer.sampling import grouped_split, stratified_sample
from flywheel_trainer.style import style_stats
from flywheel_trainer.turns import (
    Turn,
    assistant_turns,
    conversation_text,
    engagement_pairs,
    opening_key,
    pair_filter_reason,
)

MAX_REPORTED_ROWS = 100
"""Malformed rows listed in the report and the error (all are counted)."""

Record = dict[str, Any]


def _by_character(record: Record) -> str:
    return record["character"]["id"]


def _opening(record: Record) -> str:
    """The conversation's first prompt (its context key), or its id when it has no answered turn."""
    return opening_key(record) or f"conversation:{record['conversation_id']}"


def _held_out_by_opening(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, held_out): a stratified share of the openings, with every conversation that starts with one, in
    both sources at once, so no prompt is on both sides and none of the other openings' turns is lost."""
    kept, held = grouped_split(records, fraction, group=_opening, stratum=_by_character, seed=seed)
    for source in {r["source"] for r in records} - {r["source"] for r in held}:
        of_source = [r for r in kept if r["source"] == source]
        if len(of_source) >= 2:
            more = grouped_split(of_source, fraction, group=_opening, stratum=_by_character, seed=seed)[1]
            ids = {id(r) for r in more}
            kept, held = [r for r in kept if id(r) not in ids], held + more
    return kept, held


def _read_source(source: TrafficSource, field: str, report: dict[str, Any]) -> list[Record]:
    """Valid records of one source; malformed rows go to the report with their location and reasons."""
    uri = existing_uri(source.uri, field=field)
    try:
        dataset, bad_rows = load_conversations_lenient(uri)
    except ConversationLoadError as exc:
        raise StageError(f"{field}: {exc}") from exc
    report["rows_read"] += len(dataset) + len(bad_rows)
    report["malformed_rows"] += len(bad_rows)
    room = MAX_REPORTED_ROWS - len(report["malformed"])
    report["malformed"].extend({"row": f"{bad.file}:{bad.row}", "reasons": list(bad.errors)} for bad in bad_rows[:room])
    records, seen_ids = [], set()
    for record in dataset.to_list():
        if record["conversation_id"] in seen_ids:
            report["dropped"]["duplicate_conversation_id"] += 1
        else:
            seen_ids.add(record["conversation_id"])
            records.append(record)
    return records


def _check_error_budget(report: dict[str, Any], budget: float) -> None:
    rows, bad = report["rows_read"], report["malformed_rows"]
    if rows == 0:
        raise StageError("data: the traffic logs hold no rows; point data.userTraffic.uri at JSONL or Parquet logs")
    if bad / rows > budget:
        listed = "; ".join(f"{m['row']}: {', '.join(m['reasons'])}" for m in report["malformed"][:10])
        raise StageError(
            f"{bad} of {rows} log rows are malformed ({bad / rows:.1%}), above the error budget "
            f"settings.curate.errorBudget={budget:.1%}; first ones: {listed}"
        )


def _privacy_and_safety(records: list[Record], dropped: Counter) -> list[Record]:
    """Drop conversations with personal data; cut each conversation before its first flagged response."""
    kept = []
    for record in records:
        kinds = sorted({kind for m in record["messages"] for kind in pii_kinds(m["content"])})
        if kinds:
            dropped["pii"] += 1
            dropped.update(f"pii_{kind}" for kind in kinds)
            continue
        messages = record["messages"]
        flagged_at = next((i for i, m in enumerate(messages) if m.get("flagged", False)), None)
        if flagged_at is not None:
            dropped["flagged_turns"] += sum(1 for m in messages[flagged_at:] if m["role"] == "assistant")
            record = {**record, "messages": messages[:flagged_at]}
        if not any(m["role"] == "assistant" for m in record["messages"]):
            dropped["no_usable_turns"] += 1
            continue
        kept.append(record)
    return kept


def _prompt_row(turn: Turn) -> dict[str, Any]:
    return {"prompt": turn.context, "character": dict(turn.character), "source": turn.source, "day": turn.day}


def _unique_prompts(turns: Iterable[Turn]) -> list[Turn]:
    seen, unique = set(), []
    for turn in turns:
        if turn.context_key not in seen:
            seen.add(turn.context_key)
            unique.append(turn)
    return unique


def _turns(records: Iterable[Record]) -> list[Turn]:
    return [turn for record in records for turn in assistant_turns(record)]


def main(config: StageConfig) -> StageResult:
    settings = config.settings.curate
    data = config.data
    report: dict[str, Any] = {"rows_read": 0, "malformed_rows": 0, "malformed": [], "dropped": Counter()}
    dropped: Counter = report["dropped"]
    sources = {"user_traffic": data.user_traffic, "internal_traffic": data.internal_traffic}
    by_source = {name: _read_source(src, f"data.{name}.uri", report) for name, src in sources.items() if src}
    eval_given = {"user": data.eval_prompts_user, "internal": data.eval_prompts_internal}
    eval_records = {
        kind: _read_source(src, f"data.evalPrompts{kind.title()}.uri", report)
        for kind, src in eval_given.items()
        if src
    }
    _check_error_budget(report, settings.error_budget)

    records: list[Record] = []
    for name, source_records in by_source.items():
        filtered = _privacy_and_safety(source_records, dropped)
        keep = keep_first_of_clusters(
            [conversation_text(r) for r in filtered], threshold=settings.dedup_threshold, seed=config.seed
        )
        dropped["near_duplicate"] += keep.count(False)
        unique = [r for r, k in zip(filtered, keep, strict=True) if k]
        size = sources[name].sample_size or len(unique)
        sampled = stratified_sample(unique, size, stratum=_by_character, seed=config.seed)
        dropped["sampled_out"] += len(unique) - len(sampled)
        records.extend(sampled)

    train = [r for r in records if r["source"] in eval_records]
    train_split, held = _held_out_by_opening(
        [r for r in records if r["source"] not in eval_records], settings.eval_fraction, config.seed
    )
    train.extend(train_split)
    eval_turns: dict[str, list[Turn]] = {}
    for kind in ("user", "internal"):
        if kind in eval_records:
            eval_turns[kind] = _unique_prompts(_turns(_privacy_and_safety(eval_records[kind], dropped)))
        else:
            eval_turns[kind] = _unique_prompts(_turns(r for r in held if r["source"] == kind))
    eval_keys = {t.context_key for turns in eval_turns.values() for t in turns}
    train_turns = []
    for turn in _turns(train):
        if turn.context_key in eval_keys:
            dropped["eval_overlap"] += 1
        else:
            train_turns.append(turn)
    if not train_turns:
        raise StageError("curate kept no training turns; check the logs, the filters and settings.curate")

    pairs = []
    for pair in engagement_pairs(train_turns, settings.max_pairs_per_context):
        reason = pair_filter_reason(
            pair, max_length_ratio=settings.max_length_ratio, max_emoji_difference=settings.max_emoji_difference
        )
        if reason:
            dropped[f"pair_{reason}"] += 1
        else:
            pairs.append(pair)
    prompts = _unique_prompts(train_turns)
    rl_pool = stratified_sample(
        prompts, settings.rl_prompt_pool_size, stratum=lambda t: t.character["id"], seed=config.seed
    )
    latest_user = sorted((t for t in prompts if t.source == "user"), key=lambda t: -t.day)
    sft_prompts = latest_user[: config.settings.sft.rejection_sampling.prompts]

    kept = {
        "conversations": len(records),
        "train_conversations": len(train),
        "train_turns": len(train_turns),
        "pairs": len(pairs),
        "signals": len(train_turns),
        "sft_prompts": len(sft_prompts),
        "rl_prompts": len(rl_pool),
        "eval_user": len(eval_turns["user"]),
        "eval_internal": len(eval_turns["internal"]),
    }
    curation_report = {
        "rows_read": report["rows_read"],
        "malformed_rows": report["malformed_rows"],
        "malformed": report["malformed"],
        "dropped": dict(sorted(dropped.items())),
        "kept": kept,
        "pair_style": {
            "chosen": style_stats([p.chosen for p in pairs]).model_dump() if pairs else None,
            "rejected": style_stats([p.rejected for p in pairs]).model_dump() if pairs else None,
        },
    }
    with atomic_output_dir(config.output_dir) as out:
        write_jsonl(
            out / "pairs.jsonl",
            (
                {
                    **_prompt_row(p.turn),
                    "chosen": [{"role": "assistant", "content": p.chosen}],
                    "rejected": [{"role": "assistant", "content": p.rejected}],
                }
                for p in pairs
            ),
        )
        write_jsonl(
            out / "signals.jsonl",
            (
                {
                    **_prompt_row(t),
                    "completion": [{"role": "assistant", "content": t.response}],
                    "continued": t.continued,
                    "thumb_up": t.thumb == "up",
                }
                for t in train_turns
            ),
        )
        write_jsonl(out / "sft_prompts.jsonl", map(_prompt_row, sft_prompts))
        write_jsonl(out / "rl_prompts.jsonl", map(_prompt_row, rl_pool))
        write_jsonl(out / "eval_user.jsonl", map(_prompt_row, eval_turns["user"]))
        write_jsonl(out / "eval_internal.jsonl", map(_prompt_row, eval_turns["internal"]))
        Path(out / "report.json").write_text(
            json.dumps(curation_report, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8"
        )
        inputs = {name: sha256_path(existing_uri(src.uri, field=name)) for name, src in sources.items() if src}
        inputs.update(
            {f"eval_prompts_{k}": sha256_path(existing_uri(s.uri, field=k)) for k, s in eval_given.items() if s}
        )
        artifacts = {
            name: f"{name}.jsonl"
            for name in ("pairs", "signals", "sft_prompts", "rl_prompts", "eval_user", "eval_internal")
        }
        return finish_result(
            out,
            config.output_dir,
            stage="curate",
            artifacts={**artifacts, "report": "report.json"},
            input_digests=inputs,
            metrics={
                "rows_read": report["rows_read"],
                "malformed_rows": report["malformed_rows"],
                **{f"kept_{k}": v for k, v in kept.items()},
                **{f"dropped_{k}": v for k, v in dropped.items()},
            },
            details={"report": curation_report},
        )
