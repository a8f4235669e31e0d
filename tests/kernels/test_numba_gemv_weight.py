"""GemvWeight: a weight prepared once for batch-1 products, on the fastest kernel for its width."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.errors import DataError
from mpsearch.kernels import numba_cpu
from mpsearch.kernels.packing import pack

pytest.importorskip("numba")
lut = pytest.importorskip("mpsearch.kernels._numba_lut")


def weight(bits: int, out: int, K: int, G: int | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    ng = 1 if G is None else -(-K // G)
    codes = rng.integers(0, 1 << bits, (out, K), dtype=np.uint8)
    scale = (rng.random((out, ng)) * 0.1 + 0.01).astype(np.float16)
    zero = rng.integers(0, 1 << bits, (out, ng), dtype=np.uint8)
    group_of = np.arange(K) // (K if G is None else G)
    w = (codes.astype(np.float64) - zero[:, group_of]) * scale.astype(np.float64)[:, group_of]
    x = rng.standard_normal(K).astype(np.float32)
    return (pack(codes, bits), scale, zero), x, w @ x.astype(np.float64)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("K, G", [(256, 128), (4096, 128), (300, None), (96, 32), (48, 16)])
def test_matches_reference_and_picks_kernel(bits: int, K: int, G: int | None) -> None:
    arrays, x, ref = weight(bits, 37, K, G, seed=bits + K)
    w = numba_cpu.GemvWeight(*arrays, bits=bits, K=K, G=G)
    y = w(x)
    assert y.shape == (37,) and y.dtype == np.float32
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    assert w.kernel == (f"lut{bits}" if lut.is_supported(bits, K, G) else "rows")
    if w.kernel == "rows":  # the row-layout kernel itself, bit for bit
        np.testing.assert_array_equal(y, numba_cpu.gemv(*arrays, x, bits, K, G))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lut_layout_keeps_the_code_bytes(bits: int) -> None:
    arrays, _, _ = weight(bits, 64, 4096, 128)
    w = numba_cpu.GemvWeight(*arrays, bits=bits, K=4096, G=128)
    if w.kernel != f"lut{bits}":
        pytest.skip("the LUT kernels need an AVX-512F CPU")
    # the same bytes as stored (64 rows = 4 whole tiles): codes, fp16 scales, uint8 zero-points
    assert w.nbytes == sum(a.nbytes for a in arrays)


@pytest.mark.parametrize("bits", [2, 8])
def test_every_kind_of_x_gives_the_same_y(bits: int) -> None:
    """A contiguous float32 vector goes straight to the kernel; strided, float64 and torch
    vectors through the checks and a conversion: the same y, bit for bit."""
    arrays, x, _ = weight(bits, 40, 256, 128)
    w = numba_cpu.GemvWeight(*arrays, bits=bits, K=256, G=128)
    y = w(x)
    strided = np.zeros(512, np.float32)
    strided[::2] = x
    for other in (strided[::2], x.astype(np.float64), torch.from_numpy(x), x[None, :][0]):
        got = w(other)
        np.testing.assert_array_equal(got.numpy() if isinstance(got, torch.Tensor) else got, y)
    with pytest.raises(DataError, match="last dimension is K=256"):
        w(np.ones(255, np.float32))


def test_torch_in_torch_out_and_errors() -> None:
    arrays, x, ref = weight(2, 20, 128, 64)
    w = numba_cpu.GemvWeight(*(torch.from_numpy(a) for a in arrays), bits=2, K=128, G=64)
    y = w(torch.from_numpy(x))
    assert isinstance(y, torch.Tensor)
    assert np.abs(y.numpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    with pytest.raises(DataError, match="must be 1-D"):
        w(np.ones((2, 128), np.float32))
    with pytest.raises(DataError, match="last dimension is K=128"):
        w(np.ones(64, np.float32))
    with pytest.raises(DataError, match="bytes per row"):
        numba_cpu.GemvWeight(arrays[0][:, :8], arrays[1], arrays[2], bits=2, K=128, G=64)
