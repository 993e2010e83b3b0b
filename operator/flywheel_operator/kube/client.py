"""A small async client for the few Kubernetes REST calls the backend makes (aiohttp, kopf's own transport).

kopf authenticates its own requests; this client reuses the same `kopf.ConnectionInfo`, so the operator talks to
the API server with one identity and one set of credentials. Every failure becomes an `ApiError` whose
`transient` flag tells the handlers whether to retry (TemporaryError) or give up.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

MERGE_PATCH = "application/merge-patch+json"

RESOURCES: Mapping[str, str] = {
    "jobs": "/apis/batch/v1",
    "pods": "/api/v1",
    "configmaps": "/api/v1",
    "services": "/api/v1",
    "inferenceservices": "/apis/serving.kserve.io/v1beta1",
    "flywheelgenerations": "/apis/characterflywheel.io/v1alpha1",
}
"""Plural -> API prefix of every resource the backend reads or writes."""


class ApiError(Exception):
    """A failed API call: HTTP status (0 for timeouts and transport errors), reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @property
    def transient(self) -> bool:
        """Worth retrying: timeouts, conflicts, throttling and server errors."""
        return self.status in (0, 409, 429) or self.status >= 500


def resource_path(plural: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    path = f"{RESOURCES[plural]}/namespaces/{quote(namespace)}/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Label match on the client side too: cheap, and correct against servers that ignore labelSelector."""
    have = obj.get("metadata", {}).get("labels") or {}
    return all(have.get(key) == value for key, value in labels.items())


@dataclass
class KubeClient:
    """JSON over HTTP to one API server; `requests` counts calls (the benchmark reports it)."""

    server: str
    token: str | None = None
    ssl_context: ssl.SSLContext | bool = True
    timeout: float = 30.0
    user_agent: str = "characterflywheel-operator"
    requests: int = 0
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def from_connection(cls, info: kopf.ConnectionInfo, *, timeout: float = 30.0) -> KubeClient:
        """The same server and credentials kopf logged in with."""
        context: ssl.SSLContext | bool = True
        if info.insecure:
            context = False
        elif info.ca_path or info.ca_data or info.certificate_path or info.certificate_data:
            context = ssl.create_default_context(
                cafile=info.ca_path, cadata=info.ca_data.decode() if info.ca_data else None
            )
            if info.certificate_path and info.private_key_path:
                context.load_cert_chain(info.certificate_path, info.private_key_path)
        return cls(server=info.server.rstrip("/"), token=info.token, ssl_context=context, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str) -> dict[str, Any]:
        return await self._call("GET", path)

    async def list(self, path: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        body = await self._call("GET", path, params={"labelSelector": selector(labels)})
        return [item for item in body.get("items") or [] if matches(item, labels)]

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", path, body=body)

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if self._session is None:
            headers = {"User-Agent": self.user_agent}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=64)
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        self.requests += 1
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._session.request(
                method,
                self.server + path,
                data=data,
                params=params,
                headers={"Content-Type": content_type} if data is not None else None,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                payload = await response.json(content_type=None) if response.content_length != 0 else {}
                if response.status >= 400:
                    payload = payload if isinstance(payload, dict) else {}
                    raise ApiError(response.status, str(payload.get("reason") or response.reason),
                                   str(payload.get("message") or "")[:300])
                return payload if isinstance(payload, dict) else {}
        except TimeoutError as exc:
            raise ApiError(0, "Timeout", f"{method} {path} took longer than {self.timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise ApiError(0, type(exc).__name__, f"{method} {path}: {exc}") from exc

