"""Round-to-nearest quantization, written the way the textbooks write it.

    x_q   = clip(round(x / S + Z), qmin, qmax)
    x_hat = S * (x_q - Z)

This module is the workbench's reference quantizer: the notebooks teach with it
and other backends are checked against it. The functions take numpy arrays (the notebook
kernel, which never imports torch) or torch tensors (workers) and return the same kind
(`teach.arrays`).

Conventions (shared with GPTQ, AWQ and NNCF):

* **Symmetric** quantization uses the *restricted* signed range
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (int8: [-127, 127], int4: [-7, 7]) with
  ``Z = 0`` and ``S = absmax / qmax``. Dropping the lowest code (-128, -8)
  keeps the grid symmetric around 0, so ``-x`` quantizes to ``-x_q``. It costs
  one level: 2-bit symmetric has only the three levels {-1, 0, 1}.
* **Affine** (asymmetric) quantization uses ``[0, 2^b - 1]`` with
  ``S = (max - min) / (qmax - qmin)`` and an integer zero point
  ``Z = round(qmin - min / S)``. The range always includes 0
  (``min <= 0 <= max``), so 0 is exactly representable: padding and ReLU zeros
  survive quantization unchanged.
* **Granularity** for a Linear weight ``W [out, in]``:
  ``"tensor"``: one scale (a 0-d tensor);
  ``"channel"``: one scale per output row (shape ``[out, 1]``);
  ``"group"``: one scale per ``group_size`` consecutive input columns of each
  output row (shape ``[out, in // group_size]``).
  The shape of the scale says the granularity: the functions below expand a
  last dimension of ``in // group_size`` over the groups and broadcast the rest.
* A group whose values are all 0 gets ``S = 1`` (any positive scale would do)
  instead of a division by zero.

`teach.qlinear.QuantLinear` is the layer the `rtn` method puts into models: packed codes
plus scales as buffers, dequantized on the fly in `forward`, built with these functions.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from . import arrays as A
from .arrays import Array

Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES = ("tensor", "channel", "group")


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of `bits`-bit codes.

    Symmetric: restricted signed range ``(-(2^(b-1) - 1), 2^(b-1) - 1)``;
    affine: ``(0, 2^b - 1)``.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits: got {bits!r}; allowed: an integer in [2, 8]")
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def _check_granularity(x: Array, granularity: str, group_size: int | None) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: got {granularity!r}; allowed: one of {', '.join(GRANULARITIES)}")
    if granularity == "group":
        if not group_size or group_size < 1:
            raise ValueError(f"group_size: got {group_size!r}; allowed: a positive integer for granularity 'group'")
        if A.ndim(x) == 0 or x.shape[-1] % group_size:
            last = x.shape[-1] if A.ndim(x) else "a scalar"
            raise ValueError(f"group_size: {group_size} does not divide the last dimension ({last}) of the tensor")


def _reduce(x: Array, granularity: str, group_size: int | None, op: str) -> Array:
    """min/max/absmax of `x` per quantization block, shaped like the scale."""
    fn = {"min": A.amin, "max": A.amax}[op]
    if granularity == "tensor":
        return fn(x)
    if granularity == "channel":
        if A.ndim(x) <= 1:
            return x + 0  # a copy, either library
        return fn(x, axis=tuple(range(1, A.ndim(x))), keepdims=True)
    assert group_size
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    return fn(grouped, axis=-1)


def compute_qparams(
    x: Array,
    bits: int,
    symmetric: bool,
    granularity: Granularity = "channel",
    group_size: int | None = None,
    scale_dtype: Any = None,
) -> tuple[Array, Array]:
    """Scale and zero point of round-to-nearest quantization of `x`.

    Returns ``(scale, zero_point)`` shaped by the granularity (see the module
    docstring): the scale in `scale_dtype`, the zero point as float32 integers
    (all 0 for symmetric).

    A `scale_dtype` (torch or numpy dtype, or its name; None is float32) narrower than
    float32 (float16, as stored by group formats)
    rounds the scale *up* to the next representable value and derives the zero
    point from that rounded scale, so the grid still covers the data and the
    codes agree with the scale that is actually stored.
    """
    _check_granularity(x, granularity, group_size)
    xf = A.as_float32(x)
    if symmetric:
        hi = _reduce(abs(xf), granularity, group_size, "max")
        lo = -hi
    else:
        lo = _reduce(xf, granularity, group_size, "min")
        hi = _reduce(xf, granularity, group_size, "max")
    return qparams_from_range(lo, hi, bits, symmetric, scale_dtype)


def qparams_from_range(lo: Array | float, hi: Array | float, bits: int, symmetric: bool,
                       scale_dtype: Any = None) -> tuple[Array, Array]:
    """Scale and zero point that map the range ``[lo, hi]`` onto the `bits`-bit grid.

    The range comes from the data (`compute_qparams`) or from a calibration observer
    (`teach.observers`), which may clip it. Symmetric: ``S = max(|lo|, |hi|) / qmax``,
    ``Z = 0``. Affine: the range is stretched to include 0, ``S = (hi - lo) / (qmax - qmin)``,
    ``Z = round(qmin - lo / S)``. Plain floats come back as 0-d numpy arrays.
    """
    qmin, qmax = qrange(bits, symmetric)
    lo, hi = A.as_float32(lo), A.as_float32(hi)
    if symmetric:
        scale = A.maximum(abs(lo), abs(hi)) / qmax
    else:
        # Stretch the range to include 0 so that 0 is exactly representable.
        lo, hi = A.clip(lo, hi=0), A.clip(hi, lo=0)
        scale = (hi - lo) / (qmax - qmin)
    scale = A.where(scale > 0, scale, A.ones_like(scale))  # all-zero blocks
    if A.dtype_name(scale_dtype) != "float32":
        stored = A.round_up_to_dtype(scale, scale_dtype)
        if not A.all_finite(stored):
            raise ValueError(f"values too large for {A.dtype_name(scale_dtype)} scales "
                             f"(max |x| = {float(A.amax(A.maximum(abs(lo), abs(hi)))):.4g})")
        scale = stored
    if symmetric:
        zero_point = A.zeros(tuple(scale.shape), like=scale)
    else:
        zero_point = A.clip(A.round_half_even(qmin - lo / A.as_float32(scale)), qmin, qmax)
    return scale, zero_point


def _groups(p: Array, x: Array) -> int:
    """How many groups `p` (a scale or zero point) splits the last dimension of `x` into; 0 when
    it broadcasts against `x` as it is (per tensor, per channel, or one value per element).

    A last dimension that is a proper divisor of x's last dimension (other than 1) means groups:
    each entry covers ``x.shape[-1] // p.shape[-1]`` columns.
    """
    if A.ndim(p) == A.ndim(x) and A.ndim(p) > 0 and p.shape[-1] not in (1, x.shape[-1]):
        n_groups = p.shape[-1]
        if x.shape[-1] % n_groups:
            raise ValueError(
                f"scale with {n_groups} groups does not fit a last dimension of {x.shape[-1]}"
            )
        return n_groups
    return 0


def _operands(x: Array, params: list[Array | None]) -> tuple[Array, list[Array | None], bool]:
    """`x` and its scale / zero point (None stays None), shaped to broadcast against each other,
    and whether `x` was viewed in groups (the caller then reshapes the result back).

    When they split x's last dimension into the same groups, x is viewed as
    ``[..., n_groups, group_size]`` and each parameter as ``[..., n_groups, 1]``: the group's
    value reaches its columns by broadcasting, not by a copy repeated per column. Otherwise
    (one per tensor or channel, or mixed shapes) a grouped parameter is repeated per column.
    """
    groups = {_groups(p, x) for p in params if p is not None}
    if len(groups) == 1:
        g = groups.pop()
        if g:
            grouped = x.reshape(*x.shape[:-1], g, x.shape[-1] // g)
            return grouped, [None if p is None else p.reshape(*p.shape, 1) for p in params], True
    return x, [None if p is None else _expand(p, x) for p in params], False


def _expand(p: Array, x: Array) -> Array:
    """`p` repeated per column of its group, so that it broadcasts against `x` as it is."""
    g = _groups(p, x)
    return A.repeat_last(p, x.shape[-1] // g) if g else p


def quantize(
    x: Array,
    scale: Array,
    zero_point: Array | None,
    bits: int,
    symmetric: bool,
) -> Array:
    """Integer codes ``clip(round(x / S + Z), qmin, qmax)``.

    int8 for symmetric codes, uint8 for affine codes (both hold any 2..8 bits).
    Rounding is half to even (torch.round and numpy.round), like most kernels.
    """
    qmin, qmax = qrange(bits, symmetric)
    zp = None if zero_point is None else A.as_float32(zero_point)
    xv, (s, z), grouped = _operands(A.as_float32(x), [A.as_float32(scale), zp])
    q = xv / s
    if z is not None:
        q = q + z
    q = A.clip(A.round_half_even(q), qmin, qmax)
    return A.to_codes(q.reshape(x.shape) if grouped else q, signed=symmetric)


def dequantize(
    q: Array,
    scale: Array,
    zero_point: Array | None = None,
    dtype: Any = None,
) -> Array:
    """``S * (q - Z)`` as floats (float32 unless `dtype` says otherwise)."""
    zp = None if zero_point is None else A.as_float32(zero_point)
    qf, (s, z), grouped = _operands(A.as_float32(q), [A.as_float32(scale), zp])
    if z is not None:
        qf = qf - z
    out = qf * s
    if grouped:
        out = out.reshape(q.shape)
    return out if dtype is None else A.cast(out, dtype)


def fake_quantize(
    x: Array,
    bits: int,
    symmetric: bool,
    granularity: Granularity = "channel",
    group_size: int | None = None,
    scale_dtype: Any = None,
) -> Array:
    """Quantize and dequantize `x` in one go (same shape and dtype as `x`).

    With the `scale_dtype` a `QuantLinear` stores, this is exactly its weight.
    """
    scale, zp = compute_qparams(x, bits, symmetric, granularity, group_size, scale_dtype)
    q = quantize(x, scale, None if symmetric else zp, bits, symmetric)
    return dequantize(q, scale, None if symmetric else zp, dtype=x.dtype)


def quant_error(x: Array, x_hat: Array) -> dict[str, float]:
    """How far `x_hat` is from `x`: mean squared error, max abs error, SQNR in dB.

    SQNR = 10 log10(sum x^2 / sum (x - x_hat)^2); inf when there is no error.
    """
    xf, hf = A.as_float64(x), A.as_float64(x_hat)
    err = xf - hf
    noise = float((err * err).sum())
    signal = float((xf * xf).sum())
    if noise == 0:
        sqnr = math.inf
    elif signal == 0:
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(signal / noise)
    return {
        "mse": float((err * err).mean()) if A.numel(err) else 0.0,
        "max_abs": float(abs(err).max()) if A.numel(err) else 0.0,
        "sqnr_db": sqnr,
    }
