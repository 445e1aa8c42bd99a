"""The few array operations the quantization math needs, for numpy arrays and torch tensors alike.

The teaching math (`teach.quant`, `teach.observers`) runs in the notebook kernel on numpy, where
torch must not be imported, and inside workers on torch tensors (the `rtn` method's packed
layers). One implementation serves both: each function here looks at the type of its argument
and calls the matching library, without importing torch unless a tensor is passed in.
"""
from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # np.ndarray or torch.Tensor: the same type comes out as went in


def is_torch(x: Any) -> bool:
    """True for a torch tensor (checked by type name: no torch import for numpy input)."""
    return type(x).__module__.startswith("torch")


def _torch() -> Any:
    import torch

    return torch


def as_float32(x: Array) -> Array:
    return x.detach().float() if is_torch(x) else np.asarray(x, dtype=np.float32)


def as_float64(x: Array) -> Array:
    return x.detach().double() if is_torch(x) else np.asarray(x, dtype=np.float64)


def amin(x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
    if is_torch(x):
        return x.amin() if axis is None else x.amin(dim=axis, keepdim=keepdims)
    return np.amin(x, axis=axis, keepdims=keepdims)


def amax(x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
    if is_torch(x):
        return x.amax() if axis is None else x.amax(dim=axis, keepdim=keepdims)
    return np.amax(x, axis=axis, keepdims=keepdims)


def clip(x: Array, lo: float | None = None, hi: float | None = None) -> Array:
    return x.clamp(min=lo, max=hi) if is_torch(x) else np.clip(x, lo, hi)


def round_half_even(x: Array) -> Array:
    return _torch().round(x) if is_torch(x) else np.round(x)


def where(cond: Array, a: Array, b: Array) -> Array:
    return _torch().where(cond, a, b) if is_torch(cond) else np.where(cond, a, b)


def ones_like(x: Array) -> Array:
    return _torch().ones_like(x) if is_torch(x) else np.ones_like(x)


def zeros(shape: tuple[int, ...], like: Array) -> Array:
    """float32 zeros of `shape` on the library (and device) of `like`."""
    if is_torch(like):
        torch = _torch()
        return torch.zeros(shape, dtype=torch.float32, device=like.device)
    return np.zeros(shape, dtype=np.float32)


def repeat_last(x: Array, times: int) -> Array:
    """Each entry of the last dimension repeated `times` times (groups to columns)."""
    return x.repeat_interleave(times, dim=-1) if is_torch(x) else np.repeat(x, times, axis=-1)


def ndim(x: Array) -> int:
    return x.dim() if is_torch(x) else np.ndim(x)


def to_codes(x: Array, signed: bool) -> Array:
    """Integer codes as int8 (signed) or uint8."""
    if is_torch(x):
        torch = _torch()
        return x.to(torch.int8 if signed else torch.uint8)
    return x.astype(np.int8 if signed else np.uint8)


def dtype_name(dtype: Any) -> str:
    """'float16', 'bfloat16', 'float32'... for a torch dtype, numpy dtype or name."""
    if dtype is None:
        return "float32"
    return str(dtype).removeprefix("torch.")


def round_up_to_dtype(x: Array, dtype: Any) -> Array:
    """`x` (float32) stored in the narrower float `dtype`, rounded *up* where storing rounded down.

    Returns the stored values (in that dtype). Used for scales: a scale rounded down would
    shrink the grid below the data it must cover.
    """
    if is_torch(x):
        torch = _torch()
        tdtype = getattr(torch, dtype_name(dtype))
        stored = x.to(tdtype)
        up = torch.nextafter(stored, torch.tensor(float("inf"), dtype=tdtype, device=x.device))
        return torch.where(stored.float() < x, up, stored)
    ndtype = np.dtype(dtype_name(dtype))
    stored = np.asarray(x).astype(ndtype)
    up = np.nextafter(stored, np.array(np.inf, dtype=ndtype))
    return np.where(stored.astype(np.float32) < x, up, stored)


def all_finite(x: Array) -> bool:
    return bool(_torch().isfinite(x).all()) if is_torch(x) else bool(np.isfinite(x).all())


def cast(x: Array, dtype: Any) -> Array:
    """`x` in `dtype` (a dtype of x's own library)."""
    return x.to(dtype) if is_torch(x) else np.asarray(x).astype(dtype)


def numel(x: Array) -> int:
    return x.numel() if is_torch(x) else int(np.size(x))


def maximum(a: Array, b: Array) -> Array:
    return _torch().maximum(a, b) if is_torch(a) else np.maximum(a, b)
