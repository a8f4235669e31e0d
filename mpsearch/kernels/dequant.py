"""Dequantize a packed weight into a reused float32 buffer, for layers that then call
PyTorch's own float op (``F.conv2d``, ``F.linear``) instead of multiplying packed codes.

Why: a large batch (or a convolution, whose im2col matrix is far larger than its weight) runs
fastest on PyTorch's float kernels; decoding the weight once per call costs 0.07-0.45 ns per
weight (2 cores, by width), and writing it into one buffer that every layer reuses keeps the float
copy transient, so the model stays its packed size between calls.

:func:`dequantize_into` is bit-exact with :func:`mpsearch.kernels.quantize.dequantize` (Numba
when installed, the reference formula otherwise). :func:`scratch` hands out the reused buffer
(one per thread and device, grown to the largest request).

>>> import numpy as np, torch
>>> from mpsearch.kernels.packing import pack
>>> p = torch.from_numpy(pack(np.array([[0, 1, 2, 3]], np.uint8), 2))
>>> dequantize_into(p, torch.ones(1, 1), torch.ones(1, 1, dtype=torch.uint8), 2, 4, None).tolist()
[[-1.0, 0.0, 1.0, 2.0]]
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from mpsearch.core.errors import DataError
from mpsearch.kernels._operands import check_operands
from mpsearch.kernels.numba_cpu import _numba_module, is_available

_LOCAL = threading.local()
PARALLEL_ELEMENTS = 1 << 20  # weights at least this large are decoded on all Numba threads


def scratch(numel: int, device: torch.device) -> Tensor:
    """A float32 buffer of at least ``numel`` elements, reused by every later call of this
    thread on ``device`` (the caller must be done with the previous contents)."""
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:
        pool = _LOCAL.pool = {}
    buf = pool.get(device)
    if buf is None or buf.numel() < numel:
        buf = pool[device] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf[:numel]


def scratch_buffer(device: torch.device) -> Tensor | None:
    """This thread's whole buffer on ``device`` (None before the first :func:`scratch`): a
    caller that keeps views of the buffer checks with it that they are still current."""
    pool = getattr(_LOCAL, "pool", None)
    return None if pool is None else pool.get(device)


def release_scratch() -> None:
    """Drop this thread's scratch buffers (they are re-created on the next call). Packed
    layers keep a view of the buffer they last decoded into until their next call, so the
    memory is freed once every such layer has run again or been deleted."""
    _LOCAL.pool = {}


def dequantize_into(packed: Tensor, scale: Tensor, zero: Tensor, bits: int, K: int,
                    G: int | None, out: Tensor | None = None) -> Tensor:
    """The float32 (rows, K) weight ``(code - zero) * scale``, written into ``out`` if given
    (a contiguous float32 tensor of that shape on the weight's device) and returned."""
    shape = check_operands(packed, scale, zero, bits, K, G)
    if out is None:
        out = torch.empty(shape.out, shape.K, dtype=torch.float32, device=packed.device)
    elif (tuple(out.shape) != (shape.out, shape.K) or out.dtype != torch.float32
          or not out.is_contiguous() or out.device != packed.device):
        raise DataError(f"`out` must be a contiguous float32 tensor of shape {(shape.out, shape.K)} "
                        f"on {packed.device}, but got {out.dtype} {tuple(out.shape)} on "
                        f"{out.device}. Pass out=None to allocate one.")
    if shape.out == 0:
        return out
    if packed.device.type == "cpu" and is_available():
        kernel = _numba_module("_numba_dequant").make_dequantize(
            shape.bits, out.numel() >= PARALLEL_ELEMENTS)
        kernel(packed.numpy(), scale.to(torch.float32).numpy(), zero.numpy(), shape.group,
               out.numpy())
        return out
    from mpsearch.kernels.backends import reference_dequantize

    return out.copy_(reference_dequantize(packed, scale, zero, bits, K, G))


__all__ = ["dequantize_into", "release_scratch", "scratch", "scratch_buffer"]
