"""Checks shared by the packed matmul backends (Numba and PyTorch).

A packed weight is ``packed`` (out, ceil(K*bits/8)) uint8 (see :mod:`mpsearch.kernels.packing`),
``scale`` (out, n_groups) float16 (float32 and bfloat16 are accepted too) and ``zero``
(out, n_groups) uint8 in code units: ``W[o, k] = (code[o, k] - zero[o, k // G]) * scale[...]``.
Only shapes and dtypes are checked here (cheap, no pass over the data), never values.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mpsearch.core.config import Scheme, check_bits
from mpsearch.core.errors import DataError
from mpsearch.kernels.packing import packed_row_bytes

SCALE_DTYPES = ("float16", "float32", "bfloat16")


_DTYPE_NAMES: dict[Any, str] = {}


def dtype_name(a: Any) -> str:
    """'uint8', 'float16', ... for numpy arrays and torch tensors alike."""
    name = _DTYPE_NAMES.get(a.dtype)
    if name is None:
        name = _DTYPE_NAMES[a.dtype] = str(a.dtype).removeprefix("torch.")
    return name


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class PackedShape(NamedTuple):
    """The checked geometry of a packed weight.

    A NamedTuple, not a frozen dataclass: it is built on every kernel call, and a frozen
    dataclass's ``__init__`` costs ~10 us when the caches are cold (batch-1 calls notice).
    """

    out: int
    K: int
    bits: int
    group: int  # G, or K when there is one group per row
    n_groups: int


_U8, _F16, _F32 = np.dtype(np.uint8), np.dtype(np.float16), np.dtype(np.float32)


def _fast_shape(packed: Any, scale: Any, zero: Any, bits: Any, K: Any, G: Any) -> PackedShape | None:
    """The shape when the operands are the common, valid case (numpy, plain ints), else None.

    Same rules as :func:`check_operands`, in fewer steps: at batch 1 validation is a visible part
    of a kernel call (~50 us with cold caches, ~30 us this way). None means "check fully".
    """
    if not (type(bits) is int and 1 <= bits <= 8 and type(K) is int and K >= 1
            and (G is None or (type(G) is int and G >= 1))):
        return None
    if type(packed) is not np.ndarray or type(scale) is not np.ndarray \
            or type(zero) is not np.ndarray:
        return None
    n_groups = 1 if G is None else -(-K // G)
    shape = packed.shape
    if (packed.dtype is not _U8 or zero.dtype is not _U8
            or (scale.dtype is not _F16 and scale.dtype is not _F32) or len(shape) != 2
            or shape[1] != packed_row_bytes(K, bits)
            or scale.shape != (shape[0], n_groups) or zero.shape != (shape[0], n_groups)):
        return None
    return PackedShape(shape[0], K, bits, K if n_groups == 1 else G, n_groups)


def check_operands(packed: Any, scale: Any, zero: Any, bits: Any, K: Any, G: Any) -> PackedShape:
    """Validate a packed weight's arrays against ``bits``, ``K`` and ``G``; return its shape."""
    fast = _fast_shape(packed, scale, zero, bits, K, G)
    if fast is not None:
        return fast
    bits = check_bits(bits, Scheme.AFFINE)
    if not _is_int(K) or K < 1:
        raise DataError(f"`K` (the fan-in) must be an integer >= 1, but got K={K!r}. "
                        f"Pass the number of input features of the weight.")
    if G is not None and (not _is_int(G) or G < 1):
        raise DataError(f"`G` (the group size) must be None or an integer >= 1, but got G={G!r}. "
                        f"Pass the group size the weight was quantized with, e.g. 128.")
    K = int(K)
    n_groups = 1 if G is None else -(-K // int(G))
    group = K if n_groups == 1 else int(G)
    if dtype_name(packed) != "uint8" or len(packed.shape) != 2:
        raise DataError(f"`packed` must be a 2-D uint8 array, but got dtype {dtype_name(packed)} "
                        f"with shape {tuple(packed.shape)}. Build it with packing.pack().")
    out = int(packed.shape[0])
    if packed.shape[1] != packed_row_bytes(K, bits):
        raise DataError(f"`packed` must have ceil(K*bits/8) = {packed_row_bytes(K, bits)} bytes "
                        f"per row for K={K}, bits={bits}, but got shape {tuple(packed.shape)}. "
                        f"Pass the K and bits it was packed with.")
    want = (out, n_groups)
    for name, arr, dtypes in (("scale", scale, SCALE_DTYPES), ("zero", zero, ("uint8",))):
        if tuple(arr.shape) != want or dtype_name(arr) not in dtypes:
            raise DataError(f"`{name}` must have shape (out, n_groups) = {want} (K={K}, G={G}) "
                            f"and dtype {' or '.join(dtypes)}, but got shape {tuple(arr.shape)}, "
                            f"dtype {dtype_name(arr)}. Pass the {name}s the weight was quantized "
                            f"with.")
    return PackedShape(out=out, K=K, bits=bits, group=group, n_groups=n_groups)


def kernel_scales(scale: np.ndarray) -> np.ndarray:
    """Scales as the Numba kernels read them: float16 as its uint16 bits (the kernels widen
    them), anything else as float32."""
    if scale.dtype == np.float16:
        return scale.view(np.uint16)
    return scale.astype(np.float32, copy=False)


def check_activations(x: Any, K: int, name: str = "x") -> None:
    """``x`` must be a floating array whose last dimension is K."""
    if type(x) is np.ndarray and x.dtype is _F32 and x.ndim and x.shape[-1] == K:
        return  # the common case, decided in one step
    if not dtype_name(x).startswith(("float", "bfloat")) or len(x.shape) == 0 \
            or x.shape[-1] != K:
        raise DataError(f"`{name}` must be a floating array whose last dimension is K={K}, but "
                        f"got dtype {dtype_name(x)} with shape {tuple(x.shape)}. Pass "
                        f"activations of shape (..., {K}).")
