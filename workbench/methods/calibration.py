"""Calibration data for the methods that need it: the `dataset` parameter and the samples.

Samples always come from the calibration part of a text source, never from the evaluation
windows or sentences (`workbench.data.splits`). Torch-free at import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ..data.text import source_error
from ..errors import DataError
from ..params import Check, Param

if TYPE_CHECKING:  # pragma: no cover
    from ..measure.context import BuildContext


def dataset_param() -> Param:
    return Param("dataset", "str", "pydoc-topics",
                 help="Calibration text: pydoc-topics, file:PATH or hub:NAME[/CONFIG] (samples from its "
                      "calibration part, never the evaluation windows).")


def dataset_check() -> Check:
    """The `dataset` parameter names a source that exists and whose calibration part can hold the
    samples asked for (checked in the kernel, before any worker)."""
    def check(v: Mapping[str, Any]) -> str | None:
        if v.get("dataset") is None:
            return None  # whether one is needed is the method's own check
        return source_error(v["dataset"]) or calibration_size_error(v["dataset"], v.get("num_samples") or 1,
                                                                    v.get("seq_len"))

    return Check(("dataset",), check)


def calibration_size_error(source: str, num_samples: int, seq_len: int | None) -> str | None:
    """Why the calibration part of a local text file cannot give `num_samples` samples of `seq_len`
    tokens (None when it may). Token counts need the model's tokenizer (worker side); here the bound
    is one character per token, which no tokenizer beats: a text that fails it surely fails later.
    Only `file:` sources are read (pydoc-topics holds about 230K characters of calibration text;
    hub sources are checked when loaded)."""
    if not source.startswith("file:"):
        return None
    from ..data.text import calibration_text
    from ..spec import DataSpec

    try:
        chars = len(calibration_text(DataSpec(source=source)))
    except DataError as e:
        return str(e)
    need = num_samples * (seq_len or 1)
    if chars >= need:
        return None
    shape = f"{num_samples} samples of {seq_len} tokens" if seq_len else f"{num_samples} samples"
    return (f"got {source!r}: its calibration part (the second half of the text) has {chars} characters, too few "
            f"for {shape} (a token takes at least one character); allowed: a longer text, or fewer or shorter "
            "samples")


def calibration_params(default_samples: int = 64, default_len: int = 512, **visible: Any) -> tuple[Param, ...]:
    """`dataset`, `num_samples` and `seq_len`: the calibration set of the calibration-based methods
    (`visible` becomes the sample parameters' visible_when)."""
    when = dict(visible) or None
    return (
        dataset_param(),
        Param("num_samples", "int", default_samples, minimum=1, maximum=4096, visible_when=when,
              help="Calibration samples (from the calibration part of the text, never the evaluation windows)."),
        Param("seq_len", "int", default_len, minimum=16, maximum=8192, visible_when=when,
              help="Tokens per calibration sample."),
    )


def dataset_required(what: str = "a calibration-based method") -> str:
    """The message for an empty `dataset` where calibration needs one."""
    return f"dataset: {what} calibrates on text and needs a dataset; allowed: pydoc-topics, file:PATH, hub:NAME[/CONFIG]"


def calibration_token_rows(ctx: BuildContext, p: Mapping[str, Any]) -> list[list[int]]:
    """The token ids of `p["num_samples"]` calibration samples of `p["dataset"]`, each cut to `p["seq_len"]`."""
    texts = calibration_texts(ctx, p["dataset"], p["num_samples"], "num_samples", seq_len=p["seq_len"])
    tok = ctx.tokenizer()
    return [tok(t, add_special_tokens=False)["input_ids"][: p["seq_len"]] for t in texts]


def calibration_texts(ctx: BuildContext, source: str, num_samples: int, param: str, seq_len: int | None = None) -> list[str]:
    """`num_samples` calibration texts from the calibration part of `source` (never the evaluation part)."""
    ctx.progress("calibrate", None, f"{num_samples} calibration samples from {source}")
    try:
        return ctx.calibration_texts(source=source, calib_samples=num_samples,
                                     calib_seq_len=seq_len or ctx.spec.data.calib_seq_len)
    except DataError as e:
        raise DataError(f"{param}: {e}") from None
