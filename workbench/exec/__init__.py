"""Executors: where a run happens (inline for tests, a subprocess by default, Dask workers)."""
from __future__ import annotations

from .base import Executor, Partial, PartialUpdate, Progress  # noqa: F401


def get_executor(name: str = "subprocess", scheduler: str | None = None, warm: bool = False) -> "Executor":
    """An executor by name: `subprocess` (default), `inline`, or `dask` (on the Dask scheduler at
    `scheduler`, else `$WORKBENCH_DASK_SCHEDULER`, else a LocalCluster started here).

    `warm`: the subprocess executor forks runs from a prepared process per backend environment
    (`workbench.exec.warm`). The others have no start to warm: inline runs in this process, and
    Dask workers start each worker command cold."""
    if name == "subprocess":
        from .subprocess import SubprocessExecutor

        return SubprocessExecutor(warm=warm)
    if name == "inline":
        from .inline import InlineExecutor

        return InlineExecutor()
    if name == "dask":
        import os

        from .dask import DaskExecutor

        return DaskExecutor(scheduler or os.environ.get("WORKBENCH_DASK_SCHEDULER") or None)
    from ..errors import InvalidSpec

    raise InvalidSpec(f"executor: unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")


EXECUTORS = ("subprocess", "inline", "dask")
