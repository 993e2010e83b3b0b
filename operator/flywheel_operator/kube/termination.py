"""The result channel from a stage pod to the operator: result.json, compacted into the termination message.

The operator does not mount the artifact store. When `flywheel-train` succeeds, local rank 0 copies the stage's
result.json into the file named by `FLYWHEEL_TERMINATION_LOG` (`/dev/termination-log`, `write_message`; also
`python -m flywheel_operator.kube.termination CONFIG [LOG]`); the kubelet puts it in the Pod's
`status.containerStatuses[].state.terminated.message` (at most 4096 bytes), where the backend reads it. Only
what the planner needs is kept: metrics, artifacts, the output digest and the eval stage's `details.offline_metrics`.

In a multi-node stage every pod runs the writer, but only node 0 hosts rank 0, which writes result.json; the
other nodes write a note instead. The result also stays in `<outputDir>/result.json`, where the backend reads it
when the pod is gone (backend.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from flywheel_operator import storage
from flywheel_operator.api import StageConfig, StageResult

MESSAGE_LIMIT = 4096
"""Bytes the kubelet keeps of a termination message."""


def compact_result(result: StageResult) -> str:
    """The smallest JSON of `result` that still carries what the planner reads; raises when it cannot fit."""
    details = {"offline_metrics": result.details["offline_metrics"]} if "offline_metrics" in result.details else {}
    wire: dict[str, Any] = result.model_copy(update={"details": details, "input_digests": {}}).to_wire()
    text = json.dumps(wire, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > MESSAGE_LIMIT:
        raise ValueError(
            f"the {result.stage} result is {len(text.encode())} bytes compacted, over the {MESSAGE_LIMIT}-byte "
            "termination message limit: report fewer metrics or shorter artifact URIs"
        )
    return text


def parse_message(message: str | None) -> StageResult | None:
    """The StageResult in a termination message; None when it is absent or not a result."""
    if not message or not message.strip().startswith("{"):
        return None
    try:
        return StageResult.model_validate_json(message)
    except ValueError:
        return None


def publishing_node() -> int:
    """This pod's node rank: `PET_NODE_RANK` (the Indexed Job's completion index) or 0 for a one-pod Job."""
    value = os.environ.get("PET_NODE_RANK", "0")
    if not value.isdigit():
        raise ValueError(f"PET_NODE_RANK={value!r} is not a node rank: the Job must set the completion index")
    return int(value)


def write_message(config: StageConfig, target: Path) -> None:
    """Write the termination message of this pod: node 0's compact result, or a note on the other nodes.

    Called by the stage program itself (`FLYWHEEL_TERMINATION_LOG`, on local rank 0 once the stage succeeded), so
    the container's command is the program with no shell around it."""
    node = publishing_node()
    if node != 0:
        # Rank 0 (on node 0) writes result.json, possibly after this node's ranks finished: nothing to wait for.
        target.write_text(f"node {node} finished; node 0 publishes the result", encoding="utf-8")
        return
    source = storage.join(config.output_dir, "result.json")
    try:
        result = StageResult.model_validate_json(storage.read_text(source))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{source} does not exist: the stage wrote no result") from exc
    target.write_text(compact_result(result), encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m flywheel_operator.kube.termination CONFIG [TERMINATION_LOG]", file=sys.stderr)
        return 2
    target = Path(argv[1] if len(argv) == 2 else "/dev/termination-log")
    node = publishing_node()
    if node != 0:
        # Rank 0 (on node 0) writes result.json, possibly after this node's ranks finished: nothing to wait for.
        target.write_text(f"node {node} finished; node 0 publishes the result", encoding="utf-8")
        return 0
    config = StageConfig.model_validate(yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8")))
    source = storage.join(config.output_dir, "result.json")
    try:
        result = StageResult.model_validate_json(storage.read_text(source))
    except FileNotFoundError:
        print(f"{source} does not exist: the stage wrote no result", file=sys.stderr)
        return 1
    target.write_text(compact_result(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
