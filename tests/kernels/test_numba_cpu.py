"""Numba gemv / gemm against a float64 reference: every width, group layout and batch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mpsearch.core.errors import BitsOutOfRangeError, DataError, MissingDependencyError
from mpsearch.kernels import numba_cpu
from mpsearch.kernels.packing import pack

pytest.importorskip("numba")


def make_case(bits: int, out: int, K: int, G: int | None, batch: tuple[int, ...], seed: int = 0,
              scale_dtype: type = np.float16, x_scale: float = 1.0):
    """Random codes, scales, zeros and x; the float64 reference y = x @ W.T."""
    rng = np.random.default_rng(seed)
    n_groups = 1 if G is None else -(-K // G)
    codes = rng.integers(0, 1 << bits, (out, K), dtype=np.uint8)
    scale = (rng.random((out, n_groups)) * 0.1 + 0.01).astype(scale_dtype)
    zero = rng.integers(0, 1 << bits, (out, n_groups), dtype=np.uint8)
    group_of = np.arange(K) // (K if G is None else G)
    w = (codes.astype(np.float64) - zero[:, group_of]) * scale.astype(np.float64)[:, group_of]
    x = (rng.standard_normal(batch + (K,)) * x_scale).astype(np.float32)
    return pack(codes, bits), scale, zero, x, x.astype(np.float64) @ w.T


def assert_close(y: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-5 relative, measured against the largest output (float32 accumulation)."""
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("G", [None, 32, 128])
@pytest.mark.parametrize("batch", [1, 4, 32])
def test_matches_reference(bits: int, G: int | None, batch: int) -> None:
    # K = 300: not a multiple of G nor of the 128-code block, so the tail path runs too.
    packed, scale, zero, x, ref = make_case(bits, 37, 300, G, (batch,), seed=bits)
    if batch == 1:
        assert_close(numba_cpu.gemv(packed, scale, zero, x[0], bits, 300, G), ref[0])
    assert_close(numba_cpu.gemm(packed, scale, zero, x, bits, 300, G), ref)


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("K, G", [(256, 64), (512, 256), (1000, 8), (1000, 40), (300, 100),
                                  (7, None), (129, 1)])
def test_other_group_sizes(bits: int, K: int, G: int | None) -> None:
    """Lane-group mode (G multiple of 8), block mode, and the plain fallback (G=100, G=1)."""
    packed, scale, zero, x, ref = make_case(bits, 19, K, G, (3,))
    assert_close(numba_cpu.gemm(packed, scale, zero, x, bits, K, G), ref)
    assert_close(numba_cpu.gemv(packed, scale, zero, x[1], bits, K, G), ref[1])


