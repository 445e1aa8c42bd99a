"""Cache of the baseline's outputs per (model, data).

KL divergence, top-1 agreement and embedding cosine compare a method with the
unquantized model on the same tokens; the baseline's outputs are computed once
and kept in `$WORKBENCH_HOME/reference/<data_key>.pt`:
  causal LMs: {"kind": "causal-lm", "topk_idx": int32 [N, k], "topk_logp": float32 [N, k], ...}
  encoders:   {"kind": "encoder", "embeddings": float32 [n, hidden], ...}
Writes are atomic (temporary file + os.replace) and `reference_lock` keeps two
workers from computing the same reference at once.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .. import paths
from ..errors import DataError
from ..spec import DataSpec, ModelSpec, data_key

# The perplexity of the fp32 PyTorch model is kept too: exports are checked against it.
KINDS = {
    "causal-lm": ("topk_idx", "topk_logp", "perplexity"),
    "encoder": ("embeddings",),
    # Pipelines (measure.pipelines): the reference images, or the greedy tokens and their top-k.
    "text-to-image": ("images",),
    "speech-to-text": ("tokens", "topk_idx", "topk_logp"),
    "image-text-to-text": ("tokens", "topk_idx", "topk_logp"),
}


def reference_path(model: ModelSpec, data: DataSpec) -> Path:
    """Where the reference outputs of `model` on `data` are kept."""
    return paths.subdir("reference") / f"{data_key(model, data)}.pt"


def load_reference(model: ModelSpec, data: DataSpec) -> dict[str, Any] | None:
    """The cached reference, or None when there is none or it cannot be read
    (a truncated or foreign file is recomputed rather than trusted)."""
    path = reference_path(model, data)
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable file means "no usable reference"
        return None
    if not isinstance(obj, dict) or any(k not in obj for k in KINDS.get(obj.get("kind"), ("?",))):
        return None
    return obj


def save_reference(model: ModelSpec, data: DataSpec, obj: dict[str, Any]) -> Path:
    """Write the reference atomically: readers see the old file or the new one, never half of one."""
    kind = obj.get("kind")
    if kind not in KINDS:
        raise DataError(f"reference kind: got {kind!r}; allowed: {', '.join(KINDS)}")
    missing = [k for k in KINDS[kind] if k not in obj]
    if missing:
        raise DataError(f"reference: a {kind} reference needs {', '.join(missing)}")
    path = reference_path(model, data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def reference_lock(model: ModelSpec, data: DataSpec) -> Iterator[None]:
    """Exclusive lock (flock on a `.lock` file beside the reference) for computing it.

    Blocks until the lock is free; the lock goes with the process, so a worker
    that dies does not leave it held.
    """
    with paths.file_lock(reference_path(model, data).with_suffix(".lock")):
        yield


def cached_reference(model: ModelSpec, data: DataSpec, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The reference for (model, data): read from the cache, else `compute()`d and saved, under
    the lock, so that parallel workers compute it once."""
    with reference_lock(model, data):
        ref = load_reference(model, data)
        if ref is None:
            ref = compute()
            save_reference(model, data, ref)
        return ref
