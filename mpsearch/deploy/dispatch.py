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
  im2col copy. The packed bytes stay the only stored copy. A Linear of more than
  :data:`TILE_ELEMENTS` weights (an LM head) decodes a tile of rows at a time, so the buffer
  never holds a whole large float weight.

Layers with per-group widths (:mod:`mpsearch.deploy.group_modules`) run one row on the
table-lookup GEMV of their widest width when it is at most 4 bits (the codes repacked at that
width once, see :func:`_group_weight`), else on the per-group kernel
(:class:`~mpsearch.kernels.groups_cpu.GroupWeight`), and every other call on the decoded
weight.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mpsearch.kernels.dequant import PARALLEL_ELEMENTS, dequantize_into, scratch, scratch_buffer
from mpsearch.kernels.numba_cpu import GemvWeight, _numba_module, is_available
from mpsearch.kernels.packing import pack

DEQUANT_ROWS = 8  # from this many activation rows on, decode the weight and run the float op
TILE_ELEMENTS = 1 << 22  # a Linear larger than this decodes for a block a tile of rows at a time
ROUTED = "numba"  # the backend whose calls are routed here
CPU = torch.device("cpu")


def prepare(unit: nn.Module) -> GemvWeight | None:
    """The batch-1 weight of a packed ``unit``, built once and kept (None off the numba
    backend, and for convolutions, which never run it); :func:`~mpsearch.deploy.apply.apply` and :func:`~mpsearch.deploy.export.load`
    call it, so the first decoded token does not pay for it."""
    ptr, gemv = unit.__dict__.get("_gemv", (None, None))
    if ptr != unit.packed.data_ptr():  # never built, or the buffers moved (``.to``, assign)
        gemv = None
        if unit.backend != ROUTED or unit.packed.device.type != "cpu":
            pass
        elif unit.kind == "conv2d":  # never one row: per-group convs keep only their decoder
            gemv = _group_decoder(unit) if _grouped(unit) else None
        elif _grouped(unit):
            gemv = _group_weight(unit)
        else:
            gemv = GemvWeight(unit.packed, unit.scale, unit.zero_points(), unit.bits, unit.K,
                              unit.G)
        unit.__dict__["_gemv"] = (unit.packed.data_ptr(), gemv)
        unit.__dict__["_row"] = (unit._buffers["packed"], gemv) if gemv is not None \
            and unit.kind != "conv2d" else None
    return gemv


def one_row(unit: nn.Module, x: Tensor) -> Tensor | None:
    """``unit``'s output for one float32 CPU input row ``x`` (..., K) on its prepared weight,
    without bias; None when that does not apply (not prepared, buffers replaced, more rows,
    another dtype or device, autograd). Decoding a token calls this ~200 times (SmolLM2), so
    it does only the checks that matter before the kernel."""
    row = unit.__dict__.get("_row")
    if (row is None or row[0] is not unit._buffers["packed"] or x.dtype != torch.float32
            or not x.is_cpu or x.requires_grad or x.numel() != unit.K):
        return None
    return torch.from_numpy(row[1](x.reshape(unit.K).numpy()))


def _grouped(unit: nn.Module) -> bool:
    """Whether ``unit`` has per-group widths (:mod:`mpsearch.deploy.group_modules`)."""
    return "group_bits" in unit._buffers


def _group_weight(unit: nn.Module) -> object:
    """The batch-1 weight of a per-group layer. Widths of at most 4 bits run on the uniform
    table-lookup kernel of the widest width present, where it applies: a b-bit code with its
    group's scale and zero-point is also a valid code of any wider width (the same
    ``(code - zero) * scale``), so the codes are repacked at that width, once. On 2 cores that
    is 2-2.8x faster than the per-group kernel (SmolLM2's 576 x 576 ... 1536 x 576 layers with
    groups of 128 at 2, 3 and 4 bits: 27-47 us against 63-109 us). Other layers run the
    per-group kernel."""

    widest = max(unit.widths)
    if widest <= 4 and _numba_module("_numba_lut").is_supported(widest, unit.K, unit.G):
        gemv = GemvWeight(pack(unit.codes(), widest), unit.scale, unit.zero_points(), widest,
                          unit.K, unit.G)
        if gemv.kernel.startswith("lut"):
            return gemv
    return _group_decoder(unit)


