"""The executor contract: run one validated spec somewhere and return its result.

Executors never raise for a failed run: a crash, a timeout or running out of
memory comes back as a `RunResult` with that status.

Measurements stream: the worker reports each protocol stage's measurements as it makes them
(`workbench.measure.context.emit_partial`). An executor hands each to its `partial` callback as a
`PartialUpdate` (the stage, what it measured, everything known so far) and, when the run fails
without a result of its own (killed, timed out, cancelled, a lost Dask worker), keeps those
measurements in the failure it returns (`PartialCollector.keep`). Torch-free.
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from ..result import RunResult, RunStatus
from ..spec import RunSpec

# progress(stage, fraction or None, message)
Progress = Callable[[str, "float | None", str], None]


@dataclass(frozen=True)
class PartialUpdate:
    """One protocol stage's measurements, as the worker reported them, and the run so far."""

    stage: str
    # What the stage measured: metrics, tables, layers_quantized, layers_eligible, kernel, notes
    # (the fields of `RunResult.merge_partial`); empty for the "started" update a session sends.
    partial: Mapping[str, Any]
    # Every measurement reported so far, merged, with status `running` (a copy: keep it if you like).
    result: RunResult
    # The worker process that reported it, when known (another machine's under Dask).
    pid: int | None = None


# partial(update): called in the order the worker reported, from the executor's reader thread.
Partial = Callable[[PartialUpdate], None]


class Executor(Protocol):
    def run(self, spec: RunSpec, target: str, env: str, progress: Progress | None = None,
            partial: Partial | None = None) -> RunResult:
        """Run `spec` with the method at `target` ("module:Class") in environment family `env`;
        `partial` gets each stage's measurements as the worker reports them."""
        ...


class PartialCollector:
    """What an executor knows of a run from its partial reports: the run so far (status `running`),
    passed to `on_partial` with each report, and kept in a failure that has no measurements of its own."""

    def __init__(self, spec: RunSpec, on_partial: Partial | None = None):
        self.result = RunResult(key=spec.key, status=RunStatus.RUNNING, spec=spec.to_dict(), started_at=time.time())
        self.stages: list[str] = []
        self.pid: int | None = None
        self._on_partial = on_partial
        self._lock = threading.Lock()

    def add(self, stage: str, partial: Mapping[str, Any], pid: int | None = None) -> None:
        """Merge one report and pass it on (a failing callback never stops the run)."""
        with self._lock:
            self.result.merge_partial(partial)
            self.stages.append(stage)
            self.pid = pid if pid is not None else self.pid
            so_far = copy.deepcopy(self.result)
        if self._on_partial is not None:
            try:
                self._on_partial(PartialUpdate(stage, dict(partial), so_far, pid))
            except Exception:  # noqa: BLE001 - a display that fails must not cost the run
                pass

    def add_event(self, event: Mapping[str, Any]) -> bool:
        """Take a worker's progress-line event if it is a partial report (True), else leave it (False)."""
        partial = event.get("partial")
        if not isinstance(partial, Mapping):
            return False
        pid = event.get("pid")
        self.add(str(event.get("stage", "")), partial, pid if isinstance(pid, int) else None)
        return True

    def keep(self, result: RunResult) -> RunResult:
        """`result` with the measurements reported before it ended (see `keep_partial`)."""
        with self._lock:
            return keep_partial(result, self.result)


def keep_partial(result: RunResult, so_far: RunResult | None) -> RunResult:
    """A failed run keeps what its stages measured: metrics, tables, layer counts, kernel and notes
    from `so_far` that `result` lacks are put into it (its own values win). A succeeded result is
    returned as it is: the worker's final result is the whole truth."""
    if so_far is None or result.status.succeeded:
        return result
    result.metrics = {**so_far.metrics, **result.metrics}
    result.tables = {**so_far.tables, **result.tables}
    for name in ("layers_quantized", "layers_eligible", "kernel"):
        if getattr(result, name) is None:
            setattr(result, name, getattr(so_far, name))
    result.notes = [n for n in so_far.notes if n not in result.notes] + result.notes
    return result


def accepts_partial(executor: Any) -> bool:
    """Whether `executor.run` takes the `partial` callback (executors written before streaming do not)."""
    import inspect

    try:
        params = inspect.signature(executor.run).parameters
    except (TypeError, ValueError):
        return False
    return "partial" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
