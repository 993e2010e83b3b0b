"""The Job controller's admission rules and the Pod Security Standards, as the emulator enforces them on the
stage Jobs the operator writes (issue 24). The pinned inventories under tests/schemas/ list every error site of
the upstream sources; `JOB_TABLE` and `PSS_TABLE` say, for each, whether it is enforced here (and by which test)
or why it cannot apply to what the operator writes. tests/operator/test_job_admission.py fails when an
inventory holds an entry the table lacks.

Messages returned here are the upstream ones (`field.ErrorList` style: `<path>: <kind>: <message>`), so a test
reads the same text a real API server would answer.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).parent.parent / "schemas"
JOB_INVENTORY = SCHEMAS / "kubernetes-batch-job-validation.messages.json"
PSS_INVENTORY = SCHEMAS / "kubernetes-pod-security.checks.json"
T = "tests/operator/test_job_admission.py::"

MAX_PARALLELISM_INDEXED = 100_000
MAX_FAILED_INDEXES = 100_000
COMPLETIONS_SOFT_LIMIT = 100_000
PARALLELISM_HIGH_COMPLETIONS = 10_000
MAX_FAILED_INDEXES_HIGH_COMPLETIONS = 10_000
MAX_RULES = 20
MAX_EXIT_CODES = 255
MAX_CONDITION_PATTERNS = 20
ACTIONS = ("Count", "FailIndex", "FailJob", "Ignore")
OPERATORS = ("In", "NotIn")
STATUSES = ("False", "True", "Unknown")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

STATUS_ONLY = "the operator never writes a Job's status (the Job controller does)"
NO_UPDATE = "the operator never updates a Job (it creates, reads and deletes them)"
NO_CRONJOB = "the operator writes no CronJob"
NO_SELECTOR = "the operator sets no selector: the API server generates it (and its labels) on create"
NO_SUCCESS_POLICY = "the operator writes no successPolicy: a stage Job succeeds when every index does"
NO_MANAGED_BY = "the operator writes no managedBy (the built-in Job controller manages its Jobs)"

JOB_TABLE: dict[str, tuple[str, str]] = {
    # message (or `<Kind> <path>`) -> ("enforced", the test that pins it) | ("n/a", why it cannot apply)
    "Required metadata.uid": ("n/a", NO_SELECTOR),
    "`selector` not auto-generated": ("n/a", NO_SELECTOR),
    "will not able to create pod with invalid DNS label: %s": ("enforced", T + "test_indexed_job_rules"),
    "Required spec.selector": ("n/a", NO_SELECTOR),
    "`selector` does not match template `labels`": ("n/a", NO_SELECTOR),
    "when maxFailedIndexes is specified": ("enforced", T + "test_backoff_limit_per_index_rules"),
    "TooLongMaxLength spec.managedBy": ("n/a", NO_MANAGED_BY),
    "NotSupported spec.completionMode": ("enforced", T + "test_indexed_job_rules"),
    "when completion mode is %s": ("enforced", T + "test_indexed_job_rules"),
    "must be less than or equal to %d when completion mode is %s": ("enforced", T + "test_indexed_job_rules"),
    "must be less than or equal to completions": ("enforced", T + "test_backoff_limit_per_index_rules"),
    "must be less than or equal to %d": ("enforced", T + "test_backoff_limit_per_index_rules"),
    "must be specified when completions is above %d": ("enforced", T + "test_backoff_limit_per_index_rules"),
    "must be less than or equal to %d when completions are above %d and used with backoff limit per index": (
        "enforced", T + "test_backoff_limit_per_index_rules"),
    "requires indexed completion mode": ("enforced", T + "test_backoff_limit_per_index_rules"),
    "valid values: %q, %q": ("enforced", T + "test_pod_failure_policy_rules"),
    "NotSupported spec.template.spec.restartPolicy": ("enforced", T + "test_pod_failure_policy_rules"),
    "only %q is supported when podFailurePolicy is specified": ("enforced", T + "test_pod_failure_policy_rules"),
    "TooMany spec.podFailurePolicy.rules": ("enforced", T + "test_pod_failure_policy_rules"),
    "NotSupported spec.podReplacementPolicy": ("enforced", T + "test_pod_failure_policy_rules"),
    "valid values: %q": ("enforced", T + "test_pod_failure_policy_rules"),
    "requires the backoffLimitPerIndex to be set": ("enforced", T + "test_pod_failure_policy_rules"),
    "NotSupported spec.podFailurePolicy.rules[*].action": ("enforced", T + "test_pod_failure_policy_rules"),
    "specifying both OnExitCodes and OnPodConditions is not supported": (
        "enforced", T + "test_pod_failure_policy_rules"),
    "specifying one of OnExitCodes and OnPodConditions is required": ("enforced", T + "test_pod_failure_policy_rules"),
    "TooMany spec.podFailurePolicy.rules[*].onPodConditions": ("enforced", T + "test_pod_failure_policy_rules"),
    "NotSupported spec.podFailurePolicy.rules[*].onPodConditions[*].status": (
        "enforced", T + "test_pod_failure_policy_rules"),
    "NotSupported spec.podFailurePolicy.rules[*].onExitCodes.operator": (
        "enforced", T + "test_pod_failure_policy_rules"),
    "must be one of the container or initContainer names in the pod template": (
        "enforced", T + "test_pod_failure_policy_rules"),
    "at least one value is required": ("enforced", T + "test_pod_failure_policy_rules"),
    "TooMany spec.podFailurePolicy.rules[*].onExitCodes.values": ("enforced", T + "test_pod_failure_policy_rules"),
    "must not be 0 for the In operator": ("enforced", T + "test_pod_failure_policy_rules"),
    "Duplicate spec.podFailurePolicy.rules[*].onExitCodes.values[*]": (
        "enforced", T + "test_pod_failure_policy_rules"),
    "must be ordered": ("enforced", T + "test_pod_failure_policy_rules"),
    "at least one rules must be specified when the successPolicy is specified": ("n/a", NO_SUCCESS_POLICY),
    "TooMany spec.successPolicy.rules": ("n/a", NO_SUCCESS_POLICY),
    "at least one of succeededCount or succeededIndexes must be specified": ("n/a", NO_SUCCESS_POLICY),
    "TooLong spec.successPolicy.rules[*].succeededIndexes": ("n/a", NO_SUCCESS_POLICY),
    "error parsing succeededIndexes: %s": ("n/a", NO_SUCCESS_POLICY),
    "must be less than or equal to %d (the number of specified completions)": ("n/a", NO_SUCCESS_POLICY),
    "must be less than or equal to %d (the number of indexes in the specified succeededIndexes field)": (
        "n/a", NO_SUCCESS_POLICY),
    "can only be modified in tandem with %s": ("n/a", NO_UPDATE),
    "failedIndexes and completedIndexes overlap at index: %d": ("n/a", STATUS_ONLY),
    "non-increasing order, previous: %d, current: %d": ("n/a", STATUS_ONLY + "; the operator writes no successPolicy"),
    "the fragment %q violates the requirement that an index interval can have at most two parts separated by '-'": (
        "n/a", STATUS_ONLY + "; the operator writes no successPolicy"),
    "cannot convert string to integer for index: %q": ("n/a", STATUS_ONLY + "; the operator writes no successPolicy"),
    "too large index: %q": ("n/a", STATUS_ONLY + "; the operator writes no successPolicy"),
}
_BY_FUNCTION_NA = {"validateJobStatus": STATUS_ONLY, "ValidateJobStatusUpdate": STATUS_ONLY,
                   "ValidateCronJobCreate": NO_CRONJOB, "validateCronJobSpec": NO_CRONJOB,
                   "validateConcurrencyPolicy": NO_CRONJOB, "validateScheduleFormat": NO_CRONJOB,
                   "validateTimeZone": NO_CRONJOB, "ValidateJobTemplateSpec": NO_CRONJOB}
"""Whole functions that cannot apply: each of their messages is not applicable for the function's reason."""

