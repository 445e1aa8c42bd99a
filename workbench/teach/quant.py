"""Round-to-nearest quantization, written the way the textbooks write it.

    x_q   = clip(round(x / S + Z), qmin, qmax)
    x_hat = S * (x_q - Z)

This module is the workbench's reference quantizer: the notebooks teach with it
and other backends are checked against it. Torch-side (imports torch).

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

`QuantLinear` at the end is the layer the `rtn` method puts into models: packed
codes plus scales as buffers, dequantized on the fly in `forward`.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import packing

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


def _check_granularity(x: torch.Tensor, granularity: str, group_size: int | None) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: got {granularity!r}; allowed: one of {', '.join(GRANULARITIES)}")
    if granularity == "group":
        if not group_size or group_size < 1:
            raise ValueError(f"group_size: got {group_size!r}; allowed: a positive integer for granularity 'group'")
        if x.dim() == 0 or x.shape[-1] % group_size:
            last = x.shape[-1] if x.dim() else "a scalar"
            raise ValueError(f"group_size: {group_size} does not divide the last dimension ({last}) of the tensor")


def _reduce(x: torch.Tensor, granularity: str, group_size: int | None, op: str) -> torch.Tensor:
    """min/max/absmax of `x` per quantization block, shaped like the scale."""
    fn = {"min": torch.amin, "max": torch.amax}[op]
    if granularity == "tensor":
        return fn(x)
    if granularity == "channel":
        if x.dim() <= 1:
            return x.clone()
        return fn(x, dim=tuple(range(1, x.dim())), keepdim=True)
    assert group_size
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    return fn(grouped, dim=-1)


def compute_qparams(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    granularity: Granularity = "channel",
    group_size: int | None = None,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of round-to-nearest quantization of `x`.

    Returns ``(scale, zero_point)`` shaped by the granularity (see the module
    docstring): the scale in `scale_dtype`, the zero point as float32 integers
    (all 0 for symmetric).

    A `scale_dtype` narrower than float32 (float16, as stored by group formats)
    rounds the scale *up* to the next representable value and derives the zero
    point from that rounded scale, so the grid still covers the data and the
    codes agree with the scale that is actually stored.
    """
    _check_granularity(x, granularity, group_size)
    qmin, qmax = qrange(bits, symmetric)
    xf = x.detach().float()
    if symmetric:
        scale = _reduce(xf.abs(), granularity, group_size, "max") / qmax
    else:
        # Stretch the range to include 0 so that 0 is exactly representable.
        lo = _reduce(xf, granularity, group_size, "min").clamp(max=0)
        hi = _reduce(xf, granularity, group_size, "max").clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero blocks
    if scale_dtype != torch.float32:
        stored = scale.to(scale_dtype)
        up = torch.nextafter(stored, torch.tensor(math.inf, dtype=scale_dtype, device=stored.device))
        stored = torch.where(stored.float() < scale, up, stored)
        if not torch.isfinite(stored).all():
            raise ValueError(f"values too large for {scale_dtype} scales (max |x| = {float(xf.abs().max()):.4g})")
        scale = stored
    if symmetric:
        zero_point = torch.zeros(scale.shape, dtype=torch.float32, device=scale.device)
    else:
        zero_point = torch.round(qmin - lo / scale.float()).clamp(qmin, qmax)
    return scale, zero_point


def _expand(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View `p` (a scale or zero point) so that it broadcasts against `x`.

    A last dimension that is a proper divisor of x's last dimension (other than
    1) means groups: each entry covers ``x.shape[-1] // p.shape[-1]`` columns.
    """
    if p.dim() == x.dim() and p.dim() > 0 and p.shape[-1] not in (1, x.shape[-1]):
        n_groups = p.shape[-1]
        if x.shape[-1] % n_groups:
            raise ValueError(
                f"scale with {n_groups} groups does not fit a last dimension of {x.shape[-1]}"
            )
        return p.repeat_interleave(x.shape[-1] // n_groups, dim=-1)
    return p


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    symmetric: bool,
) -> torch.Tensor:
    """Integer codes ``clip(round(x / S + Z), qmin, qmax)``.

    int8 for symmetric codes, uint8 for affine codes (both hold any 2..8 bits).
    Rounding is torch.round: half to even, like numpy and most kernels.
    """
    qmin, qmax = qrange(bits, symmetric)
    s = _expand(scale.float(), x)
    q = x.float() / s
    if zero_point is not None:
        q = q + _expand(zero_point.float(), x)
    q = torch.round(q).clamp_(qmin, qmax)
    return q.to(torch.int8 if symmetric else torch.uint8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``S * (q - Z)`` as a float tensor (float32 unless `dtype` says otherwise)."""
    qf = q.to(torch.float32)
    if zero_point is not None:
        qf = qf - _expand(zero_point.float(), q)
    return (qf * _expand(scale.float(), q)).to(dtype)


