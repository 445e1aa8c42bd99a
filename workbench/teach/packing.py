"""Bit packing of integer codes, so that a 4-bit weight really takes 4 bits.

Codes are unsigned integers in ``[0, 2^bits)`` (store signed codes with an
offset, e.g. ``q + 2^(bits-1)``). Any shape goes in; it is flattened in
row-major order and comes back flat from `unpack`.

Two layouts, chosen by `bits`:

* **dense** (bits 1, 2, 4, 8): ``8 // bits`` codes per byte, the first code
  in the lowest bits. 8 bits is a plain copy; 4 bits puts two codes in a byte
  (low nibble first), 2 bits four.
* **bit planes** (bits 3, 5, 6, 7): plane ``p`` holds bit ``p`` of every code,
  eight codes per byte (code ``i`` in bit ``i % 8`` of byte ``i // 8``); the
  planes follow each other. A 3-bit tensor of n codes takes ``3 * ceil(n / 8)``
  bytes: exactly 3 bits a code, up to a few bytes of padding, and every
  operation is a vectorized shift, no per-code loop.

Torch-side (imports torch).
"""
from __future__ import annotations

import numpy as np
import torch

_DENSE = (1, 2, 4, 8)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"bits: got {bits!r}; allowed: an integer in [1, 8]")


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that `pack` produces for `numel` codes of `bits` bits."""
    _check_bits(bits)
    if bits in _DENSE:
        per_byte = 8 // bits
        return -(-numel // per_byte)
    return bits * -(-numel // 8)


def _shifts(count: int, step: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, count * step, step, dtype=torch.uint8, device=device)


def pack(codes: torch.Tensor, bits: int, check: bool = True) -> torch.Tensor:
    """Pack unsigned `codes` (values in ``[0, 2^bits)``) into a flat uint8 tensor.

    `check=False` skips the range check (one pass over the codes) for callers whose codes
    are in range by construction (clamped, as `QuantLinear.from_linear` makes them).
    """
    _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes: expected an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1)
    if check and flat.numel():
        lo, hi = (int(v) for v in torch.aminmax(flat))
        if lo < 0 or hi >= 2**bits:
            raise ValueError(f"codes: values in [{lo}, {hi}] do not fit {bits} bits; allowed: [0, {2**bits - 1}]")
    flat = flat.to(torch.uint8)
    if bits == 8:
        return flat.clone()
    if bits in _DENSE:
        per_byte = 8 // bits
        fields = _pad(flat, per_byte).view(-1, per_byte)
        # One shift-and-OR per field of the byte (at most 8 whole-tensor operations): a reduction
        # over a dimension of 2-8 elements (what `sum(dim=1)` does) is many times slower.
        out = fields[:, 0].clone()
        for i in range(1, per_byte):
            out |= fields[:, i] << (i * bits)
        return out
    if flat.device.type == "cpu":
        return _bit_planes_numpy(flat, bits)
    return _bit_planes_torch(flat, bits)


def _bit_planes_numpy(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """The bit-plane layout of CPU codes: numpy's packbits is exactly it (bit i % 8 of byte i // 8), in C."""
    codes = flat.numpy()
    planes = np.empty((bits, -(-flat.numel() // 8)), dtype=np.uint8)
    for p in range(bits):
        planes[p] = np.packbits((codes >> p) & 1, bitorder="little")
    return torch.from_numpy(planes.reshape(-1))


def _bit_planes_torch(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """The bit-plane layout on any device: one shift-and-OR per code of an octet and plane."""
    octets = _pad(flat, 8).view(-1, 8)  # code i of each octet goes to bit i of a byte, in every plane
    planes = torch.empty(bits, octets.shape[0], dtype=torch.uint8, device=flat.device)
    scratch = torch.empty_like(planes[0])
    for p in range(bits):
        plane = planes[p]
        torch.bitwise_and(octets[:, 0] >> p, 1, out=plane)
        for i in range(1, 8):
            torch.bitwise_and(octets[:, i] >> p, 1, out=scratch)
            plane |= scratch << i
    return planes.reshape(-1)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack`: the first `numel` codes, flat, as uint8."""
    _check_bits(bits)
    need = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        raise ValueError(
            f"packed: expected a flat uint8 tensor of {need} bytes for {numel} codes of {bits} bits, "
            f"got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    if bits == 8:
        return packed[:numel].clone()
    mask = 2**bits - 1
    if bits in _DENSE:
        per_byte = 8 // bits
        codes = (packed.unsqueeze(1) >> _shifts(per_byte, bits, packed.device)) & mask
        return codes.reshape(-1)[:numel]
    bits_ = (packed.view(bits, -1).unsqueeze(2) >> _shifts(8, 1, packed.device)) & 1  # [bits, n/8, 8]
    bits_ = bits_.reshape(bits, -1)[:, :numel]
    return (bits_ << _shifts(bits, 1, packed.device).unsqueeze(1)).sum(dim=0, dtype=torch.uint8)


def unpack_float(packed: torch.Tensor, bits: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """`unpack` straight to a float tensor (the codes as floats), the hot path of a forward.

    Bit planes (3, 5, 6, 7 bits) go through tables: each byte of plane p holds bit p of 8
    consecutive codes, so one row lookup per byte (`embedding` into a [256, 8] table of
    ``bit * 2^p``) gives those 8 codes' share as floats, and the planes add up to the codes:
    a quarter faster than shifting and masking uint8 tensors, in a forward that unpacks every
    layer. Dense layouts (1, 2, 4 bits) are faster shifted."""
    if bits == 8:
        return packed[:numel].to(dtype)
    if bits in _DENSE:
        return unpack(packed, bits, numel).to(dtype)
    need = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        return unpack(packed, bits, numel).to(dtype)  # raises with the message
    planes = packed.view(bits, -1).long()
    tables = _plane_tables(bits, dtype, packed.device)
    out = torch.nn.functional.embedding(planes[0], tables[0])
    for p in range(1, bits):
        out += torch.nn.functional.embedding(planes[p], tables[p])
    return out.view(-1)[:numel]


_TABLES: dict[tuple[int, torch.dtype, torch.device], list[torch.Tensor]] = {}


def _plane_tables(bits: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Per plane p, the [256, 8] table of ``bit i of byte b * 2^p`` (built once per dtype and device)."""
    key = (bits, dtype, device)
    if key not in _TABLES:
        byte_bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1  # [256, 8]
        _TABLES[key] = [(byte_bits << p).to(dtype=dtype, device=device) for p in range(bits)]
    return _TABLES[key]


def _pad(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last dimension of `t` to a multiple of `multiple`."""
    extra = -t.shape[-1] % multiple
    if not extra:
        return t
    return torch.cat([t, t.new_zeros(*t.shape[:-1], extra)], dim=-1)
