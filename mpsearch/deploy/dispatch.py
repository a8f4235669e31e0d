"""Which kernel a packed layer runs for a call, on the ``"numba"`` backend (CPU).

Measured on 2 cores (one process, min of 20 calls; 2048 x 2048 and 1536 x 384 weights, 2-8
bits): a float32 matmul of B rows costs ~0.34 (resp. 0.047) ms per row, the fused packed GEMM
~0.9 (0.12) ms per row, and decoding the whole weight ~2-3 (0.2-0.4) ms once. So:

* one row (a decoded token, a batch-1 head): the prepared GEMV of
  :class:`~mpsearch.kernels.numba_cpu.GemvWeight`, table lookups at 2/3/4 bits on AVX-512, the
  row kernel otherwise; it is prepared once per layer (:func:`prepare`) and dropped when the
  buffers are reloaded;
* fewer than :data:`DEQUANT_ROWS` rows: the fused packed GEMM;
* more rows, and every convolution: the weight decoded into a reused scratch buffer
  (:func:`mpsearch.kernels.dequant.scratch`), then PyTorch's float op, so a convolution pays no
  im2col copy. The packed bytes stay the only stored copy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mpsearch.kernels.dequant import dequantize_into, scratch
from mpsearch.kernels.numba_cpu import GemvWeight

DEQUANT_ROWS = 8  # from this many activation rows on, decode the weight and run the float op
ROUTED = "numba"  # the backend whose calls are routed here


def prepare(unit: nn.Module) -> GemvWeight | None:
    """The batch-1 weight of a packed ``unit``, built once and kept (None off the numba
    backend); :func:`~mpsearch.deploy.apply.apply` and :func:`~mpsearch.deploy.export.load`
    call it, so the first decoded token does not pay for it."""
    ptr, gemv = unit.__dict__.get("_gemv", (None, None))
    if ptr != unit.packed.data_ptr():  # never built, or the buffers moved (``.to``, assign)
        gemv = None
        if unit.backend == ROUTED and unit.packed.device.type == "cpu":
            gemv = GemvWeight(unit.packed, unit.scale, unit.zero_points(), unit.bits, unit.K,
                              unit.G)
        unit.__dict__["_gemv"] = (unit.packed.data_ptr(), gemv)
    return gemv


def forget(unit: nn.Module) -> None:
    """Drop the prepared weight (its buffers changed, or the backend did)."""
    unit.__dict__.pop("_gemv", None)


def dense_weight(unit: nn.Module, x: Tensor) -> Tensor:
    """The (out, K) float32 weight for one float op on ``x``: in the shared scratch buffer,
    unless autograd may keep it for a backward pass (then a fresh tensor)."""
    fresh = torch.is_grad_enabled() and x.requires_grad
    if unit.packed.device.type != "cpu" or unit.backend != ROUTED:
        from mpsearch.kernels.backends import get_backend

        return get_backend(unit.backend).op("dequantize")(
            unit.packed, unit.scale, unit.zero_points(), unit.bits, unit.K, unit.G)
    n = unit.out_features * unit.K
    out = None if fresh else scratch(n, unit.packed.device).view(unit.out_features, unit.K)
    return dequantize_into(unit.packed, unit.scale, unit.zero_points(), unit.bits, unit.K,
                           unit.G, out)


def linear(unit: nn.Module, x2d: Tensor) -> Tensor:
    """(B, K) float32 -> (B, out) float32 on the kernel that suits B (see the module doc)."""
    rows = x2d.shape[0]
    if rows == 1 and (gemv := prepare(unit)) is not None:
        return torch.from_numpy(gemv(x2d[0].detach().contiguous().numpy())).reshape(1, -1)
    if rows < DEQUANT_ROWS:
        return unit._matmul(x2d)
    return x2d @ dense_weight(unit, x2d).T


__all__ = ["DEQUANT_ROWS", "dense_weight", "forget", "linear", "prepare"]
