"""`flywheel validate`'s cluster review of a valid generation: will its models load, and fit, where it runs?

- a Hugging Face Hub id with no cache volume is downloaded again by every pod of every stage (a warning);
  with `resources.hub.offline` and no cache volume it cannot load at all (a problem);
- a model whose parameters (counted from its config.json: capacity.parameter_count) cannot fit the GPUs its
  stage asks for is a problem, named by the field that names the model.

Config files are read from a local model directory, or for a Hub id from the Hugging Face cache and, when the
Hub is reachable (not `HF_HUB_OFFLINE`), the Hub itself (config.json only, never weights). A model whose config
cannot be read is not checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flywheel_operator import capacity, storage
from flywheel_operator.api import FlywheelGeneration


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())
    return Path(home) / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def read_model_config(reference: str) -> dict[str, Any] | None:
    """config.json of a model reference (a local directory or a Hub id); None when it cannot be read."""
    try:
        if capacity.is_hub_id(reference):
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            found = try_to_load_from_cache(reference, "config.json", cache_dir=str(hub_cache_dir()))
            if not isinstance(found, str):
                if _offline():
                    return None
                found = hf_hub_download(reference, "config.json", cache_dir=str(hub_cache_dir()))
            return json.loads(Path(found).read_text(encoding="utf-8"))
        path = storage.local_path(reference)
        if path is None:  # an object store: read the small file through the seam (credentials permitting)
            return json.loads(storage.read_text(storage.join(reference, "config.json")))
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except Exception:  # unreadable, gated without a token, offline, not a model: not checked
        return None


def review(generation: FlywheelGeneration) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(problems, warnings), each (field path, message, hint)."""
    res = generation.spec.resources
    problems: list[tuple[str, str, str]] = []
    warnings: list[tuple[str, str, str]] = []
    models = {m.reference: m.field for group in capacity.stage_models(generation).values() for m in group}
    cached = bool(res.hub.cache_pvc or res.storage.pvc)
    for reference, field in sorted(models.items(), key=lambda item: item[1]):
        if not capacity.is_hub_id(reference) or cached:
            continue
        if res.hub.offline:
            problems.append((field, f"Hugging Face Hub model {reference!r} cannot load: resources.hub.offline "
                             "forbids downloading it and no cache volume holds it",
                             "set resources.hub.cachePvc to a claim that holds it, or give a path or URI"))
        else:
            warnings.append((field, f"Hugging Face Hub model {reference!r} has no cache volume: every pod of every "
                             "stage downloads it again into its scratch space",
                             "set resources.hub.cachePvc (a ReadWriteMany claim) to download it once"))
    parameters = {}
    for reference in models:
        config = read_model_config(reference)
        if config is not None:
            try:
                parameters[reference] = capacity.parameter_count(config)
            except (KeyError, TypeError, ValueError):
                continue
    for field, message in capacity.fit_problems(generation, parameters):
        problems.append((field, message, ""))
    return problems, warnings
