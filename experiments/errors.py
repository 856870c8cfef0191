"""Errors the experiment domain raises; the API maps ``kind`` to an HTTP status."""

from __future__ import annotations

from typing import ClassVar, Literal


class ExperimentError(Exception):
    """Base of experiment-domain errors."""

    kind: ClassVar[Literal["not_found", "conflict", "invalid"]] = "invalid"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class ExperimentNotFound(ExperimentError):
    """No experiment with that key."""

    kind = "not_found"


class ExperimentConflict(ExperimentError):
    """The change conflicts with the stored state (exists already, wrong status, layer full)."""

    kind = "conflict"


class InvalidDefinition(ExperimentError):
    """A definition that decodes but breaks a rule needing outside knowledge (e.g. denylist)."""

    kind = "invalid"
