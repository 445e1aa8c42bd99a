"""The progress stages a worker reports, declared once.

A worker reports `(stage, fraction, message)` as it goes (`BuildContext.progress`); the run
queue's bar, the CLI's bar and the explore panels turn the stage into how far the run is with
`percent`. Every stage a method or the protocol reports is one of `STAGES` (a unit test reads the
code for the names it passes), so a new backend author picks from this list, and a display never
meets a name it cannot place.

Standard library only: the kernel side (session, ui) and the worker side (measure, methods) both
import it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage: its name as reported, where a typical run is when it starts (0-100), what it is."""

    name: str
    starts_at: int
    help: str


# In the order a run meets them; a run skips those that do not apply (an encoder has no
# perplexity, a data-free method no calibration). The percentages are shares of a typical
# standard-protocol run, for a bar that moves forward, not a promise of time.
STAGES: tuple[Stage, ...] = (
    Stage("reference", 0, "the fp32 reference outputs, computed once per model and data"),
    Stage("build", 5, "the method starts"),
    Stage("load", 5, "loading (or converting) the model"),
    Stage("export", 10, "exporting to ONNX or OpenVINO IR (cached per model)"),
    Stage("capture", 12, "layer sensitivity: capturing the layers' inputs"),
    Stage("calibrate", 15, "running the calibration samples"),
    Stage("quantize", 20, "quantizing"),
    Stage("layers", 20, "layer sensitivity: one layer at a time"),
    Stage("pack", 35, "packing the quantized weights (AutoAWQ)"),
    Stage("compile", 40, "compiling for the runtime"),
    Stage("session", 40, "creating the ONNX Runtime session"),
    Stage("save", 45, "saving the quantized model (on-disk size)"),
    Stage("accuracy", 50, "accuracy against the fp32 reference"),
    Stage("perplexity", 50, "perplexity over the evaluation windows"),
    Stage("embeddings", 50, "sentence embeddings against the reference"),
    Stage("latency", 65, "latency and memory tables"),
    Stage("reload", 90, "reloading what was saved, in a fresh process"),
    Stage("task metrics", 95, "task metrics"),
    Stage("done", 100, "finished"),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def percent(stage: str, fraction: float | None = None) -> int | None:
    """How far a run is, 0-100, at `fraction` (0-1) of `stage`; None for a name not declared
    (a plug-in's own): the display keeps its bar and shows the message."""
    s = _BY_NAME.get(stage)
    if s is None:
        return None
    later = [t.starts_at for t in STAGES if t.starts_at > s.starts_at]
    end = later[0] if later else 100
    return min(100, int(s.starts_at + (fraction or 0.0) * (end - s.starts_at)))