PSS_TABLE: dict[str, tuple[str, str]] = {
    # check id -> ("enforced", test) | ("n/a", why)
    "hostProcess": ("n/a", "stage pods are Linux pods (no windowsOptions)"),
    "hostNamespaces": ("enforced", T + "test_pod_security_restricted"),
    "privileged": ("enforced", T + "test_pod_security_restricted"),
    "capabilities_baseline": ("enforced", T + "test_rdma_pods_need_a_privileged_namespace"),
    "hostPathVolumes": ("enforced", T + "test_pod_security_restricted"),
    "hostPorts": ("enforced", T + "test_pod_security_restricted"),
    "appArmorProfile": ("enforced", T + "test_pod_security_restricted"),
    "seLinuxOptions": ("enforced", T + "test_pod_security_restricted"),
    "procMount": ("enforced", T + "test_pod_security_restricted"),
    "seccompProfile_baseline": ("enforced", T + "test_pod_security_restricted"),
    "sysctls": ("enforced", T + "test_pod_security_restricted"),
    "baselineVolumes": ("enforced", T + "test_pod_security_restricted"),
    "restrictedVolumes": ("enforced", T + "test_pod_security_restricted"),
    "allowPrivilegeEscalation": ("enforced", T + "test_pod_security_restricted"),
    "runAsNonRoot": ("enforced", T + "test_pod_security_restricted"),
    "runAsUser": ("enforced", T + "test_pod_security_restricted"),
    "seccompProfile_restricted": ("enforced", T + "test_pod_security_restricted"),
    "capabilities_restricted": ("enforced", T + "test_rdma_pods_need_a_privileged_namespace"),
}


