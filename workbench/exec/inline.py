"""Run the worker function in this process: for tests and debugging.

It needs torch (and the backend) importable here and gives no isolation: a
segfault takes the caller down, and peak memory includes the caller's. Use the
subprocess executor for anything you want to compare.
"""
from __future__ import annotations

import os

from ..result import RunResult
from ..spec import RunSpec
from .base import Partial, PartialCollector, Progress


class InlineExecutor:
    def run(self, spec: RunSpec, target: str, env: str, progress: Progress | None = None,
            partial: Partial | None = None) -> RunResult:
        from .. import worker

        report = (lambda s, f=None, m="": progress(s, f, m)) if progress else (lambda *a, **k: None)
        collector = PartialCollector(spec, partial)
        result = worker.run_spec(spec, target, report=report,
                                 partial=lambda stage, measured: collector.add(stage, measured, os.getpid()))
        return collector.keep(result)
