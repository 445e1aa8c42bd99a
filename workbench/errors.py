"""Errors the workbench raises before or around a run.

Each carries the CLI exit code it maps to, so the CLI, the session and the UI
agree on what kind of failure it is. Failures *during* a run are not raised
into the caller: they become a stored `RunResult` (see result.py).
"""
from __future__ import annotations

from dataclasses import dataclass


class WorkbenchError(Exception):
    """Base class. `exit_code` is what the CLI returns for it."""

    exit_code = 2


@dataclass(frozen=True)
class ParamError:
    """One invalid parameter: its name, what is wrong, and what is allowed."""

    param: str
    message: str

    def __str__(self) -> str:
        return f"{self.param}: {self.message}"


class InvalidParams(WorkbenchError):
    """One or more parameters are invalid; all of them are listed at once."""

    exit_code = 2

    def __init__(self, errors: list[ParamError], context: str = ""):
        self.errors = list(errors)
        head = f"invalid parameters{f' for {context}' if context else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {e}" for e in self.errors))


class InvalidSpec(WorkbenchError):
    """A run specification field (model, data, bench, device) is invalid."""

    exit_code = 2


class UnknownMethod(InvalidSpec):
    """No method of that name is registered."""


class ModelNotFound(WorkbenchError):
    """The model is neither in the catalog, nor a local directory, nor reachable on the hub."""

    exit_code = 2


class DataError(WorkbenchError):
    """A data source cannot be read or is too short for what was asked."""

    exit_code = 2


class MethodUnavailable(WorkbenchError):
    """The method exists but cannot run here (missing library, environment or device)."""

    exit_code = 4


class EnvironmentUnavailable(MethodUnavailable):
    """The backend environment the method needs has not been created."""


class RunFailed(WorkbenchError):
    """The run was attempted and failed (crashed, timed out, out of memory)."""

    exit_code = 3
