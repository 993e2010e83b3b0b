"""The one pydantic base of the API: camelCase on the wire, snake_case in Python, unknown keys rejected."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Every API object: `extra="forbid"` so a misspelt key is an error that names it, not a silent default."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON a Kubernetes client sends: camelCase keys, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
