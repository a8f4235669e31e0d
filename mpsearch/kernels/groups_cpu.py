"""Per-group mixed-width weights on CPU with Numba: batch-1 products and decoding.

:class:`GroupWeight` takes a weight in the layout of :mod:`mpsearch.kernels.packing_groups`
(codes of each group at its own width, one byte stream per row) and keeps the numpy operands a
call needs (row offsets, the widths present), so a call is one Numba dispatch. Batch-1
products run the 16-lane block kernel when groups are whole 128-code blocks (or one group per
row), the code-by-code kernel otherwise; larger batches decode the weight
(:meth:`GroupWeight.dequantize_into`) and run PyTorch's float op.

>>> import torch
>>> from mpsearch.core.config import QuantizerConfig
>>> from mpsearch.kernels.packing_groups import pack_groups, quantize_groups
>>> cfg = QuantizerConfig(group_size=128)
>>> w = torch.randn(4, 256); gb = torch.tensor([[2, 4]] * 4, dtype=torch.uint8)
>>> qw = quantize_groups(w, gb, cfg)
>>> gw = GroupWeight(pack_groups(qw.codes, gb, 128), qw.scale, qw.zero, gb, 256, 128)
>>> gw(np.ones(256, np.float32)).shape
(4,)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mpsearch.core.errors import DataError
from mpsearch.kernels._operands import kernel_scales
from mpsearch.kernels.dequant import PARALLEL_ELEMENTS
from mpsearch.kernels.numba_cpu import _TASKS_PER_THREAD, _numba_module, _numpy, _workers
from mpsearch.kernels.packing_groups import group_lengths, group_offsets

__all__ = ["GroupWeight"]
_F32 = np.dtype(np.float32)
_U16 = np.dtype(np.uint16)


class GroupWeight:
    """A per-group packed weight prepared once for Numba calls (arrays are shared, not copied).

    ``kernel`` says which batch-1 kernel runs: "blocks" (groups of whole 128-code blocks) or
    "codes" (any other group size).
    """

    def __init__(self, packed: Any, scale: Any, zero: Any, group_bits: Any, K: int,
                 G: int | None) -> None:
        gb = group_bits if isinstance(group_bits, torch.Tensor) else torch.as_tensor(group_bits)
        self.out, n = int(gb.shape[0]), int(gb.shape[1])
        self.K = int(K)
        self.G = int(group_lengths(self.K, G)[0])
        offsets = group_offsets(gb, self.K, G)
        self._packed = _numpy(packed, "packed", np.uint8)
        if self._packed.shape != (int(offsets[-1]),):
            raise DataError(f"`packed` must hold {int(offsets[-1])} bytes for this width map, but "
                            f"has shape {self._packed.shape}. Pack it with pack_groups.")
        self._row_off = offsets[::n].numpy().astype(np.int64)
        self._bits = _numpy(gb, "group_bits", np.uint8)
        self._scale = kernel_scales(_numpy(scale, "scale"))
        self._scale32 = _numpy(scale, "scale", np.float32)
        self._zero = _numpy(zero, "zero", np.uint8)
        self._present = np.zeros(9, np.bool_)
        self._present[np.unique(self._bits)] = True
        self.kernel = "blocks" if n == 1 or self.G % 128 == 0 else "codes"
        workers = _workers()
        self._workers = workers
        self._rows_per_task = max(1, -(-self.out // (workers * _TASKS_PER_THREAD)))
        self._module = _numba_module("_numba_groups")

    @property
    def nbytes(self) -> int:
        """Bytes of the stored operands (codes, width map, scales, zero-points)."""
        return sum(a.nbytes for a in (self._packed, self._bits, self._scale, self._zero))

    def __call__(self, x: Any) -> np.ndarray:
        """y (out,) float32 for x (K,) float32 numpy."""
        if type(x) is not np.ndarray or x.dtype is not _F32 or x.shape != (self.K,):
            x = _numpy(x, "x", np.float32)
            if x.shape != (self.K,):
                raise DataError(f"`x` must have shape ({self.K},), but got {x.shape}. Pass one "
                                f"activation vector of length K.")
        if self.out == 0:
            return np.empty(0, np.float32)
        if self.kernel == "blocks":
            return self._module.gemv(self._packed, self._row_off, self._bits, self._scale,
                                     self._zero, x, self.G, self._present, self._rows_per_task,
                                     self._workers)
        return self._module.gemv_any(self._packed, self._row_off, self._bits, self._scale32,
                                     self._zero, x, self.G)

    def dequantize_into(self, out: np.ndarray, start: int = 0,
                        parallel: bool | None = None) -> np.ndarray:
        """Write the weight's rows ``start .. start + len(out)`` (all of them by default) into
        ``out`` (C-contiguous, (rows, K)) and return it: float32, or, for a uint16 ``out``,
        bfloat16 bit patterns (rounded to nearest even). On Numba's threads if ``parallel``
        (by default: for outputs of at least ``PARALLEL_ELEMENTS`` weights)."""
        rows = out.shape[0] if out.ndim == 2 else -1
        if (out.ndim != 2 or out.shape[1] != self.K or not 0 <= start <= start + rows <= self.out
                or out.dtype not in (_F32, _U16) or not out.flags.c_contiguous):
            raise DataError(f"`out` must be a C-contiguous float32 (or uint16, for bfloat16) array "
                            f"of (rows, {self.K}) with rows {start}.. within the weight's "
                            f"{self.out}, but got {out.dtype} {out.shape}.")
        half = out.dtype == _U16
        if out.size >= PARALLEL_ELEMENTS if parallel is None else parallel:
            decode = self._module.dequantize_bf16 if half else self._module.dequantize
        else:
            decode = self._module.dequantize_serial_bf16 if half else self._module.dequantize_serial
        end = start + rows
        decode(self._packed, self._row_off[start:end], self._bits[start:end],
               self._scale32[start:end], self._zero[start:end], self.G, out)
        return out
