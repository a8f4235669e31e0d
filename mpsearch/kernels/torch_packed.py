"""Packed low-bit matmul with PyTorch tensor ops only: the portable backend (CPU, CUDA, ...).

Rows of the packed weight are processed in tiles: unpack the tile's codes
(:mod:`mpsearch.kernels.packing`), dequantize them to float32, multiply. Only one tile of float
weights exists at a time, so memory stays near the packed size. Everything stays on the device
of the inputs (no host round trip, no ``.numpy()``, no ``.item()``), so it runs on CUDA as is.
``use_compile=True`` wraps the per-tile work in :func:`torch.compile` (off by default: the first
call compiles for a while, and CPU compilation needs a C++ compiler).

>>> import torch
>>> from mpsearch.kernels.packing import pack
>>> codes = torch.full((2, 4), 3, dtype=torch.uint8)
>>> scale = torch.full((2, 1), 0.5, dtype=torch.float16); zero = torch.ones(2, 1, dtype=torch.uint8)
>>> packed_matmul(pack(codes, 2), scale, zero, torch.ones(4), bits=2, K=4, G=None)
tensor([4., 4.])
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from mpsearch.core.errors import DataError
from mpsearch.kernels._operands import PackedShape, check_activations, check_operands
from mpsearch.kernels.packing import _unpack_tensor, slot_planes

__all__ = ["dequantize_packed", "packed_matmul"]
_TILE_ELEMENTS = 1 << 20  # float32 weights per tile: 4 MB, fits in a CPU's L2/L3


def _tile_weight(packed: Tensor, scale: Tensor, zero: Tensor, bits: int, K: int, group: int,
                 n_groups: int) -> Tensor:
    """Float32 weights (rows, K) of a tile of packed rows, in natural order."""
    rows = packed.shape[0]
    codes = _unpack_tensor(packed, bits, K).to(torch.float32)
    s, z = scale.to(torch.float32), zero.to(torch.float32)
    if n_groups == 1:
        return (codes - z) * s
    pad = n_groups * group - K  # the last group may be partial
    grouped = F.pad(codes, (0, pad)).view(rows, n_groups, group)
    w = (grouped - z.unsqueeze(-1)) * s.unsqueeze(-1)
    return w.view(rows, n_groups * group)[:, :K]


def _plane_geometry(shape: PackedShape) -> tuple[int, int] | None:
    """(codes per chunk c, columns per slot plane), or None if groups split chunks."""
    c = 1 if shape.bits == 8 else (8 // shape.bits if 8 % shape.bits == 0 else 8)
    if shape.n_groups == 1:
        return c, -(-shape.K // c)
    if shape.group % c:
        return None
    return c, shape.n_groups * (shape.group // c)


def _slot_major_x(x2d: Tensor, c: int, width: int) -> Tensor:
    """``xs[:, j*width + i] = x[:, c*i + j]`` (zero past K): x in the order of the planes."""
    padded = F.pad(x2d, (0, c * width - x2d.shape[1]))
    return padded.view(-1, width, c).transpose(1, 2).reshape(-1, c * width)


def _tile_matmul_planes(packed: Tensor, scale: Tensor, zero: Tensor, xs: Tensor, bits: int,
                        K: int, group: int, n_groups: int) -> Tensor:
    """``x @ W_tile.T`` with W dequantized slot plane by slot plane (no interleaving)."""
    rows = packed.shape[0]
    c, planes = slot_planes(packed, bits, K)
    width = xs.shape[1] // c
    w = torch.empty((rows, c, width), dtype=torch.float32, device=packed.device)
    nchunk = planes[0].shape[1]
    if width > nchunk:
        w[:, :, nchunk:] = 0  # columns past the last code (x is 0 there too)
    for j, plane in enumerate(planes):
        w[:, j, :nchunk] = plane  # converts to float32 while copying
    per = w.view(rows, c, n_groups, width // n_groups)
    per.sub_(zero.to(torch.float32)[:, None, :, None]).mul_(scale.to(torch.float32)[:, None, :, None])
    return xs @ w.view(rows, c * width).T


def _tile_matmul(packed: Tensor, scale: Tensor, zero: Tensor, x2d: Tensor, bits: int, K: int,
                 group: int, n_groups: int) -> Tensor:
    return x2d @ _tile_weight(packed, scale, zero, bits, K, group, n_groups).T


@lru_cache(maxsize=2)
def _compiled(planes: bool) -> Callable[..., Tensor]:
    return torch.compile(_tile_matmul_planes if planes else _tile_matmul, dynamic=False)


def _check_tensors(**arrays: object) -> torch.device:
    devices = set()
    for name, a in arrays.items():
        if not isinstance(a, Tensor):
            raise DataError(f"`{name}` must be a torch.Tensor for the PyTorch backend, but got "
                            f"{type(a).__name__}. Convert it with torch.from_numpy().")
        devices.add(a.device)
    if len(devices) != 1:
        raise DataError(f"All operands must be on one device, but got {sorted(map(str, devices))}. "
                        f"Move them with .to(device) first.")
    return devices.pop()


def dequantize_packed(packed: Tensor, scale: Tensor, zero: Tensor, bits: int, K: int,
                      G: int | None) -> Tensor:
    """The float32 weight (out, K) of a packed weight: ``(code - zero) * scale`` per group."""
    shape = check_operands(packed, scale, zero, bits, K, G)
    _check_tensors(packed=packed, scale=scale, zero=zero)
    return _tile_weight(packed, scale, zero, shape.bits, shape.K, shape.group, shape.n_groups)


def packed_matmul(packed: Tensor, scale: Tensor, zero: Tensor, x: Tensor, bits: int, K: int,
                  G: int | None, *, use_compile: bool = False) -> Tensor:
    """``x @ W.T`` for activations ``x`` (..., K) and a packed W; returns (..., out) float32.

    ``packed`` (out, ceil(K*bits/8)) uint8 from :func:`mpsearch.kernels.packing.pack`,
    ``scale`` (out, n_groups) float16 (or float32/bfloat16), ``zero`` (out, n_groups) uint8,
    ``G`` the group size along K (None: one group per row). All on one device; any batch shape.
    """
    shape = check_operands(packed, scale, zero, bits, K, G)
    device = _check_tensors(packed=packed, scale=scale, zero=zero, x=x)
    check_activations(x, shape.K)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, shape.K).to(torch.float32)
    y = torch.empty((x2d.shape[0], shape.out), dtype=torch.float32, device=device)
    if y.numel() == 0:
        return y.reshape(*lead, shape.out)
    geometry = _plane_geometry(shape)
    if geometry is not None:
        xin, plain = _slot_major_x(x2d, *geometry), _tile_matmul_planes
    else:  # a group size that splits chunks: unpack to natural order instead
        xin, plain = x2d, _tile_matmul
    fn = _compiled(geometry is not None) if use_compile else plain
    step = max(1, _TILE_ELEMENTS // shape.K)
    for r0 in range(0, shape.out, step):
        r1 = min(shape.out, r0 + step)
        y[:, r0:r1] = fn(packed[r0:r1], scale[r0:r1], zero[r0:r1], xin, shape.bits, shape.K,
                         shape.group, shape.n_groups)
    return y.reshape(*lead, shape.out)