def job_inventory() -> list[dict[str, str]]:
    return json.loads(JOB_INVENTORY.read_text())["messages"]


def pss_inventory() -> list[dict[str, str]]:
    return json.loads(PSS_INVENTORY.read_text())["checks"]


def job_verdict(entry: dict[str, str]) -> tuple[str, str] | None:
    """The table's verdict on one inventory entry (None: the table lacks it)."""
    if entry["function"] in _BY_FUNCTION_NA:
        return "n/a", _BY_FUNCTION_NA[entry["function"]]
    return JOB_TABLE.get(entry["message"])


# --------------------------------------------------------------------------------------------------- Job rules
def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def job_problems(job: dict[str, Any]) -> list[str]:
    """The applicable rules of the Job validation (create) on `job`, with upstream messages."""
    spec = job.get("spec") or {}
    name = (job.get("metadata") or {}).get("name", "")
    out: list[str] = []
    mode = spec.get("completionMode")
    completions, parallelism = _int(spec.get("completions")), _int(spec.get("parallelism"))
    per_index, max_failed = _int(spec.get("backoffLimitPerIndex")), _int(spec.get("maxFailedIndexes"))
    if max_failed is not None and per_index is None:
        out.append("spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified")
    if mode is not None and mode not in ("NonIndexed", "Indexed"):
        out.append(f'spec.completionMode: Unsupported value: "{mode}": supported values: "NonIndexed", "Indexed"')
    if mode == "Indexed":
        if completions is None:
            out.append("spec.completions: Required value: when completion mode is Indexed")
        if parallelism is not None and parallelism > MAX_PARALLELISM_INDEXED:
            out.append(f"spec.parallelism: Invalid value: {parallelism}: must be less than or equal to "
                       f"{MAX_PARALLELISM_INDEXED} when completion mode is Indexed")
        if completions is not None and max_failed is not None and max_failed > completions:
            out.append(f"spec.maxFailedIndexes: Invalid value: {max_failed}: must be less than or equal to completions")
        if max_failed is not None and max_failed > MAX_FAILED_INDEXES:
            out.append(f"spec.maxFailedIndexes: Invalid value: {max_failed}: must be less than or equal to "
                       f"{MAX_FAILED_INDEXES}")
        if completions is not None and completions > COMPLETIONS_SOFT_LIMIT and per_index is not None:
            if max_failed is None:
                out.append(f"spec.maxFailedIndexes: Required value: must be specified when completions is above "
                           f"{COMPLETIONS_SOFT_LIMIT}")
            for path, value, limit in (("parallelism", parallelism, PARALLELISM_HIGH_COMPLETIONS),
                                       ("maxFailedIndexes", max_failed, MAX_FAILED_INDEXES_HIGH_COMPLETIONS)):
                if value is not None and value > limit:
                    out.append(f"spec.{path}: Invalid value: {value}: must be less than or equal to {limit} when "
                               f"completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index")
        hostname = f"{name}-{(completions or 1) - 1}"
        if completions is not None and completions > 0 and (not DNS1123_LABEL.match(hostname) or len(hostname) > 63):
            out.append(f"metadata.name: Invalid value: \"{name}\": will not able to create pod with invalid DNS "
                       f"label: {hostname}")
    else:
        for path, value in (("backoffLimitPerIndex", per_index), ("maxFailedIndexes", max_failed)):
            if value is not None:
                out.append(f"spec.{path}: Invalid value: {value}: requires indexed completion mode")
        if spec.get("successPolicy") is not None:
            out.append("spec.successPolicy: Invalid value: requires indexed completion mode")
    pod_spec = ((spec.get("template") or {}).get("spec")) or {}
    policy = spec.get("podFailurePolicy")
    if policy is not None:
        out += _pod_failure_policy(policy, pod_spec, per_index)
    replacement = spec.get("podReplacementPolicy")
    if replacement is not None:
        allowed = ("Failed",) if policy is not None else ("Failed", "TerminatingOrFailed")
        if replacement not in allowed:
            out.append(f'spec.podReplacementPolicy: Unsupported value: "{replacement}": supported values: '
                       + ", ".join(f'"{a}"' for a in allowed))
    restart = pod_spec.get("restartPolicy", "")
    if restart in ("Always", ""):
        out.append('spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"')
    elif restart not in ("OnFailure", "Never"):
        out.append(f'spec.template.spec.restartPolicy: Unsupported value: "{restart}": supported values: '
                   '"OnFailure", "Never"')
    elif policy is not None and restart != "Never":
        out.append(f'spec.template.spec.restartPolicy: Invalid value: "{restart}": only "Never" is supported when '
                   "podFailurePolicy is specified")
    return out


