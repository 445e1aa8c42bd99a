"""rtn's vectorized quantizer gives the same bytes as the implementation it replaced.

`_Before` below is the quantizer as it was before it was vectorized (teach.quant's `quantize` with
scales repeated per column, `compute_qparams`, int16 offsets, `packing.pack` with reductions over
bit fields), kept here verbatim as the oracle: `QuantLinear.from_linear` must produce exactly its
qweight, scale and zero_point bytes, and `teach.quant` exactly its codes and dequantized values.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.teach import packing, quant
from workbench.teach import arrays as A
from workbench.teach.qlinear import QuantLinear

pytestmark = pytest.mark.torch


class _Before:
    """The pre-vectorization quantizer (workbench 5a1019f), torch only."""

    @staticmethod
    def expand(p, x):
        if A.ndim(p) == A.ndim(x) and A.ndim(p) > 0 and p.shape[-1] not in (1, x.shape[-1]):
            return A.repeat_last(p, x.shape[-1] // p.shape[-1])
        return p

    @classmethod
    def quantize(cls, x, scale, zero_point, bits, symmetric):
        qmin, qmax = quant.qrange(bits, symmetric)
        q = A.as_float32(x) / cls.expand(A.as_float32(scale), x)
        if zero_point is not None:
            q = q + cls.expand(A.as_float32(zero_point), x)
        return A.to_codes(A.clip(A.round_half_even(q), qmin, qmax), signed=symmetric)

    @classmethod
    def dequantize(cls, q, scale, zero_point=None):
        qf = A.as_float32(q)
        if zero_point is not None:
            qf = qf - cls.expand(A.as_float32(zero_point), q)
        return qf * cls.expand(A.as_float32(scale), q)

    @staticmethod
    def pack(codes, bits):
        def shifts(count, step):
            return torch.arange(0, count * step, step, dtype=torch.uint8)

        def pad(t, multiple):
            extra = -t.shape[-1] % multiple
            return torch.cat([t, t.new_zeros(*t.shape[:-1], extra)], dim=-1) if extra else t

        flat = codes.reshape(-1).to(torch.uint8)
        if bits == 8:
            return flat.clone()
        if bits in (1, 2, 4):
            per_byte = 8 // bits
            return (pad(flat, per_byte).view(-1, per_byte) << shifts(per_byte, bits)).sum(dim=1, dtype=torch.uint8)
        planes = (flat.unsqueeze(0) >> shifts(bits, 1).unsqueeze(1)) & 1
        octets = pad(planes, 8).view(bits, -1, 8)
        return (octets << shifts(8, 1)).sum(dim=2, dtype=torch.uint8).reshape(-1)

    @classmethod
    def from_linear(cls, linear, bits, sym, group_size):
        w = linear.weight.detach()
        out_f, in_f = w.shape
        layer = QuantLinear(in_f, out_f, bits, sym, group_size, bias=linear.bias is not None)
        scale, zp = quant.compute_qparams(
            w, bits, sym, layer.granularity, group_size if group_size > 0 else None, layer.scale.dtype
        )
        q = cls.quantize(w, scale, None if sym else zp, bits, sym)
        codes = q.to(torch.int16) + layer.code_offset
        qweight = cls.pack(codes.to(torch.uint8), bits)
        zero = None if sym else zp.reshape(layer.zero_point.shape).to(torch.uint8)
        return qweight, scale.reshape(layer.scale.shape), zero


def _weight(out_f: int, in_f: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    w[0, :16] = 0.0  # an all-zero group (scale guarded to 1)
    w[1, :] = -torch.rand(in_f, generator=g)  # a row with no positive value
    w[2, 16:32] = 0.25  # a constant group
    w[3, :8] = torch.tensor([1e-8, -1e-8, 3.0, -3.0, 0.5, -0.5, 1e-3, -2.5])
    return w.to(dtype)


def _bytes(t: torch.Tensor | None) -> bytes | None:
    return None if t is None else t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [-1, 0, 16, 64])
def test_from_linear_gives_the_same_bytes_as_before(bits, sym, group_size):
    linear = torch.nn.Linear(192, 37, bias=True)  # 37 rows: packed lengths that are not whole octets
    linear.weight.data = _weight(37, 192, seed=bits * 10 + group_size)
    new = QuantLinear.from_linear(linear, bits, sym, group_size)
    qweight, scale, zero = _Before.from_linear(linear, bits, sym, group_size)
    assert _bytes(new.qweight) == _bytes(qweight)
    assert new.scale.dtype == scale.dtype and _bytes(new.scale) == _bytes(scale)
    assert _bytes(new.zero_point) == _bytes(zero)
    assert torch.equal(new.bias, linear.bias.detach())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_linear_same_bytes_for_half_precision_weights(dtype):
    linear = torch.nn.Linear(128, 24, bias=False)
    linear.weight.data = _weight(24, 128, seed=7, dtype=dtype)
    for bits, sym, gs in [(4, False, 32), (3, True, 64), (8, True, -1)]:
        new = QuantLinear.from_linear(linear, bits, sym, gs)
        qweight, scale, zero = _Before.from_linear(linear, bits, sym, gs)
        assert (_bytes(new.qweight), _bytes(new.scale), _bytes(new.zero_point)) == (
            _bytes(qweight), _bytes(scale), _bytes(zero))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000, 4099])
def test_pack_gives_the_same_bytes_as_before(bits, numel):
    codes = torch.randint(0, 2**bits, (numel,), generator=torch.Generator().manual_seed(numel), dtype=torch.uint8)
    assert _bytes(packing.pack(codes, bits)) == _bytes(_Before.pack(codes, bits))
    assert torch.equal(packing.unpack(packing.pack(codes, bits), bits, numel), codes)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("granularity,group_size", [("tensor", None), ("channel", None), ("group", 16)])
@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_quantize_and_dequantize_match_the_repeated_scale_form(sym, granularity, group_size, lib):
    w = _weight(12, 64, seed=3)
    x = w if lib == "torch" else w.numpy()
    scale, zp = quant.compute_qparams(x, 4, sym, granularity, group_size, "float16")
    z = None if sym else zp
    new, old = quant.quantize(x, scale, z, 4, sym), _Before.quantize(x, scale, z, 4, sym)
    assert type(new) is type(old) and new.dtype == old.dtype and new.shape == old.shape
    assert np.array_equal(np.asarray(new), np.asarray(old))
    back_new, back_old = quant.dequantize(new, scale, z), _Before.dequantize(old, scale, z)
    assert back_new.shape == back_old.shape and np.array_equal(np.asarray(back_new), np.asarray(back_old))


def test_mixed_parameter_shapes_still_broadcast():
    """A grouped scale with a per-channel zero point falls back to repeating the scale per column."""
    x = torch.randn(4, 32)
    scale = torch.rand(4, 2) + 0.1
    zero = torch.full((4, 1), 3.0)
    assert torch.equal(quant.quantize(x, scale, zero, 4, False), _Before.quantize(x, scale, zero, 4, False))


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_the_device_path_of_bit_planes_matches_the_cpu_one(bits):
    """CUDA tensors take the torch-only bit-plane packer; it must match numpy's packbits layout."""
    codes = torch.randint(0, 2**bits, (1003,), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    assert torch.equal(packing._bit_planes_torch(codes, bits), packing._bit_planes_numpy(codes, bits))
    assert torch.equal(packing._bit_planes_torch(codes, bits), _Before.pack(codes, bits))
