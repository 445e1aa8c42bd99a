"""Token-level evaluation windows and calibration samples.

Evaluation: the whole evaluation part (first half of the text) is tokenized
the way the reference perplexity is computed (`tokenizer(text)`, so a model
that adds a BOS gets one at the very start, as in the usual Transformers
recipe), then cut into non-overlapping windows from the start.

Calibration: texts of about `calib_seq_len` tokens sliced from the calibration
part (second half) at token boundaries, spread evenly over it; slices of the
original text, so re-tokenizing them gives back about the same tokens.

Torch-side: imports torch at module level.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import DataError
from ..spec import DataSpec
from .text import calibration_text, evaluation_text


def eval_windows(tokenizer: Any, data: DataSpec) -> torch.Tensor:
    """LongTensor [eval_windows, window] of consecutive, non-overlapping windows of the evaluation part."""
    text = evaluation_text(data)
    ids = tokenizer(text, verbose=False)["input_ids"]
    need = data.eval_windows * data.window
    if len(ids) < need:
        raise DataError(
            f"data.eval_windows: the evaluation part of {data.source!r} has {len(ids)} tokens, fewer than "
            f"eval_windows x window = {need}: lower eval_windows or window"
        )
    return torch.tensor(ids[:need], dtype=torch.long).view(data.eval_windows, data.window)


def calibration_samples(tokenizer: Any, data: DataSpec) -> list[str]:
    """`data.calib_samples` texts of about `calib_seq_len` tokens from the calibration part (deterministic)."""
    text = calibration_text(data)
    n, length = data.calib_samples, data.calib_seq_len
    if not text.strip():
        raise DataError(f"data.calib_samples: the calibration part of {data.source!r} is empty: use a longer text")
    spans = _token_spans(tokenizer, text)
    need = n * length
    if len(spans) < need:
        raise DataError(
            f"data.calib_samples: the calibration part of {data.source!r} has {len(spans)} tokens, fewer than "
            f"calib_samples x calib_seq_len = {need}: lower calib_samples or calib_seq_len"
        )
    # Evenly spaced starts; the spacing is at least `length`, so samples never overlap.
    step = (len(spans) - length) / (n - 1) if n > 1 else 0
    samples = []
    for i in range(n):
        start = int(i * step)
        begin, end = spans[start][0], spans[start + length - 1][1]
        samples.append(text[begin:end])
    return samples


def _token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """Character span of each token of `text` (no special tokens)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = _spans_by_decoding(tokenizer, text)
    return [o for o in offsets if o[1] > o[0]]


def _spans_by_decoding(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    # Slow tokenizers have no offsets: find each decoded token in the text, in order.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    spans, pos = [], 0
    for tid in ids:
        piece = tokenizer.decode([tid]).strip()
        at = text.find(piece, pos) if piece else -1
        if at < 0:
            continue
        spans.append((at, at + len(piece)))
        pos = at + len(piece)
    return spans
