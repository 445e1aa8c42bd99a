"""Executors: where a run happens (inline for tests, a subprocess by default)."""
from __future__ import annotations

from .base import Executor, Progress  # noqa: F401


def get_executor(name: str = "subprocess") -> "Executor":
    """An executor by name: `subprocess` (default) or `inline`."""
    if name == "subprocess":
        from .subprocess import SubprocessExecutor

        return SubprocessExecutor()
    if name == "inline":
        from .inline import InlineExecutor

        return InlineExecutor()
    from ..errors import InvalidSpec

    raise InvalidSpec(f"executor: unknown executor {name!r}; allowed: subprocess, inline")
