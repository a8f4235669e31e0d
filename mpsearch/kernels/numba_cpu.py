"""Fused dequantize-and-multiply on CPU with Numba: the fast path for packed low-bit weights.

``gemv`` (one activation vector) and ``gemm`` (a small batch) read the packed codes directly,
never materializing the float weight, so they move ``bits/32`` of the bytes a float32 matmul
moves. Rows run in parallel on Numba's threads (``numba.set_num_threads``); arithmetic is
float32 without fast-math, in a fixed order, so results are deterministic for a given thread
count and machine. Numba is imported on first use; without it these functions raise
:class:`~mpsearch.errors.MissingDependencyError` (use :mod:`mpsearch.kernels.torch_packed`).

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
from functools import cache, lru_cache
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mpsearch.errors import DataError, MissingDependencyError
from mpsearch.kernels._chunk_slots import slot_exponents
from mpsearch.kernels._operands import check_activations, check_operands

__all__ = ["gemm", "gemv", "is_available"]
requires = ("numba",)
_TASKS_PER_THREAD = 4


def is_available() -> bool:
    """Whether numba is installed (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


@cache
def _backend() -> ModuleType:
    if not is_available():
        raise MissingDependencyError(
            "The Numba CPU kernels need the `numba` package, which is not installed. Install it "
            "with `pip install numba`, or use mpsearch.kernels.torch_packed.packed_matmul.")
    return importlib.import_module("mpsearch.kernels._numba_kernels")


@cache
def _kernel(kind: str, bits: int) -> Any:
    mod = _backend()
    return (mod.make_gemv if kind == "gemv" else mod.make_gemm)(bits)


@lru_cache(maxsize=64)
def _group_table(K: int, group: int, n_groups: int) -> tuple[np.ndarray, bool] | None:
    """Group index per 128-code block (broadcast mode) or per chunk lane (lane mode).

    None when neither works (G not a multiple of 8 with several groups per row).
    """
    nblk = K // 128
    if n_groups == 1 or group % 128 == 0:
        return (np.arange(nblk, dtype=np.int64) * 128 // group).astype(np.int32), False
    if group % 8 == 0:
        starts = np.arange(nblk * 16, dtype=np.int64) * 8
        return (starts // group).astype(np.int32), True
    return None


def _numpy(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        if a.device.type != "cpu":
            raise DataError(f"The Numba kernels run on CPU, but `{name}` is on {a.device}. Use "
                            f"mpsearch.kernels.torch_packed.packed_matmul for other devices.")
        if a.dtype == torch.bfloat16:
            a = a.float()
        return np.ascontiguousarray(a.detach().numpy())
    return np.ascontiguousarray(a)


def _scale_array(scale: Any) -> np.ndarray:
    s = _numpy(scale, "scale")
    return s.view(np.uint16) if s.dtype == np.float16 else s.astype(np.float32, copy=False)


@lru_cache(maxsize=8)
def _slot_scales(bits: int) -> np.ndarray:
    """2^-e_j per slot j: undoes the power of two the kernel's in-place decode leaves."""
    return np.ldexp(np.ones(8, np.float32), -np.array(slot_exponents(bits))).astype(np.float32)


def _run(packed: Any, scale: Any, zero: Any, x: Any, bits: Any, K: Any, G: Any,
         kind: str) -> np.ndarray:
    """Validate, convert to numpy, prepare x, run the kernel: (B, out) float32."""
    shape = check_operands(packed, scale, zero, bits, K, G)
    check_activations(x, shape.K)
    x2d = _numpy(x, "x").astype(np.float32, copy=False).reshape(-1, shape.K)
    nb = x2d.shape[0]
    y = np.empty((nb, shape.out), np.float32)
    if nb == 0 or shape.out == 0:
        return y
    backend = _backend()  # raises MissingDependencyError without numba
    p, s, z = _numpy(packed, "packed"), _scale_array(scale), _numpy(zero, "zero")
    table = _group_table(shape.K, shape.group, shape.n_groups)
    if table is None:
        backend.gemm_any_group(p, s, z, x2d, shape.bits, shape.group, y)
        return y
    import numba

    tasks = max(1, numba.get_num_threads() * _TASKS_PER_THREAD)
    rows_per_task = -(-shape.out // tasks)
    xp, xt, xs, exponents = backend.prepare_x(x2d, _slot_scales(shape.bits), shape.group,
                                               shape.n_groups)
    grp, lane_mode = table
    if kind == "gemv":
        _kernel("gemv", shape.bits)(p, s, z, xp, xs[0], xt[0], grp, lane_mode, shape.group,
                                    rows_per_task, y[0])
    else:
        _kernel("gemm", shape.bits)(p, s, z, xp, xs, xt, grp, lane_mode, shape.group,
                                    rows_per_task, y)
    if exponents.any():  # rows of tiny x were scaled up by 2^e: scale their outputs back
        y = np.ldexp(y, -exponents[:, None]).astype(np.float32)
    return y


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
    if len(getattr(x, "shape", ())) != 1:
        raise DataError(f"`x` for gemv must be 1-D (K,), but got shape "
                        f"{tuple(getattr(x, 'shape', ()))}. Use gemm for a batch.")
    return _like_x(_run(packed, scale, zero, x, bits, K, G, "gemv")[0], x)


def gemm(packed: Any, scale: Any, zero: Any, X: Any, bits: int, K: int,
         G: int | None) -> Any:
    """Y = X W^T for a batch ``X`` (B, K), W given packed; returns Y (B, out) float32.

    Arguments as for :func:`gemv`. Each block of codes is decoded once and used for every
    batch row, so it pays off for small batches (B up to ~64); the result has the kind of X.
    """
    if len(getattr(X, "shape", ())) != 2:
        raise DataError(f"`X` for gemm must be 2-D (B, K), but got shape "
                        f"{tuple(getattr(X, 'shape', ()))}. Use gemv for one vector.")
    return _like_x(_run(packed, scale, zero, X, bits, K, G, "gemm"), X)
