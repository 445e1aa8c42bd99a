"""`QuantLinear`: the packed layer the `rtn` method puts into models (torch-side, imports torch).

Codes and scales come from `teach.quant` (the same math the notebooks teach on numpy).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import packing
from .quant import Granularity, qparams_from_range, qrange


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
        """Quantize `linear.weight` with round-to-nearest and return the packed layer.

        The same codes, scales and zero points as `teach.quant` (`compute_qparams` then
        `quantize`) computes them, bit for bit, in a few whole-tensor passes: the weight is
        viewed as ``[out, groups, group_size]`` so that one min/max pass gives every group's
        range and the scales broadcast over their groups instead of being repeated per column,
        and the codes are rounded, clamped and offset in place.
        """
        w = linear.weight.detach()
        out_f, in_f = w.shape
        layer = cls(in_f, out_f, bits, sym, group_size, bias=linear.bias is not None, device=w.device)
        qmin, qmax = qrange(bits, sym)
        wf = w.float()  # no copy for a float32 weight
        if layer.granularity == "tensor":
            blocks = wf
            lo, hi = wf.amin(), wf.amax()
        else:
            blocks = wf.view(out_f, in_f // group_size, group_size) if group_size > 0 else wf
            # amin and amax apart: torch's fused aminmax over a short last dimension is ~8x slower.
            lo, hi = blocks.amin(dim=-1, keepdim=True), blocks.amax(dim=-1, keepdim=True)
        if sym:
            # max |x| of a block is the larger of |min| and |max|: no |x| copy of the weight.
            hi = torch.maximum(lo.abs(), hi.abs())
            lo = -hi
        scale, zp = qparams_from_range(lo, hi, bits, sym, layer.scale.dtype)
        q = blocks / scale.float()
        if not sym:
            q.add_(zp)
        q.round_().clamp_(qmin, qmax)
        if layer.code_offset:
            q.add_(layer.code_offset)  # small integers: exact in float32
        codes = q.to(torch.uint8)
        del q
        layer.qweight = packing.pack(codes, bits, check=False)  # in range: clamped above
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