def _group_decoder(unit: nn.Module) -> object:
    """The per-group weight's Numba operands (the per-group batch-1 kernel and the decoder)."""
    from mpsearch.kernels.groups_cpu import GroupWeight

    return GroupWeight(unit.packed, unit.scale, unit.zero_points(), unit.group_bits, unit.K,
                       unit.G)


def forget(unit: nn.Module) -> None:
    """Drop the prepared weight and decoder (the buffers changed, or the backend did)."""
    for key in ("_gemv", "_row", "_decoder", "_decoder16", "_dense"):
        unit.__dict__.pop(key, None)


def _decoder(unit: nn.Module, bf16: bool = False) -> tuple[object, tuple[object, ...]]:
    """The Numba decode call for ``unit`` and its numpy operands (all but the output), built
    once: a call then skips validation and conversions, which at batch 1 cost more than the
    decoding. Per-group layers decode with their prepared :class:`GroupWeight` (its output
    array picks float32 or bfloat16); ``bf16`` picks the kernel that writes bfloat16 bit
    patterns."""
    key = (unit.packed.data_ptr(), unit.scale.data_ptr())
    slot = "_decoder16" if bf16 else "_decoder"
    cached = unit.__dict__.get(slot)
    if cached is None or cached[0] != key:
        if _grouped(unit):
            gw = prepare(unit)
            gw = gw if hasattr(gw, "dequantize_into") else _group_decoder(unit)
            cached = (key, gw.dequantize_into, ())  # type: ignore[union-attr]
        else:
            dequantize_into(unit.packed[:1], unit.scale[:1], unit.zero_points()[:1], unit.bits,
                            unit.K, unit.G)  # validates, and compiles the kernel
            kernel = _numba_module("_numba_dequant").make_dequantize(
                unit.bits, unit.out_features * unit.K >= PARALLEL_ELEMENTS, bf16)
            group = unit.K if unit.G is None or unit.G >= unit.K else unit.G
            cached = (key, kernel, (unit.packed.numpy(), unit.scale.to(torch.float32).numpy(),
                                    unit.zero_points().numpy(), group))
        unit.__dict__[slot] = cached
    return cached[1], cached[2]


def _numba_cpu(unit: nn.Module) -> bool:
    """Whether ``unit`` decodes with the Numba kernels: the numba backend, buffers on the CPU,
    Numba installed (otherwise the backend's own decoder)."""
    return unit.backend == ROUTED and unit.packed.device.type == "cpu" and is_available()


