"""Calibration data for the methods that need it: the `dataset` parameter and the samples.

Samples always come from the calibration part of a text source, never from the evaluation
windows or sentences (`workbench.data.splits`). Torch-free at import.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..data.text import source_error
from ..errors import DataError
from ..params import Check, Param


def dataset_param() -> Param:
    return Param("dataset", "str", "pydoc-topics",
                 help="Calibration text: pydoc-topics, file:PATH or hub:NAME[/CONFIG] (samples from its "
                      "calibration part, never the evaluation windows).")


def dataset_check() -> Check:
    """The `dataset` parameter names a source that exists (checked in the kernel, before any worker)."""
    def check(v: Mapping[str, Any]) -> str | None:
        return source_error(v["dataset"])

    return Check(("dataset",), check)


def calibration_texts(ctx: Any, source: str, num_samples: int, param: str, seq_len: int | None = None) -> list[str]:
    """`num_samples` calibration texts from the calibration part of `source` (never the evaluation part)."""
    ctx.progress("calibrate", None, f"{num_samples} calibration samples from {source}")
    try:
        return ctx.calibration_texts(source=source, calib_samples=num_samples,
                                     calib_seq_len=seq_len or ctx.spec.data.calib_seq_len)
    except DataError as e:
        raise DataError(f"{param}: {e}") from None