def _pod_failure_policy(policy: dict[str, Any], pod_spec: dict[str, Any], per_index: int | None) -> list[str]:
    out: list[str] = []
    rules = policy.get("rules") or []
    path = "spec.podFailurePolicy.rules"
    if len(rules) > MAX_RULES:
        out.append(f"{path}: Too many: {len(rules)}: must have at most {MAX_RULES} items")
    names = {c.get("name") for c in [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]}
    for i, rule in enumerate(rules):
        at = f"{path}[{i}]"
        action = rule.get("action", "")
        if action == "":
            out.append(f"{at}.action: Required value: valid values: {_q(ACTIONS)}")
        elif action == "FailIndex":
            if per_index is None:
                out.append(f'{at}.action: Invalid value: "FailIndex": requires the backoffLimitPerIndex to be set')
        elif action not in ACTIONS:
            out.append(f'{at}.action: Unsupported value: "{action}": supported values: {_listed(ACTIONS)}')
        codes, conditions = rule.get("onExitCodes"), rule.get("onPodConditions") or []
        if codes is not None:
            out += _exit_codes(codes, f"{at}.onExitCodes", names)
        if conditions:
            if len(conditions) > MAX_CONDITION_PATTERNS:
                out.append(f"{at}.onPodConditions: Too many: {len(conditions)}: must have at most "
                           f"{MAX_CONDITION_PATTERNS} items")
            for j, pattern in enumerate(conditions):
                status = pattern.get("status", "")
                if status == "":
                    out.append(f"{at}.onPodConditions[{j}].status: Required value: valid values: {_q(STATUSES)}")
                elif status not in STATUSES:
                    out.append(f'{at}.onPodConditions[{j}].status: Unsupported value: "{status}": supported values: '
                               f"{_listed(STATUSES)}")
        if codes is not None and conditions:
            out.append(f"{at}: Invalid value: specifying both OnExitCodes and OnPodConditions is not supported")
        if codes is None and not conditions:
            out.append(f"{at}: Invalid value: specifying one of OnExitCodes and OnPodConditions is required")
    return out


def _exit_codes(codes: dict[str, Any], at: str, names: set[Any]) -> list[str]:
    out: list[str] = []
    operator = codes.get("operator", "")
    if operator == "":
        out.append(f"{at}.operator: Required value: valid values: {_q(OPERATORS)}")
    elif operator not in OPERATORS:
        out.append(f'{at}.operator: Unsupported value: "{operator}": supported values: {_listed(OPERATORS)}')
    container = codes.get("containerName")
    if container is not None and container not in names:
        out.append(f'{at}.containerName: Invalid value: "{container}": must be one of the container or '
                   "initContainer names in the pod template")
    values = codes.get("values") or []
    if not values:
        out.append(f"{at}.values: Invalid value: []: at least one value is required")
    elif len(values) > MAX_EXIT_CODES:
        out.append(f"{at}.values: Too many: {len(values)}: must have at most {MAX_EXIT_CODES} items")
    seen: set[int] = set()
    for j, value in enumerate(values):
        if operator == "In" and value == 0:
            out.append(f"{at}.values[{j}]: Invalid value: 0: must not be 0 for the In operator")
        if value in seen:
            out.append(f"{at}.values[{j}]: Duplicate value: {value}")
        seen.add(value)
    if any(a > b for a, b in itertools.pairwise(values)):
        out.append(f"{at}.values: Invalid value: {values}: must be ordered")
    return out


def _q(values: tuple[str, ...]) -> str:
    return "[" + " ".join(f'"{v}"' for v in values) + "]"


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(f'"{v}"' for v in values)


# ------------------------------------------------------------------------------------- Pod Security Standards
BASELINE_CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                                   "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                          "net.ipv4.ip_unprivileged_port_start",
                          "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                          "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                          "net.ipv4.tcp_keepalive_probes"})
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                                "projected", "secret"})
LEVELS = ("privileged", "baseline", "restricted")


