"""Names the operator derives from a generation, and the Kubernetes limits they must fit.

Stage children (ConfigMap, Job, headless Service) are named `<generation>-<stage>-<attempt>`; the name is also
a label value (63 characters), a DNS-1035 Service name (63, starting with a letter) and, for Indexed Jobs, the
prefix of the pod host names `<job>-<index>` (63). The standard-mode KServe canary predictor `candidate-<gen>`
becomes the Deployment and Service `<inferenceService>-candidate-<gen>-predictor`. `flywheel validate`, the
operator's model validation and the CRD's CEL rules refuse specs whose names would not fit; `child_name`
still shortens an overlong name with a hash, so no name the operator creates can break a limit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

NAME_LIMIT = 63
"""Kubernetes' limit on label values and DNS labels (Service names, pod host names, Job names)."""
INDEX_SUFFIX = len("-999")
"""Room kept for `-<completion index>` in Indexed Job pod host names (up to 1000 nodes)."""
CHILD_NAME_LIMIT = NAME_LIMIT - INDEX_SUFFIX
"""Longest stage child name: 59."""
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1035 label: Service names (and KServe InferenceService names) must start with a letter."""
CANARY_PREFIX = "candidate-"
PREDICTOR_SUFFIX = "-predictor"
_HASH = 8


def plain_child_name(generation: str, stage: str, attempt: int) -> str:
    return f"{generation}-{stage}-{attempt}"


def child_name(generation: str, stage: str, attempt: int) -> str:
    """`<generation>-<stage>-<attempt>`, deterministic (the same plan names the same Job); a name over
    CHILD_NAME_LIMIT keeps its head and attempt and replaces the rest by a hash of the whole."""
    name = plain_child_name(generation, stage, attempt)
    if len(name) <= CHILD_NAME_LIMIT:
        return name
    tail = f"-{hashlib.sha256(name.encode()).hexdigest()[:_HASH]}-{attempt}"
    return f"{generation}-{stage}"[: CHILD_NAME_LIMIT - len(tail)].rstrip("-") + tail


def canary_predictor_name(generation: str) -> str:
    """The standard-mode canary's predictor name (KServe derives `<isvc>-<name>-predictor` from it)."""
    return f"{CANARY_PREFIX}{generation}"


@dataclass(frozen=True)
class NameProblem:
    """A derived name that would break a Kubernetes limit: the field to change, what breaks, and how to fix it."""

    loc: tuple[str | int, ...]
    message: str
    hint: str


def derived_name_problems(
    generation: str, reward_models: list[str], max_attempts: int, inference_service: str | None, canary_mode: str
) -> list[NameProblem]:
    """Every derived name of a generation that would exceed its limit (empty when all fit)."""
    problems = []
    for index, model in enumerate(reward_models):
        longest = plain_child_name(generation, f"reward-{model}", max_attempts)
        if len(longest) > CHILD_NAME_LIMIT:
            over = len(longest) - CHILD_NAME_LIMIT
            problems.append(
                NameProblem(
                    ("spec", "stages", "rewardModels", index, "name"),
                    f"the Job name {longest!r} of this reward model's last attempt is {len(longest)} characters, "
                    f"over the {CHILD_NAME_LIMIT} that Kubernetes' {NAME_LIMIT}-character limit on names and label "
                    f"values leaves (less '-<index>' of Indexed Job pod host names)",
                    f"shorten metadata.name ({len(generation)} characters) or this name ({len(model)}) by {over} "
                    "characters in total",
                )
            )
    if inference_service is not None and canary_mode == "standard":
        derived = f"{inference_service}-{canary_predictor_name(generation)}{PREDICTOR_SUFFIX}"
        if len(derived) > NAME_LIMIT:
            problems.append(
                NameProblem(
                    ("spec", "canary", "inferenceService"),
                    f"KServe would name the canary's Deployment and Service {derived!r}, {len(derived)} characters, "
                    f"over Kubernetes' {NAME_LIMIT}",
                    f"shorten metadata.name ({len(generation)} characters) or canary.inferenceService "
                    f"({len(inference_service)}) by {len(derived) - NAME_LIMIT} characters in total",
                )
            )
    return problems
