"""The reference quantizer's math, packing and QuantLinear, on small tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.teach import packing
from workbench.teach.qlinear import QuantLinear
from workbench.teach.quant import (
    compute_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quant_error,
    quantize,
)

pytestmark = pytest.mark.torch

GRANULARITIES = [("tensor", None), ("channel", None), ("group", 32)]


def realish(out: int = 96, inp: int = 256, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed weights whose scale varies across rows and across input columns, like trained layers."""
    torch.manual_seed(seed)  # torch.distributions samples from the global generator
    t = torch.distributions.StudentT(4.0).sample((out, inp))
    g = torch.Generator().manual_seed(seed)
    rows = torch.exp(torch.randn(out, 1, generator=g) * 0.5)
    cols = torch.exp(torch.randn(1, inp, generator=g) * 0.8)
    return 0.02 * t * rows * cols


def expand(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if p.dim() == like.dim() and p.shape[-1] not in (1, like.shape[-1]):
        p = p.repeat_interleave(like.shape[-1] // p.shape[-1], dim=-1)
    return p.float().expand_as(like)


def test_qrange_conventions():
    assert qrange(8, True) == (-127, 127)  # restricted range: -128 unused
    assert qrange(8, False) == (0, 255)
    assert qrange(4, True) == (-7, 7)
    assert qrange(4, False) == (0, 15)
    assert qrange(2, True) == (-1, 1)
    for bad in (1, 9, 4.0):
        with pytest.raises(ValueError, match="bits"):
            qrange(bad, True)


def test_qparams_shapes_follow_granularity():
    w = realish(96, 256)
    assert compute_qparams(w, 4, True, "tensor")[0].shape == ()
    assert compute_qparams(w, 4, True, "channel")[0].shape == (96, 1)
    s, z = compute_qparams(w, 4, False, "group", 32)
    assert s.shape == z.shape == (96, 8)
    assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 15
    with pytest.raises(ValueError, match="group_size"):
        compute_qparams(w, 4, True, "group", 48)  # 256 % 48 != 0
    with pytest.raises(ValueError, match="granularity"):
        compute_qparams(w, 4, True, "row")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,group_size", GRANULARITIES)
def test_error_is_at_most_half_a_step(bits, symmetric, granularity, group_size):
    x = realish()
    scale, zp = compute_qparams(x, bits, symmetric, granularity, group_size)
    q = quantize(x, scale, zp, bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    assert q.dtype == (torch.int8 if symmetric else torch.uint8)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    x_hat = dequantize(q, scale, zp)
    bound = expand(scale, x) / 2
    assert ((x - x_hat).abs() <= bound * (1 + 1e-5) + 1e-7).all()
    # The extremes use the ends of the grid: the range is not wasted.
    assert int(q.max()) == qmax


@pytest.mark.parametrize("granularity,group_size", GRANULARITIES)
def test_float16_scales_keep_the_bound(granularity, group_size):
    x = realish()
    s32, _ = compute_qparams(x, 4, False, granularity, group_size)
    s16, z16 = compute_qparams(x, 4, False, granularity, group_size, scale_dtype=torch.float16)
    assert s16.dtype == torch.float16
    assert (s16.float() >= s32).all()  # rounded up: the grid still covers the data
    x_hat = dequantize(quantize(x, s16, z16, 4, False), s16, z16)
    assert ((x - x_hat).abs() <= expand(s16, x) / 2 * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("granularity,group_size", GRANULARITIES)
def test_zero_is_exact_in_affine(granularity, group_size):
    x = realish().abs() + 0.01  # all positive: the range must be stretched down to 0
    x[::3, ::5] = 0.0
    x_hat = fake_quantize(x, 3, False, granularity, group_size)
    assert (x_hat[::3, ::5] == 0).all()
    neg = -(realish().abs() + 0.01)
    neg[1, :] = 0.0
    assert (fake_quantize(neg, 4, False, granularity, group_size)[1] == 0).all()


def test_symmetric_grid_is_symmetric():
    x = realish()
    s, z = compute_qparams(x, 4, True, "group", 32)
    assert torch.equal(quantize(-x, s, z, 4, True), -quantize(x, s, z, 4, True))
    assert (z == 0).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_groups_are_guarded(symmetric):
    x = realish(8, 64)
    x[2] = 0.0
    x[5, :32] = 0.0
    s, z = compute_qparams(x, 4, symmetric, "group", 32)
    assert torch.isfinite(s).all() and (s > 0).all()
    x_hat = fake_quantize(x, 4, symmetric, "group", 32)
    assert torch.isfinite(x_hat).all()
    assert (x_hat[2] == 0).all() and (x_hat[5, :32] == 0).all()
    assert (fake_quantize(torch.zeros(4, 4), 8, symmetric, "tensor") == 0).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_finer_granularity_gives_lower_error(symmetric):
    x = realish()
    mse = {
        g: quant_error(x, fake_quantize(x, 4, symmetric, g, gs))["mse"] for g, gs in GRANULARITIES
    }
    assert mse["group"] < mse["channel"] < mse["tensor"]


def test_more_bits_give_lower_error():
    x = realish()
    sqnr = [quant_error(x, fake_quantize(x, b, True, "channel"))["sqnr_db"] for b in range(2, 9)]
    assert all(a < b for a, b in zip(sqnr, sqnr[1:]))
    # Roughly 6 dB per bit once the grid is fine enough.
    assert 4.5 < sqnr[-1] - sqnr[-2] < 7.5


def test_quant_error_values():
    x = torch.tensor([1.0, -2.0, 3.0, 0.0])
    e = quant_error(x, x.clone())
    assert e["mse"] == 0 and e["max_abs"] == 0 and e["sqnr_db"] == math.inf
    e = quant_error(x, x + torch.tensor([0.0, 0.5, 0.0, -1.0]))
    assert e["mse"] == pytest.approx((0.25 + 1.0) / 4)
    assert e["max_abs"] == pytest.approx(1.0)
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(14 / 1.25))


def test_fake_quantize_keeps_dtype_and_shape():
    x = realish().to(torch.bfloat16)
    y = fake_quantize(x, 8, True, "group", 64)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


# --- packing ---------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 13, 64, 1001])
def test_pack_round_trip(bits, numel):
    g = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2**bits, (numel,), dtype=torch.uint8, generator=g)
    packed = packing.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packing.packed_nbytes(numel, bits)
    # Real packing: no more than `bits` bits a code, up to a few bytes of padding.
    assert packed.numel() <= math.ceil(numel * bits / 8) + (bits - 1)
    assert torch.equal(packing.unpack(packed, bits, numel), codes)


def test_pack_2d_and_extreme_codes():
    for bits in range(2, 9):
        codes = torch.tensor([[0, 2**bits - 1, 1], [2**bits - 1, 0, 2**bits - 2]])
        assert torch.equal(packing.unpack(packing.pack(codes, bits), bits, 6).view(2, 3), codes.to(torch.uint8))


def test_pack_layouts():
    # 4 bits: low nibble first.
    assert packing.pack(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    # 2 bits: four codes a byte, first in the lowest bits.
    assert packing.pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00111001, 0b11]
    # 3 bits: bit planes; plane 0 holds the lowest bit of the 8 codes.
    assert packing.pack(torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), 3).tolist() == [0b01010101, 0b01100110, 0b01111000]
    assert packing.pack(torch.tensor([200, 7]), 8).tolist() == [200, 7]


def test_pack_refuses_codes_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        packing.pack(torch.tensor([0, 16]), 4)
    with pytest.raises(ValueError, match="codes"):
        packing.pack(torch.tensor([-1, 2]), 4)
    with pytest.raises(ValueError, match="integer"):
        packing.pack(torch.tensor([0.5]), 4)
    with pytest.raises(ValueError, match="bytes"):
        packing.unpack(torch.zeros(3, dtype=torch.uint8), 4, 7)


# --- QuantLinear -------------------------------------------------------------

CONFIGS = [(b, s, g) for b in (2, 3, 4, 8) for s in (True, False) for g in (-1, 0, 32)]


@pytest.mark.parametrize("bits,sym,group_size", CONFIGS)
def test_quant_linear_matches_fake_quantized_linear(bits, sym, group_size):
    torch.manual_seed(bits)
    lin = torch.nn.Linear(128, 48, bias=True)
    with torch.no_grad():
        lin.weight.copy_(realish(48, 128, seed=bits))
    q = QuantLinear.from_linear(lin, bits, sym, group_size)
    gran = q.granularity
    w_ref = fake_quantize(lin.weight, bits, sym, gran, group_size if group_size > 0 else None, q.scale.dtype)
    # The oracle: the stored weight is exactly the fake-quantized one.
    assert torch.equal(q.dequantize_weight(), w_ref)
    x = torch.randn(5, 7, 128)
    torch.testing.assert_close(q(x), F.linear(x, w_ref, lin.bias))
    assert not torch.equal(w_ref, lin.weight)  # something was quantized


@pytest.mark.parametrize("bits,sym,group_size", CONFIGS)
def test_quant_linear_holds_only_the_packed_bytes(bits, sym, group_size):
    out_f, in_f = 48, 128
    q = QuantLinear.from_linear(torch.nn.Linear(in_f, out_f, bias=False), bits, sym, group_size)
    n_scales = {-1: out_f, 0: 1}.get(group_size, out_f * in_f // max(group_size, 1))
    scale_bytes = 2 if group_size > 0 else 4
    expected = packing.packed_nbytes(out_f * in_f, bits) + n_scales * scale_bytes + (0 if sym else n_scales)
    held = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert held == expected
    assert all(not t.is_floating_point() or t.numel() <= n_scales for t in q.state_dict().values())
    if bits == 4:
        assert q.qweight.numel() == out_f * in_f // 2
    if bits == 3:
        assert q.qweight.numel() == 3 * out_f * in_f // 8


def test_quant_linear_codes_and_dtypes():
    lin = torch.nn.Linear(64, 16, bias=False)
    q = QuantLinear.from_linear(lin, 4, True, 32)
    codes = q.codes()
    assert codes.shape == (16, 64) and 1 <= int(codes.min()) and int(codes.max()) <= 15  # -7..7 stored +8
    assert q.dequantize_weight(torch.bfloat16).dtype == torch.bfloat16
    y16 = q(torch.ones(1, 64, dtype=torch.bfloat16))
    y32 = q(torch.ones(1, 64))
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=0.05, rtol=0.02)
    assert "bits=4" in repr(q) and "group_size=32" in repr(q)
    with pytest.raises(ValueError, match="group_size"):
        QuantLinear.from_linear(torch.nn.Linear(60, 4), 4, True, 32)


# --- one implementation for numpy (notebook kernel) and torch (workers) --------------------
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,group_size", GRANULARITIES)
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16])
def test_numpy_and_torch_give_the_same_codes_and_scales(symmetric, granularity, group_size, scale_dtype):
    import numpy as np

    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(3)) * 2
    st, zt = compute_qparams(x, 4, symmetric, granularity, group_size, scale_dtype)
    sn, zn = compute_qparams(x.numpy(), 4, symmetric, granularity, group_size, str(scale_dtype).split(".")[1])
    assert isinstance(sn, np.ndarray) and np.array_equal(st.numpy(), sn) and np.array_equal(zt.numpy(), zn)
    qt = quantize(x, st, None if symmetric else zt, 4, symmetric)
    qn = quantize(x.numpy(), sn, None if symmetric else zn, 4, symmetric)
    assert np.array_equal(qt.numpy(), qn)
    assert np.allclose(fake_quantize(x, 4, symmetric, granularity, group_size).numpy(),
                       fake_quantize(x.numpy(), 4, symmetric, granularity, group_size), atol=1e-6)
