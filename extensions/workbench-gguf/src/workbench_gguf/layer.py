"""The layer `gguf` puts into models (worker side: imports torch and gguf)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants
from torch import nn


class GGUFLinear(nn.Module):
    """A Linear layer holding its weight as GGUF blocks (a uint8 buffer, so counting the module's
    tensors gives its real size); `forward` dequantizes them and runs `F.linear`."""

    def __init__(self, blocks: torch.Tensor, qtype: str, shape: tuple[int, int], bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("blocks", blocks)
        self.qtype = qtype
        self.shape = shape
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, qtype: str) -> "GGUFLinear":
        weight = linear.weight.detach().to(torch.float32).contiguous().numpy()
        blocks = quants.quantize(weight, GGMLQuantizationType[qtype])
        return cls(torch.from_numpy(np.ascontiguousarray(blocks)), qtype, tuple(weight.shape), linear.bias)

    def dequantize_weight(self) -> torch.Tensor:
        w = quants.dequantize(self.blocks.numpy(), GGMLQuantizationType[self.qtype])
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"out_features={self.shape[0]}, in_features={self.shape[1]}, qtype={self.qtype}"
