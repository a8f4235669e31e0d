"""Per-group mixed widths: quantize, pack, unpack and dequantize a weight whose groups each
carry their own bit width (a group-wise plan's ``(out, n_groups)`` width map).

Layout of one unit with a (out, K) weight, group size G and width map ``group_bits``
(out, n_groups) uint8, every width in 1..8::

    packed      uint8 (total,)          the groups one after the other, row-major (row, then
                                        group); group (r, g) is its codes packed at
                                        b = group_bits[r, g] with the layout of
                                        :mod:`mpsearch.kernels.packing`: ceil(len_g * b / 8) bytes
    group_bits  uint8 (out, n_groups)   the width map (1 byte per group)
    scale, zero (out, n_groups)         as for one width (symmetric: zero = 2^(b-1) per group)

``len_g`` is G, except the last group of a row when G does not divide K. When G is a multiple
of 8 every group starts on a whole byte, so a kernel walks a row group by group, decoding each
with the code of its width, and a row's groups are contiguous (one stream per row). The byte
offset of every group is a prefix sum of the map (:func:`group_offsets`), derived, not stored.

Functions take and return torch tensors (any device).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mpsearch.core.config import FLOAT_BITS, QuantizerConfig
from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.kernels.packing import _pack_tensor, _unpack_tensor
from mpsearch.kernels.quantize import (
    SCALE_DTYPES,
    QuantizedWeight,
    _choose_params,
    _codes,
    _grouped,
    check_group_bits,
)

__all__ = ["check_group_map", "dequantize_groups", "group_lengths", "group_offsets",
           "pack_groups", "packed_groups_bytes", "quantize_groups", "unpack_groups",
           "zero_points_groups"]


def group_lengths(K: int, G: int | None) -> np.ndarray:
    """Codes in each of a row's groups: G, except a shorter last group when G does not divide K."""
    n = 1 if G is None else -(-K // G)
    g = K if n == 1 else int(G)  # type: ignore[arg-type]
    lengths = np.full(n, g, np.int64)
    lengths[-1] = K - (n - 1) * g
    return lengths


def check_group_map(group_bits: Tensor | np.ndarray, out: int, K: int,
                    config: QuantizerConfig) -> Tensor:
    """A plan's (out, n_groups) widths as a uint8 CPU tensor; every width must be packable (1..8)."""
    gb = check_group_bits(group_bits, out, K, config)
    if gb.numel() and int(gb.max()) == FLOAT_BITS:
        raise PlanMismatchError(
            f"Packed per-group layers need a width of 1..8 in every group, but "
            f"{int((gb == FLOAT_BITS).sum())} group(s) are at 16 bits (float). Plan those groups "
            f"at 8 bits, keep the whole unit at 16, or use fake_quantize_model for this plan.")
    return gb.to(device="cpu", dtype=torch.uint8).contiguous()


def _group_bytes(group_bits: Tensor, K: int, G: int | None) -> Tensor:
    lengths = torch.from_numpy(group_lengths(K, G))
    return (lengths[None, :] * group_bits.to(torch.int64) + 7) // 8


def group_offsets(group_bits: Tensor, K: int, G: int | None) -> Tensor:
    """(out * n_groups + 1,) int64 byte offsets of the groups in ``packed`` (row-major)."""
    sizes = _group_bytes(group_bits.cpu(), K, G).reshape(-1)
    return F.pad(torch.cumsum(sizes, 0), (1, 0))


def packed_groups_bytes(group_bits: Tensor, K: int, G: int | None) -> int:
    """Bytes of ``packed`` for a width map: the sum of ceil(len_g * b / 8) over the groups."""
    return int(_group_bytes(group_bits.cpu(), K, G).sum())


def zero_points_groups(group_bits: Tensor) -> Tensor:
    """The zero-points symmetric quantization implies: 2^(b-1) for each group's width b."""
    return (1 << (group_bits.to(torch.int32) - 1)).to(torch.uint8)


def quantize_groups(w2d: Tensor, group_bits: Tensor | np.ndarray,
                    config: QuantizerConfig) -> QuantizedWeight:
    """Quantize each group of a (out, K) matrix at its own width with the reference quantizer.

    The codes, scales and zero-points are those :func:`~mpsearch.kernels.quantize.
    fake_quantize_groups` computes, so dequantizing them gives its result bit for bit.
    ``bits`` of the result is the widest group's width.
    """
    out, K = w2d.shape
    gb = check_group_map(group_bits, out, K, config)
    wg = _grouped(w2d, config)
    flat = gb.reshape(-1).to(wg.device)
    codes = torch.zeros(wg.shape, dtype=torch.float32, device=wg.device)
    scale = torch.ones(flat.shape[0], dtype=torch.float32, device=wg.device)
    zero = torch.zeros(flat.shape[0], dtype=torch.float32, device=wg.device)
    for b in torch.unique(flat).tolist():  # a loop over the few widths, never over groups
        mask = flat == b
        sub = wg[mask]
        s, z = _choose_params(sub, b, config)
        codes[mask], scale[mask], zero[mask] = _codes(sub, s, z, b), s, z
    return QuantizedWeight(codes=codes.reshape(out, -1)[:, :K].to(torch.uint8).contiguous(),
                           scale=scale.reshape(out, -1).to(SCALE_DTYPES[config.scale_dtype]),
                           zero=zero.reshape(out, -1).to(torch.uint8), bits=int(gb.max()),
                           config=config)


def _classes(group_bits: Tensor, K: int, G: int | None):
    """(mask over (out, n_groups), width, length) for each width and group length present."""
    lengths = group_lengths(K, G)
    n = lengths.shape[0]
    for length in sorted(set(lengths.tolist())):
        cols = torch.from_numpy(lengths == length)
        for b in torch.unique(group_bits[:, cols]).tolist():
            yield (group_bits == b) & cols[None, :].expand(-1, n), int(b), int(length)


def _byte_index(offsets: Tensor, mask: Tensor, nbytes: int, device: torch.device) -> Tensor:
    starts = offsets[:-1][mask.reshape(-1)]
    return (starts[:, None] + torch.arange(nbytes)[None, :]).to(device)


def pack_groups(codes: Tensor, group_bits: Tensor, G: int | None) -> Tensor:
    """Pack (out, K) uint8 codes, group (r, g) at ``group_bits[r, g]`` bits (layout above)."""
    out, K = codes.shape
    gb = group_bits.cpu()
    n = gb.shape[1]
    width = int(group_lengths(K, G)[0])
    if codes.numel():
        limit = (1 << gb.to(torch.int64)).to(codes.device).repeat_interleave(width, 1)[:, :K]
        if bool((codes.to(torch.int64) >= limit).any()):
            raise DataError("Each code must lie in [0, 2^b - 1] for its group's width b, but some "
                            "exceed it. Pack the codes with the width map they were made with.")
    offsets = group_offsets(gb, K, G)
    packed = torch.zeros(int(offsets[-1]), dtype=torch.uint8, device=codes.device)
    grouped = F.pad(codes, (0, n * width - K)).view(out, n, width)
    for mask, b, length in _classes(gb, K, G):
        part = _pack_tensor(grouped[mask.to(codes.device)][:, :length].contiguous(), b)
        packed[_byte_index(offsets, mask, part.shape[1], codes.device)] = part
    return packed


def unpack_groups(packed: Tensor, group_bits: Tensor, K: int, G: int | None) -> Tensor:
    """The (out, K) uint8 codes of a per-group packed weight; inverse of :func:`pack_groups`."""
    gb = group_bits.cpu()
    out, n = gb.shape
    offsets = group_offsets(gb, K, G)
    if packed.dim() != 1 or packed.dtype != torch.uint8 or packed.shape[0] != int(offsets[-1]):
        raise DataError(f"`packed` must be a 1-D uint8 tensor of {int(offsets[-1])} bytes for this "
                        f"width map, but got {packed.dtype} {tuple(packed.shape)}. Pass the bytes "
                        f"pack_groups made with the same map, K and G.")
    width = int(group_lengths(K, G)[0])
    grouped = torch.zeros(out, n, width, dtype=torch.uint8, device=packed.device)
    for mask, b, length in _classes(gb, K, G):
        nbytes = -(-length * b // 8)
        part = packed[_byte_index(offsets, mask, nbytes, packed.device)]
        grouped[mask.to(packed.device), :length] = _unpack_tensor(part, b, length)
    return grouped.view(out, n * width)[:, :K].contiguous()


def dequantize_groups(packed: Tensor, scale: Tensor, zero: Tensor, group_bits: Tensor, K: int,
                      G: int | None) -> Tensor:
    """The float32 (out, K) weight ``(code - zero) * scale`` of each group (reference formula)."""
    codes = unpack_groups(packed, group_bits, K, G).to(torch.float32)
    out, n = scale.shape
    width = int(group_lengths(K, G)[0])
    grouped = F.pad(codes, (0, n * width - K)).view(out, n, width)
    w = (grouped - zero.to(torch.float32)[..., None]) * scale.to(torch.float32)[..., None]
    return w.reshape(out, n * width)[:, :K].contiguous()