def pod_security_problems(pod_spec: dict[str, Any], level: str, annotations: dict[str, str] | None = None) -> list[str]:
    """`<reason> (<detail>)` of every check of `level` (and the levels below it) that `pod_spec` fails."""
    if level == "privileged":
        return []
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    pod_sc = pod_spec.get("securityContext") or {}
    out: list[str] = []

    def fail(reason: str, detail: str) -> None:
        out.append(f"{reason} ({detail})")

    def sc(c: dict[str, Any]) -> dict[str, Any]:
        return c.get("securityContext") or {}

    if any(pod_spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        fail("host namespaces", "hostNetwork/hostPID/hostIPC=true")
    if names := [c["name"] for c in containers if sc(c).get("privileged")]:
        fail("privileged", f"containers {names} must not set securityContext.privileged=true")
    for c in containers:
        added = set((sc(c).get("capabilities") or {}).get("add") or [])
        if extra := sorted(added - BASELINE_CAPABILITIES):
            fail("non-default capabilities", f'container "{c["name"]}" must not include {extra} in '
                 "securityContext.capabilities.add")
    if names := [v["name"] for v in pod_spec.get("volumes") or [] if "hostPath" in v]:
        fail("hostPath volumes", f"volumes {names}")
    if any(p.get("hostPort") for c in containers for p in c.get("ports") or []):
        fail("hostPort", "containers must not set hostPort")
    profiles = [pod_sc.get("appArmorProfile") or {}, *[sc(c).get("appArmorProfile") or {} for c in containers]]
    if any(p.get("type") == "Unconfined" for p in profiles) or any(
            v == "unconfined" for k, v in (annotations or {}).items() if k.startswith("container.apparmor")):
        fail("forbidden AppArmor profile", "Unconfined")
    for options in [pod_sc.get("seLinuxOptions") or {}, *[sc(c).get("seLinuxOptions") or {} for c in containers]]:
        if options.get("user") or options.get("role") or options.get("type") not in (
                None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"):
            fail("seLinuxOptions", "forbidden seLinuxOptions")
    if any(sc(c).get("procMount") not in (None, "Default") for c in containers):
        fail("procMount", "procMount must be Default")
    seccomp = [pod_sc.get("seccompProfile") or {}, *[sc(c).get("seccompProfile") or {} for c in containers]]
    if any(p.get("type") == "Unconfined" for p in seccomp):
        fail("seccompProfile", "seccompProfile.type must not be Unconfined")
    if bad := [s["name"] for s in pod_sc.get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]:
        fail("forbidden sysctls", ", ".join(bad))
    if names := [v["name"] for v in pod_spec.get("volumes") or [] if "gitRepo" in v]:
        fail("restricted volume types", f"volumes {names} use gitRepo")
    if level != "restricted":
        return out
    if names := [v["name"] for v in pod_spec.get("volumes") or [] if not (set(v) - {"name"}) <= RESTRICTED_VOLUMES]:
        fail("restricted volume types", f"volumes {names} have restricted types")
    if names := [c["name"] for c in containers if sc(c).get("allowPrivilegeEscalation") is not False]:
        fail("allowPrivilegeEscalation != false", f"containers {names} must set "
             "securityContext.allowPrivilegeEscalation=false")
    if names := [c["name"] for c in containers if sc(c).get("runAsNonRoot") is False
                 or (sc(c).get("runAsNonRoot") is None and pod_sc.get("runAsNonRoot") is not True)]:
        fail("runAsNonRoot != true", f"containers {names} must set securityContext.runAsNonRoot=true")
    if pod_sc.get("runAsUser") == 0 or any(sc(c).get("runAsUser") == 0 for c in containers):
        fail("runAsUser=0", "must not set runAsUser=0")
    pod_type = (pod_sc.get("seccompProfile") or {}).get("type")
    allowed_seccomp = ("RuntimeDefault", "Localhost")
    if names := [c["name"] for c in containers
                 if ((sc(c).get("seccompProfile") or {}).get("type") or pod_type) not in allowed_seccomp]:
        fail("seccompProfile", f'containers {names} must set securityContext.seccompProfile.type to "RuntimeDefault" '
             'or "Localhost"')
    for c in containers:
        capabilities = sc(c).get("capabilities") or {}
        details = []
        if "ALL" not in (capabilities.get("drop") or []):
            details.append(f'container "{c["name"]}" must set securityContext.capabilities.drop=["ALL"]')
        if extra := sorted(set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}):
            details.append(f'container "{c["name"]}" must not include {extra} in securityContext.capabilities.add')
        if details:
            fail("unrestricted capabilities", "; ".join(details))
    return out