def fake_quantize(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    granularity: Granularity = "channel",
    group_size: int | None = None,
    scale_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Quantize and dequantize `x` in one go (same shape and dtype as `x`).

    With the `scale_dtype` a `QuantLinear` stores, this is exactly its weight.
    """
    scale, zp = compute_qparams(x, bits, symmetric, granularity, group_size, scale_dtype)
    q = quantize(x, scale, None if symmetric else zp, bits, symmetric)
    return dequantize(q, scale, None if symmetric else zp, dtype=x.dtype)


def quant_error(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """How far `x_hat` is from `x`: mean squared error, max abs error, SQNR in dB.

    SQNR = 10 log10(sum x^2 / sum (x - x_hat)^2); inf when there is no error.
    """
    xf, hf = x.detach().double(), x_hat.detach().double()
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
        "mse": float((err * err).mean()) if err.numel() else 0.0,
        "max_abs": float(err.abs().max()) if err.numel() else 0.0,
        "sqnr_db": sqnr,
    }


class QuantLinear(nn.Module):
    """A Linear layer whose weight is stored as packed integer codes.

    Buffers (so that counting a module's tensors gives its real size):

    * ``qweight``: uint8, the codes of ``W [out, in]`` in row-major order, packed
      to `bits` bits each (see `workbench.teach.packing`). Symmetric codes are
      stored with an offset of ``2^(bits-1)`` so they are non-negative.
    * ``scale``: float16 when group-quantized (one per group, as GGUF, GPTQ and
      AWQ store them), else float32 (one per row or per tensor; negligible size).
    * ``zero_point``: uint8 integers, affine only, shaped like ``scale``.
      Symmetric layers hold no zero point.
    * ``bias``: kept as it was (full precision).

    `forward` unpacks and dequantizes the weight in the input's dtype on every
    call, then runs ``F.linear``. Nothing full-precision is cached: the memory
    saving is real and so is the cost of dequantizing each time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        sym: bool,
        group_size: int,
        bias: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        qrange(bits, sym)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.sym, self.group_size = bits, sym, group_size
        numel = in_features * out_features
        if group_size > 0:
            if in_features % group_size:
                raise ValueError(f"group_size: {group_size} does not divide in_features {in_features}")
            pshape: tuple[int, ...] = (out_features, in_features // group_size)
            sdtype = torch.float16
        elif group_size == -1:
            pshape, sdtype = (out_features, 1), torch.float32
        elif group_size == 0:
            pshape, sdtype = (), torch.float32
        else:
            raise ValueError(f"group_size: got {group_size}; allowed: -1 (per channel), 0 (per tensor) or > 0")
        nbytes = packing.packed_nbytes(numel, bits)
        self.register_buffer("qweight", torch.zeros(nbytes, dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(pshape, dtype=sdtype, device=device))
        if sym:
            self.zero_point = None
        else:
            self.register_buffer("zero_point", torch.zeros(pshape, dtype=torch.uint8, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False)
        else:
            self.bias = None

    @property
    def granularity(self) -> Granularity:
        return "group" if self.group_size > 0 else "channel" if self.group_size == -1 else "tensor"

    @property
    def code_offset(self) -> int:
        """What is added to the signed symmetric codes to store them unsigned."""
        return 2 ** (self.bits - 1) if self.sym else 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, sym: bool, group_size: int) -> "QuantLinear":
        """Quantize `linear.weight` with round-to-nearest and return the packed layer."""
        w = linear.weight.detach()
        out_f, in_f = w.shape
        layer = cls(in_f, out_f, bits, sym, group_size, bias=linear.bias is not None, device=w.device)
        scale, zp = compute_qparams(
            w, bits, sym, layer.granularity, group_size if group_size > 0 else None, layer.scale.dtype
        )
        q = quantize(w, scale, None if sym else zp, bits, sym)
        codes = q.to(torch.int16) + layer.code_offset
        layer.qweight.copy_(packing.pack(codes.to(torch.uint8), bits))
        layer.scale.copy_(scale.reshape(layer.scale.shape))
        if not sym:
            layer.zero_point.copy_(zp.reshape(layer.zero_point.shape).to(torch.uint8))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer

    def codes(self) -> torch.Tensor:
        """The unpacked unsigned codes, shape ``[out, in]`` (uint8)."""
        n = self.in_features * self.out_features
        return packing.unpack(self.qweight, self.bits, n).reshape(self.out_features, self.in_features)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as the layer computes with it: ``S * (code - Z)``, shape ``[out, in]``."""
        out_f, in_f = self.out_features, self.in_features
        w = packing.unpack_float(self.qweight, self.bits, out_f * in_f, dtype)
        zero = self.zero_point.to(dtype) if self.zero_point is not None else None
        scale = self.scale.to(dtype)
        if self.group_size > 0:
            w = w.view(out_f, in_f // self.group_size, self.group_size)
            scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1) if zero is not None else None
        else:
            w = w.view(out_f, in_f)
        # In place: one float buffer the size of the weight, no more.
        if zero is not None:
            w.sub_(zero)
        elif self.code_offset:
            w.sub_(self.code_offset)
        w.mul_(scale)
        return w.view(out_f, in_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize_weight(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        kind = "sym" if self.sym else "asym"
        gran = f"group_size={self.group_size}" if self.group_size > 0 else self.granularity
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {kind}, {gran}"