def test_large_rows_many_tasks() -> None:
    packed, scale, zero, x, ref = make_case(4, 1003, 1024, 128, (5,))
    assert_close(numba_cpu.gemm(packed, scale, zero, x, 4, 1024, 128), ref)
    assert_close(numba_cpu.gemv(packed, scale, zero, x[0], 4, 1024, 128), ref[0])


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_same_result_for_any_thread_count(bits: int) -> None:
    """Threads claim row tasks dynamically; each row is still computed once, in a fixed order."""
    import numba

    packed, scale, zero, x, ref = make_case(bits, 301, 640, 128, (3,), seed=5)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, 2, min(3, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            results.append((numba_cpu.gemv(packed, scale, zero, x[0], bits, 640, 128),
                            numba_cpu.gemm(packed, scale, zero, x, bits, 640, 128)))
    finally:
        numba.set_num_threads(before)
    assert_close(results[0][0], ref[0])
    assert_close(results[0][1], ref)
    for y1, y3 in results[1:]:
        np.testing.assert_array_equal(y1, results[0][0])
        np.testing.assert_array_equal(y3, results[0][1])


@pytest.mark.parametrize("x_scale", [1e-30, 1e-38, 1e25])
def test_tiny_and_large_activations_keep_their_precision(x_scale: float) -> None:
    packed, scale, zero, x, ref = make_case(4, 11, 300, 32, (2,), x_scale=x_scale)
    assert_close(numba_cpu.gemm(packed, scale, zero, x, 4, 300, 32), ref)


def test_float32_scales_and_torch_inputs() -> None:
    packed, scale, zero, x, ref = make_case(5, 9, 300, 128, (2,), scale_dtype=np.float32)
    y = numba_cpu.gemm(torch.from_numpy(packed), torch.from_numpy(scale), torch.from_numpy(zero),
                       torch.from_numpy(x), 5, 300, 128)
    assert isinstance(y, torch.Tensor)
    assert_close(y.numpy(), ref)


def test_deterministic_and_zero_rows() -> None:
    packed, scale, zero, x, _ = make_case(3, 40, 700, 64, (6,))
    first = numba_cpu.gemm(packed, scale, zero, x, 3, 700, 64)
    np.testing.assert_array_equal(first, numba_cpu.gemm(packed, scale, zero, x, 3, 700, 64))
    assert numba_cpu.gemm(packed, scale, zero, x[:0], 3, 700, 64).shape == (0, 40)


def test_errors() -> None:
    packed, scale, zero, x, _ = make_case(4, 5, 300, 128, (2,))
    with pytest.raises(BitsOutOfRangeError, match="within 1..8"):
        numba_cpu.gemm(packed, scale, zero, x, 9, 300, 128)
    with pytest.raises(DataError, match="ceil\\(K\\*bits/8\\) = 113 bytes"):
        numba_cpu.gemm(packed, scale, zero, x, 3, 300, 128)
    with pytest.raises(DataError, match="`scale` must have shape \\(out, n_groups\\) = \\(5, 10\\)"):
        numba_cpu.gemm(packed, scale, zero, x, 4, 300, 32)
    with pytest.raises(DataError, match="`zero` must have shape.*dtype uint8"):
        numba_cpu.gemm(packed, scale, zero.astype(np.int8), x, 4, 300, 128)
    with pytest.raises(DataError, match="`scale` .*float16 or float32 or bfloat16"):
        numba_cpu.gemm(packed, scale.astype(np.int32), zero, x, 4, 300, 128)
    with pytest.raises(DataError, match="last dimension is K=300"):
        numba_cpu.gemm(packed, scale, zero, x[:, :299], 4, 300, 128)
    with pytest.raises(DataError, match="`x` must be a floating array"):
        numba_cpu.gemm(packed, scale, zero, x.astype(np.int32), 4, 300, 128)
    with pytest.raises(DataError, match="gemv must be 1-D"):
        numba_cpu.gemv(packed, scale, zero, x, 4, 300, 128)
    with pytest.raises(DataError, match="gemm must be 2-D"):
        numba_cpu.gemm(packed, scale, zero, x[0], 4, 300, 128)
    with pytest.raises(DataError, match="`G` .* must be None or an integer >= 1"):
        numba_cpu.gemm(packed, scale, zero, x, 4, 300, 0)
    with pytest.raises(DataError, match="`K` .* must be an integer >= 1"):
        numba_cpu.gemm(packed, scale, zero, x, 4, 0, 128)
    meta = torch.zeros(2, 300, device="meta")
    with pytest.raises(DataError, match="run on CPU, but `x` is on meta"):
        numba_cpu.gemm(torch.from_numpy(packed), torch.from_numpy(scale),
                       torch.from_numpy(zero), meta, 4, 300, 128)


def test_missing_numba_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numba_cpu, "is_available", lambda: False)
    numba_cpu._numba_module.cache_clear()
    try:
        packed, scale, zero, x, _ = make_case(4, 5, 300, 128, (2,))
        with pytest.raises(MissingDependencyError, match="pip install numba.*torch_packed"):
            numba_cpu.gemm(packed, scale, zero, x, 4, 300, 128)
    finally:
        numba_cpu._numba_module.cache_clear()


_GUARD_SCRIPT = """
import ctypes, mmap, sys
import numpy as np
from mpsearch.kernels import numba_cpu
from mpsearch.kernels.packing import pack

page = mmap.PAGESIZE
buf = mmap.mmap(-1, 3 * page)
base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(base + 2 * page, page, 0) == 0  # PROT_NONE: reading it faults
rng = np.random.default_rng(0)
for bits in range(1, 9):
    for K in (128, 256, 300):
        codes = rng.integers(0, 1 << bits, (9, K), dtype=np.uint8)
        packed = pack(codes, bits)
        guarded = np.frombuffer(buf, np.uint8, packed.size, 2 * page - packed.size)
        guarded = guarded.reshape(packed.shape)
        guarded[:] = packed  # ends exactly at the protected page
        scale, zero = np.ones((9, 1), np.float16), np.zeros((9, 1), np.uint8)
        x = np.ones((3, K), np.float32)
        want = codes.sum(1, dtype=np.float64)
        assert np.allclose(numba_cpu.gemm(guarded, scale, zero, x, bits, K, None)[0], want)
        assert np.allclose(numba_cpu.gemv(guarded, scale, zero, x[0], bits, K, None), want)
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses mprotect via libc")
def test_vector_loads_never_read_past_the_packed_array() -> None:
    """The last block of the last row sits right before an unreadable page: no fault."""
    done = subprocess.run([sys.executable, "-c", _GUARD_SCRIPT], capture_output=True, text=True, check=False,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