def dense_weight(unit: nn.Module, x: Tensor, shape: tuple[int, ...] | None = None) -> Tensor:
    """The weight for one float op on ``x``, as (out, K) or viewed as ``shape``: float32, or
    bfloat16 for bfloat16 inputs (decoded straight to it, rounded to nearest even); in the
    shared scratch buffer, unless autograd may keep it for a backward pass (then a fresh
    tensor)."""
    grad = torch.is_grad_enabled() and x.requires_grad
    half = x.dtype == torch.bfloat16
    fast = unit.__dict__.get("_dense")
    if (fast is not None and not grad and fast[0] is unit._buffers["packed"]
            and fast[1] is scratch_buffer(CPU) and fast[2] == (shape, half)):
        fast[3](*fast[4])  # a batch-1 convolution is ~20 of these: each microsecond shows
        return fast[5]
    view = shape or (unit.out_features, unit.K)
    if not _numba_cpu(unit):
        if _grouped(unit):
            return unit.dequantized().view(view)
        from mpsearch.kernels.backends import get_backend

        return get_backend(unit.backend).op("dequantize")(
            unit.packed, unit.scale, unit.zero_points(), unit.bits, unit.K, unit.G).view(view)
    numel = unit.out_features * unit.K
    if half:
        out = torch.empty(numel, dtype=torch.bfloat16) if grad else \
            scratch((numel + 1) // 2, CPU).view(torch.bfloat16)[:numel]
        target = out.view(torch.int16).numpy().view(np.uint16)
    else:
        out = torch.empty(numel) if grad else scratch(numel, CPU)
        target = out.numpy()
    kernel, operands = _decoder(unit, half)
    args = (*operands, target.reshape(unit.out_features, unit.K))
    kernel(*args)
    if not grad:  # the same call, prebound, for the next time
        unit.__dict__["_dense"] = (unit._buffers["packed"], scratch_buffer(CPU), (shape, half),
                                   kernel, args, out.view(view))
    return out.view(view)


def linear(unit: nn.Module, x2d: Tensor, bias: Tensor | None = None) -> Tensor:
    """(B, K) -> (B, out) plus ``bias``, on the kernel that suits B (see the module doc). The
    decoded-weight path computes in x's dtype (bfloat16 inputs run a bfloat16 matmul, the
    weight rounded to it) and adds the bias inside the matmul; the packed kernels compute in
    float32."""
    rows = x2d.shape[0]
    if rows == 1 and (gemv := prepare(unit)) is not None:
        y = torch.from_numpy(gemv(x2d[0].detach().to(torch.float32).contiguous().numpy()))
        y = y.reshape(1, -1)
    elif rows < DEQUANT_ROWS and not _grouped(unit):
        y = unit._matmul(x2d.to(torch.float32))
    elif (unit.out_features * unit.K > TILE_ELEMENTS and x2d.dtype in (torch.float32, torch.bfloat16)
          and not (torch.is_grad_enabled() and x2d.requires_grad) and _numba_cpu(unit)):
        return _tiled(unit, x2d, bias)
    else:
        w = dense_weight(unit, x2d).to(x2d.dtype)  # .to returns the tensor itself when it matches
        return x2d @ w.T if bias is None else torch.addmm(bias.to(x2d.dtype), x2d, w.T)
    return y if bias is None else y + bias.to(torch.float32)


def _tiled(unit: nn.Module, x2d: Tensor, bias: Tensor | None) -> Tensor:
    """``x2d @ W.T`` plus ``bias`` for a large weight (an LM head, a token table's tied layer),
    decoded :data:`TILE_ELEMENTS` weights at a time into the scratch buffer, so the buffer stays
    16 MiB instead of the whole float weight (SmolLM2's head: 113 MB). In x's dtype (float32 or
    bfloat16), as the whole-weight path computes. The tiles decode on the calling thread: with
    a Numba parallel region before each tile's matmul, SmolLM2's head on 256 tokens took
    139-145 ms instead of the whole weight's 119-125; serially, 121-130."""
    half = x2d.dtype == torch.bfloat16
    step = max(1, TILE_ELEMENTS // unit.K)
    numel = min(step, unit.out_features) * unit.K
    buf = scratch((numel + 1) // 2, CPU).view(torch.bfloat16)[:numel] if half else scratch(numel, CPU)
    target = buf.view(torch.int16).numpy().view(np.uint16) if half else buf.numpy()
    kernel, operands = _decoder(unit, half)
    if operands:  # decode on this thread: Numba's threads spinning after a parallel region slow
        kernel = _numba_module("_numba_dequant").make_dequantize(unit.bits, False, half)  # torch's
    b = None if bias is None else bias.to(x2d.dtype)
    y = torch.empty(x2d.shape[0], unit.out_features, dtype=x2d.dtype)
    for r0 in range(0, unit.out_features, step):
        r1 = min(unit.out_features, r0 + step)
        tile = target[:(r1 - r0) * unit.K].reshape(r1 - r0, unit.K)
        if operands:  # one width: the rows' codes, scales and zero-points
            kernel(*(a[r0:r1] for a in operands[:3]), operands[3], tile)
        else:  # per-group widths: the prepared decoder, from row r0
            kernel(tile, r0, parallel=False)
        w = buf[:(r1 - r0) * unit.K].view(r1 - r0, unit.K)
        if b is None:  # straight into y's columns (BLAS writes with y's row stride)
            torch.mm(x2d, w.T, out=y[:, r0:r1])
        else:
            torch.addmm(b[r0:r1], x2d, w.T, out=y[:, r0:r1])
    return y


__all__ = ["DEQUANT_ROWS", "TILE_ELEMENTS", "dense_weight", "forget", "linear", "one_row", "prepare"]
