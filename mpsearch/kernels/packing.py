"""Pack b-bit integer codes into bytes and back: the storage format of quantized weights.

Every width 1..8 uses one layout. Each row of K codes is a little-endian bit stream::

    stream bit t   = bit (t % 8) of byte (t // 8)          least significant bit first
    code k         = stream bits [k*b, k*b + b), its bit 0 first
    bytes per row  = ceil(K * b / 8); the unused high bits of the last byte are 0
    rows           = stored one after the other: a (out, ceil(K*b/8)) uint8 array

Example, b = 3: eight codes c0..c7 fill exactly three bytes (``c2.1`` is bit 1 of c2)::

              bit 7                                              bit 0
    byte 0:  | c2.1  c2.0 | c1.2  c1.1  c1.0 | c0.2  c0.1  c0.0 |
    byte 1:  | c5.0 | c4.2  c4.1  c4.0 | c3.2  c3.1  c3.0 | c2.2 |
    byte 2:  | c7.2  c7.1  c7.0 | c6.2  c6.1  c6.0 | c5.2  c5.1 |

Widths that divide 8 never straddle bytes, so the layout is a plain interleave::

    b = 1:  byte i = c[8i] | c[8i+1] << 1 | ... | c[8i+7] << 7
    b = 2:  byte i = c[4i] | c[4i+1] << 2 | c[4i+2] << 4 | c[4i+3] << 6
    b = 4:  byte i = c[2i] | c[2i+1] << 4
    b = 8:  byte i = c[i]

Why this layout: it is as small as possible (no padding inside a row), it depends on b alone
(not on the group size), and every 8 codes fill exactly b whole bytes (a "chunk"), so a kernel
decodes 8 codes from b bytes with shifts and masks: read as one little-endian integer w, a
chunk's code j is ``(w >> (j*b)) & (2^b - 1)``. The Numba kernel puts 16 chunks in the 16
lanes of a SIMD register; :func:`pack` writes code j into byte ``(j*b) // 8`` at shift
``(j*b) % 8``, spilling into the next byte when it straddles.

Functions take and return either numpy arrays or torch tensors (any device).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mpsearch.core.config import Scheme, check_bits
from mpsearch.core.errors import DataError

ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)
_TILE_CODES = 1 << 22  # codes per row tile; bounds the int32 temporaries to ~16 MB each


def packed_row_bytes(K: int, bits: int) -> int:
    """Bytes that one row of ``K`` codes of ``bits`` bits packs to: ceil(K * bits / 8)."""
    return -(-K * bits // 8)


def _chunk_tables(bits: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For the 8 codes of a chunk: byte of the low part, byte of the high part, bit shift."""
    first = [(j * bits) // 8 for j in range(8)]
    shift = [(j * bits) % 8 for j in range(8)]
    def as_t(v):
        return torch.tensor(v, dtype=torch.int64, device=device)
    return as_t(first), as_t([p + 1 for p in first]), as_t(shift)


def _tile_rows(K: int) -> int:
    return max(1, _TILE_CODES // max(K, 1))


def _pack_tensor(codes: Tensor, bits: int) -> Tensor:
    """Pack a validated (out, K) uint8 tensor; the inverse of :func:`_unpack_tensor`."""
    out, K = codes.shape
    nbytes = packed_row_bytes(K, bits)
    if bits == 8:
        return codes.contiguous().clone()
    lo_at, hi_at, shift = _chunk_tables(bits, codes.device)
    nchunk = -(-K // 8)
    packed = torch.empty((out, nbytes), dtype=torch.uint8, device=codes.device)
    step = _tile_rows(K)
    for r0 in range(0, out, step):
        part = codes[r0:r0 + step]
        n = part.shape[0]
        c = torch.zeros((n, nchunk * 8), dtype=torch.int32, device=codes.device)
        c[:, :K] = part
        v = c.view(n, nchunk, 8) << shift.to(torch.int32)  # < 2^15: the code at its bit position
        res = torch.zeros((n, nchunk, bits + 1), dtype=torch.int32, device=codes.device)
        # Bit fields are disjoint, so adding them is OR-ing them (exact, deterministic).
        res.scatter_add_(2, lo_at.expand(n, nchunk, 8), v & 0xFF)
        res.scatter_add_(2, hi_at.expand(n, nchunk, 8), v >> 8)
        packed[r0:r0 + n] = res[:, :, :bits].reshape(n, nchunk * bits)[:, :nbytes].to(torch.uint8)
    return packed


def chunk_words(packed: Tensor, bits: int, nchunk: int) -> Tensor:
    """Each 8-code chunk (``bits`` bytes) of a packed tile as one little-endian integer.

    (rows, nchunk) int32 when a chunk fits in 31 bits (bits <= 3), else int64.
    """
    rows, nbytes = packed.shape
    dtype = torch.int32 if bits <= 3 else torch.int64
    if nbytes < nchunk * bits:
        packed = F.pad(packed, (0, nchunk * bits - nbytes))
    chunks = packed.reshape(rows, nchunk, bits)
    word = chunks[:, :, 0].to(dtype)
    for i in range(1, bits):
        word |= chunks[:, :, i].to(dtype) << (8 * i)
    return word


def slot_planes(packed: Tensor, bits: int, K: int) -> tuple[int, list[Tensor]]:
    """Codes per chunk c, and for each slot j < c the (rows, ceil(K/c)) codes ``c*i + j``.

    A chunk is 1 byte (c = 8 // bits codes) when bits divides 8, else ``bits`` bytes (c = 8).
    The planes are views or small integer tensors; nothing is interleaved back.
    """
    mask = (1 << bits) - 1
    if bits == 8:
        return 1, [packed]
    if 8 % bits == 0:
        return 8 // bits, [(packed >> (bits * j)) & mask for j in range(8 // bits)]
    word = chunk_words(packed, bits, -(-K // 8))
    return 8, [(word >> (bits * j)) & mask for j in range(8)]


def _unpack_tensor(packed: Tensor, bits: int, K: int) -> Tensor:
    """Unpack a validated (out, ceil(K*bits/8)) uint8 tensor to (out, K) uint8 codes."""
    out = packed.shape[0]
    codes = torch.empty((out, K), dtype=torch.uint8, device=packed.device)
    step = _tile_rows(K)
    for r0 in range(0, out, step):
        _, planes = slot_planes(packed[r0:r0 + step], bits, K)
        n = planes[0].shape[0]
        inter = torch.stack([p.to(torch.uint8) for p in planes], dim=2).reshape(n, -1)
        codes[r0:r0 + n] = inter[:, :K]
    return codes


def _as_tensor(a: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    raise DataError(f"`{name}` must be a torch.Tensor or a numpy array, but got "
                    f"{type(a).__name__}. Convert it with torch.as_tensor().")


def _check_uint8_2d(t: Tensor, name: str) -> None:
    if t.dtype != torch.uint8 or t.dim() != 2:
        raise DataError(f"`{name}` must be a 2-D uint8 array (out, ...), but got dtype "
                        f"{str(t.dtype).removeprefix('torch.')} with shape {tuple(t.shape)}. "
                        f"Convert it with .to(torch.uint8) / .astype(np.uint8) and reshape.")


def _like(result: Tensor, original: Tensor | np.ndarray) -> ArrayT:
    return result.numpy() if isinstance(original, np.ndarray) else result  # type: ignore


def pack(codes: ArrayT, bits: int) -> ArrayT:
    """Pack (out, K) uint8 codes in [0, 2^bits - 1] to (out, ceil(K*bits/8)) uint8 bytes.

    Returns the same kind of array as given (numpy in, numpy out; tensors stay on their device).

    >>> pack(np.array([[1, 2, 3, 4]], dtype=np.uint8), 4)
    array([[33, 67]], dtype=uint8)
    """
    bits = check_bits(bits, Scheme.AFFINE)
    t = _as_tensor(codes, "codes")
    _check_uint8_2d(t, "codes")
    if t.numel() and int(t.max()) >= 1 << bits:
        raise DataError(f"`codes` must lie in [0, {(1 << bits) - 1}] for bits={bits}, but the "
                        f"largest code is {int(t.max())}. Quantize with bits={bits} or pass the "
                        f"bit width the codes were made with.")
    return _like(_pack_tensor(t, bits), codes)


def unpack(packed: ArrayT, bits: int, K: int) -> ArrayT:
    """Unpack (out, ceil(K*bits/8)) uint8 bytes to (out, K) uint8 codes; inverse of :func:`pack`.

    >>> unpack(np.array([[33, 67]], dtype=np.uint8), 4, 4)
    array([[1, 2, 3, 4]], dtype=uint8)
    """
    bits = check_bits(bits, Scheme.AFFINE)
    if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 0:
        raise DataError(f"`K` (codes per row) must be an integer >= 0, but got K={K!r}. "
                        f"Pass the fan-in of the packed weight.")
    t = _as_tensor(packed, "packed")
    _check_uint8_2d(t, "packed")
    if t.shape[1] != packed_row_bytes(int(K), bits):
        raise DataError(f"A row of K={K} codes at bits={bits} packs to "
                        f"{packed_row_bytes(int(K), bits)} bytes, but `packed` has "
                        f"{t.shape[1]} bytes per row. Pass the K and bits it was packed with.")
    return _like(_unpack_tensor(t, bits, int(K)), packed)
