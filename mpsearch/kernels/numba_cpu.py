"""Fused dequantize-and-multiply on CPU with Numba: the fast path for packed low-bit weights.

``gemv`` (one activation vector) and ``gemm`` (a small batch) read the packed codes directly,
never materializing the float weight, so they move ``bits/32`` of the bytes a float32 matmul
moves. Rows run in parallel on Numba's threads (``numba.set_num_threads``), which claim small
tasks of rows from a shared counter: a thread that wakes late (``OMP_WAIT_POLICY=PASSIVE``) or
shares its core with other work just takes fewer. Each row is computed by one thread, in
float32 without fast-math, in a fixed order, so results are deterministic on a machine, for
any thread count. A call is one Numba dispatch; at batch 1 its fixed cost (validation, thread
wake-up) is a visible part of the time, so the Python side is kept short. Numba is imported on
first use; without it these functions raise :class:`~mpsearch.core.errors.MissingDependencyError`
(use :mod:`mpsearch.kernels.torch_packed`).

>>> import numpy as np
>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((2, 4), 3, np.uint8)
>>> scale = np.full((2, 1), 0.5, np.float16); zero = np.full((2, 1), 1, np.uint8)
>>> gemv(pack(codes, 2), scale, zero, np.ones(4, np.float32), bits=2, K=4, G=None)
array([4., 4.], dtype=float32)
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mpsearch.core.errors import DataError, MissingDependencyError
from mpsearch.kernels._operands import check_activations, check_operands, kernel_scales

__all__ = ["GemvWeight", "gemm", "gemv", "is_available"]
requires = ("numba",)
_F32 = np.dtype(np.float32)
_TASKS_PER_THREAD = 16  # row tasks per thread, claimed in turn (a late or busy thread takes fewer)


def is_available() -> bool:
    """Whether numba is installed (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


@cache
def _numba_module(name: str) -> ModuleType:
    """``mpsearch.kernels.<name>``, a module that imports numba; without numba,
    :class:`MissingDependencyError`."""
    if not is_available():
        raise MissingDependencyError(
            "The Numba CPU kernels need the `numba` package, which is not installed. Install it "
            "with `pip install numba`, or use mpsearch.kernels.torch_packed.packed_matmul.")
    return importlib.import_module(f"mpsearch.kernels.{name}")


@cache
def _kernel(kind: str, bits: int) -> Any:
    if kind == "gemv":
        return _numba_module("_numba_kernels").make_gemv(bits)
    return _numba_module("_numba_gemm").make_gemm(bits)


def _check_ndim(x: Any, ndim: int, what: str, other: str) -> None:
    """``x`` must have ``ndim`` dimensions (``what`` names it; ``other`` is the call to use
    instead)."""
    if len(getattr(x, "shape", ())) != ndim:
        raise DataError(f"{what} must be {ndim}-D {'(K,)' if ndim == 1 else '(B, K)'}, but got "
                        f"shape {tuple(getattr(x, 'shape', ()))}. Use {other}.")


def _numpy(a: Any, name: str, dtype: type | None = None) -> np.ndarray:
    """A C-contiguous numpy array (of ``dtype`` if given) from numpy or a CPU tensor."""
    if isinstance(a, torch.Tensor):
        if a.device.type != "cpu":
            raise DataError(f"The Numba kernels run on CPU, but `{name}` is on {a.device}. Use "
                            f"mpsearch.kernels.torch_packed.packed_matmul for other devices.")
        if a.dtype == torch.bfloat16:
            a = a.float()
        a = a.detach().numpy()
    return np.ascontiguousarray(a, dtype=dtype)


@cache
def _workers() -> int:
    """Parallel workers per call: Numba's pool size, read once.

    Workers claim row tasks from a shared counter, so any ``numba.set_num_threads`` value works
    (an extra worker on a thread finds no task left). Not ``numba.get_num_threads()`` per call:
    it takes two locks, ~15 us when the caches are cold.
    """
    import numba

    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def _run(packed: Any, scale: Any, zero: Any, x: Any, bits: Any, K: Any, G: Any,
         kind: str) -> np.ndarray:
    """Validate, convert to numpy, run the kernel in one Numba call.

    Returns y (out,) for ``kind="gemv"`` (x is (K,)), else Y (B, out); float32.
    Kept short: at batch 1 its Python work is a visible part of the call.
    """
    shape = check_operands(packed, scale, zero, bits, K, G)
    check_activations(x, shape.K)
    xa = _numpy(x, "x", np.float32)
    if kind == "gemm":
        xa = xa.reshape(-1, shape.K)
    if xa.size == 0 or shape.out == 0:
        return np.empty(xa.shape[:-1] + (shape.out,), np.float32)
    _numba_module("_numba_kernels")  # raises MissingDependencyError without numba
    p, s, z = _numpy(packed, "packed"), kernel_scales(_numpy(scale, "scale")), _numpy(zero, "zero")
    # Block mode: one group covers each 128-code block; lane mode: each eight-code chunk.
    lane_mode = shape.n_groups > 1 and shape.group % 128 != 0
    if lane_mode and shape.group % 8:  # a chunk would straddle groups
        x2d = xa.reshape(-1, shape.K)
        y = np.empty((x2d.shape[0], shape.out), np.float32)
        _numba_module("_numba_gemm").gemm_any_group(p, s, z, x2d, shape.bits, shape.group, y)
        return y if kind == "gemm" else y[0]
    workers = _workers()
    rows_per_task = -(-shape.out // (workers * _TASKS_PER_THREAD))
    if kind == "gemm":  # whole tiles of rows
        tile = _numba_module("_numba_gemm").ROW_TILE
        rows_per_task = -(-rows_per_task // tile) * tile
    return _kernel(kind, shape.bits)(p, s, z, xa, shape.group, lane_mode, rows_per_task, workers)


def _like_x(y: np.ndarray, x: Any) -> Any:
    return torch.from_numpy(y) if isinstance(x, torch.Tensor) else y


def gemv(packed: Any, scale: Any, zero: Any, x: Any, bits: int, K: int,
         G: int | None) -> Any:
    """y = W x for one activation vector ``x`` (K,), W given packed; returns y (out,) float32.

    ``packed`` (out, ceil(K*bits/8)) uint8 from :func:`mpsearch.kernels.packing.pack`,
    ``scale`` (out, n_groups) float16 (or float32/bfloat16), ``zero`` (out, n_groups) uint8,
    ``G`` the group size along K (None: one group per row). numpy or CPU torch inputs; the
    result has the kind of ``x``.
    """
    _check_ndim(x, 1, "`x` for gemv", "gemm for a batch")
    return _like_x(_run(packed, scale, zero, x, bits, K, G, "gemv"), x)


def gemm(packed: Any, scale: Any, zero: Any, X: Any, bits: int, K: int,
         G: int | None) -> Any:
    """Y = X W^T for a batch ``X`` (B, K), W given packed; returns Y (B, out) float32.

    Arguments as for :func:`gemv`. Each block of codes is decoded once and used for every
    batch row, so it pays off for small batches (B up to ~64); the result has the kind of X.
    """
    _check_ndim(X, 2, "`X` for gemm", "gemv for one vector")
    return _like_x(_run(packed, scale, zero, X, bits, K, G, "gemm"), X)


class GemvWeight:
    """A packed weight prepared once for batch-1 products ``y = W x``, on the fastest kernel.

    On an AVX-512 CPU, 2-, 3- and 4-bit weights whose K and G are multiples of 16 (32 at 3
    bits) are rearranged for the table-lookup kernels (:mod:`mpsearch.kernels._numba_lut`: 16
    rows in the vector lanes, a 2-bit plane per ``vpermps`` pair index, plus a 1-bit plane at
    3 bits or a second 2-bit plane at 4): the same bytes (codes, scales, zero-points), stored
    in the order the kernel reads them (one stream per task of up to 32 tiles of 16 rows, sized
    for Numba's thread count at preparation). Every other weight keeps its row layout and runs
    :func:`gemv`. ``kernel`` says which: "lut2", "lut3", "lut4" or "rows".

    >>> import numpy as np
    >>> from mpsearch.kernels.packing import pack
    >>> w = GemvWeight(pack(np.full((2, 16), 3, np.uint8), 2), np.full((2, 1), 0.5, np.float16),
    ...                np.ones((2, 1), np.uint8), bits=2, K=16, G=None)
    >>> w(np.ones(16, np.float32))
    array([16., 16.], dtype=float32)
    """

    def __init__(self, packed: Any, scale: Any, zero: Any, bits: int, K: int,
                 G: int | None) -> None:
        self.shape = check_operands(packed, scale, zero, bits, K, G)
        self._G = G
        self._args = (_numpy(packed, "packed"), _numpy(scale, "scale"), _numpy(zero, "zero"))
        self._lut, self.kernel, self._bound = None, "rows", None
        lut = _numba_module("_numba_lut")
        if self.shape.out and lut.is_supported(self.shape.bits, self.shape.K, G):
            workers = _workers()
            self._lut = lut.prepare_lut(*self._args, self.shape.bits, self.shape.K, G,
                                        tiles_per_task=_lut_tiles_per_task(self.shape.out,
                                                                           workers))
            self._bound = lut.bound(self._lut, workers)
            self._args, self.kernel = (), f"lut{self.shape.bits}"

    @property
    def nbytes(self) -> int:
        """Bytes of the prepared arrays (codes, scales, zero-points)."""
        arrays = self._args if self._lut is None else self._lut[:3]
        return sum(a.nbytes for a in arrays)

    def __call__(self, x: Any) -> Any:
        """y (out,) float32 for x (K,); numpy or CPU torch, the result has the kind of x."""
        if (self._bound is not None and type(x) is np.ndarray and x.dtype is _F32
                and x.shape == (self.shape.K,) and x.strides == (4,)):
            return self._bound(x)  # the common case straight to the kernel (see bind)
        _check_ndim(x, 1, "`x`", "gemm for a batch")
        if self._lut is None:
            return gemv(*self._args, x, self.shape.bits, self.shape.K, self._G)
        check_activations(x, self.shape.K)
        y = self._bound(_numpy(x, "x", np.float32))  # 1-D, last dim K: shape (K,)
        return _like_x(y, x)


def _lut_tiles_per_task(out: int, workers: int) -> int:
    """Tasks of whole 16-row tiles for the LUT kernels, about 4 per worker, at most 32 tiles.

    A task is one contiguous piece of the prepared weight, read as a stream; longer streams
    were faster from DRAM (4096 x 4096 at 2 bits, 2 threads: 0.128-0.135 ms with 32 tiles,
    0.132-0.147 with 16, 0.24 with 4; measured interleaved in the same runs).
    """
    tiles = -(-out // 16)
    return max(1, min(32, -(-tiles // (workers * 4))))
