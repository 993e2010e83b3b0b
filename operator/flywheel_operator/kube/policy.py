"""What stage pods may run: the operator's allowlist of trainer images and ServiceAccounts.

A FlywheelGeneration names the image and the ServiceAccount of its stage Jobs, and the operator creates those
Jobs with its own rights: without a limit, anyone allowed to create a generation could run any image under any
ServiceAccount of the namespace. `flywheel operator --allowed-image/--allowed-service-account` (chart values
`operator.allowedImages`/`allowedServiceAccounts`) narrow that; a spec outside them fails with the field and the
fix in its status, and nothing is started. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from flywheel_operator.api import FlywheelGeneration

DEFAULT_SERVICE_ACCOUNT = "default"
"""What a pod runs as when `spec.resources.serviceAccountName` is unset."""


@dataclass(frozen=True)
class StagePolicy:
    images: tuple[str, ...] = ()
    """Shell-style patterns (`ghcr.io/acme/trainer:*`) of allowed `spec.resources.image`; empty allows any."""
    service_accounts: tuple[str, ...] = ()
    """Patterns of allowed `spec.resources.serviceAccountName` (unset counts as `default`); empty allows any."""

    def problems(self, generation: FlywheelGeneration) -> list[str]:
        """Why the generation's stage pods may not run here, one message per field; empty when they may."""
        resources = generation.spec.resources
        found = []
        if self.images and not any(fnmatchcase(resources.image, p) for p in self.images):
            found.append(
                f"spec.resources.image: {resources.image!r} is not allowed by this operator (--allowed-image "
                f"{' '.join(self.images)}); use an allowed trainer image, or ask the cluster admin to allow it"
            )
        account = resources.service_account_name or DEFAULT_SERVICE_ACCOUNT
        if self.service_accounts and not any(fnmatchcase(account, p) for p in self.service_accounts):
            found.append(
                f"spec.resources.serviceAccountName: {account!r} is not allowed by this operator "
                f"(--allowed-service-account {' '.join(self.service_accounts)}); use an allowed ServiceAccount, or "
                "ask the cluster admin to allow it"
            )
        serving = generation.spec.canary.serving.service_account_name
        if serving and self.service_accounts and not any(fnmatchcase(serving, p) for p in self.service_accounts):
            found.append(
                f"spec.canary.serving.serviceAccountName: {serving!r} is not allowed by this operator "
                f"(--allowed-service-account {' '.join(self.service_accounts)}); use an allowed ServiceAccount, or "
                "ask the cluster admin to allow it"
            )
        return found
