"""The executor contract: run one validated spec somewhere and return its result.

Executors never raise for a failed run: a crash, a timeout or running out of
memory comes back as a `RunResult` with that status.
"""
from __future__ import annotations

from typing import Callable, Protocol

from ..result import RunResult
from ..spec import RunSpec

# progress(stage, fraction or None, message)
Progress = Callable[[str, "float | None", str], None]


class Executor(Protocol):
    def run(self, spec: RunSpec, target: str, env: str, progress: Progress | None = None) -> RunResult:
        """Run `spec` with the method at `target` ("module:Class") in environment family `env`."""
        ...
