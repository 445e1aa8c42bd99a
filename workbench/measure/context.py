"""What the protocol and a method's `build()` work with, and how a worker reports to its executor.

`BuildContext` carries the spec, the model's description, a scratch folder, the tokenizer and the
two reporting channels: progress (`emit`: a bar and a stage name) and measurements
(`emit_partial`: each measurement as soon as it exists). Both are one line on stderr starting with
`PROGRESS_PREFIX`, which the executor reads (`workbench.exec.subprocess._read`):

    @@wb {"stage": "perplexity", "fraction": 0.5, "message": ""}
    @@wb {"stage": "accuracy", "partial": {"metrics": {"perplexity": 23.4, ...}}, "pid": 4242}

A partial holds only what the stage measured (`RunResult.merge_partial` adds it to what came
before), so the coordinator can store a running run, show it and keep it if the worker dies.

Torch-free at import (the kernel-side executor imports `PROGRESS_PREFIX` through `workbench.worker`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..spec import RunSpec

PROGRESS_PREFIX = "@@wb "

# partial(stage, measurements): where a stage's measurements go (stderr in a worker process).
PartialReport = Callable[[str, Mapping[str, Any]], None]


def emit(stage: str, fraction: float | None = None, message: str = "") -> None:
    """Report progress to the executor (one line on stderr)."""
    line = json.dumps({"stage": stage, "fraction": fraction, "message": message})
    sys.stderr.write(PROGRESS_PREFIX + line + "\n")
    sys.stderr.flush()


def emit_partial(stage: str, partial: Mapping[str, Any]) -> None:
    """Report the measurements a stage just made to the executor (one line on stderr).

    The worker's pid rides along: a coordinator (or a test) can tell which process sent it."""
    from ..result import _json_default

    line = json.dumps({"stage": stage, "partial": dict(partial), "pid": os.getpid()}, default=_json_default)
    sys.stderr.write(PROGRESS_PREFIX + line + "\n")
    sys.stderr.flush()


class BuildContext:
    """What a method's `build()` gets: the spec, the model, data and progress reporting."""

    def __init__(self, spec: RunSpec, model_info: Any, workdir: Path, report: Callable[..., None] = emit):
        self.spec = spec
        self.model_info = model_info
        self.device = torch_device(spec.device)
        self.workdir = workdir
        self._report = report
        self._tokenizer: Any = None
        self.warnings: list[str] = []
        self.load_s: float = 0.0

    def model_dir(self) -> Path:
        from ..models import loader

        return loader.resolve(self.spec.model, progress=lambda f, m="": self.progress("load", f, m))

    def load_model(self, dtype: str = "float32", **kwargs: Any) -> Any:
        """The model from its local directory, in eval mode on the run's device."""
        from ..models import loader

        t0 = time.perf_counter()
        self.progress("load", None, f"loading {self.spec.model.id} ({dtype})")
        model = loader.load_model(self.spec.model, kind=self.model_info.kind, dtype=dtype, device=self.device,
                                  progress=lambda f, m="": self.progress("load", f, m), **kwargs)
        self.load_s += time.perf_counter() - t0
        return model

    def tokenizer(self) -> Any:
        from ..models import loader

        if self._tokenizer is None:
            self._tokenizer = loader.load_tokenizer(self.spec.model)
        return self._tokenizer

    def calibration_texts(self, **data_overrides: Any) -> list[str]:
        """Calibration samples of the run's data; `data_overrides` replace DataSpec fields
        (a method's own `dataset` / `num_samples` parameters: source=..., calib_samples=...)."""
        from dataclasses import replace

        from ..data import splits

        return splits.calibration_samples(self.tokenizer(), replace(self.spec.data, **data_overrides))

    def progress(self, stage: str, fraction: float | None = None, message: str = "") -> None:
        """Report how far the run is: `stage` one of `workbench.stages.NAMES` (the displays place
        it), `fraction` of that stage done (0-1) or None, `message` what it is doing."""
        self._report(stage, fraction, message)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def torch_device(device: str) -> str:
    """The torch device string of a spec's device ("cuda" is the first GPU)."""
    return "cuda:0" if device == "cuda" else device
