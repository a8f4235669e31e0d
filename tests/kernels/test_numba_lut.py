"""The AVX-512 2-bit LUT GEMV against a float64 reference, thread counts and edge codes."""

from __future__ import annotations

import numpy as np
import pytest
from _gemv_cases import assert_close, make_case, reference

from mpsearch.errors import DataError
from mpsearch.kernels.packing import pack

numba = pytest.importorskip("numba")
lut = pytest.importorskip("mpsearch.kernels._numba_lut")

needs_avx512 = pytest.mark.skipif(not lut.is_supported(16, None),
                                  reason="the LUT kernel needs an AVX-512F CPU")


def test_is_supported_rejects_unaligned_shapes() -> None:
    assert not lut.is_supported(100, None)  # K not a multiple of 16
    assert not lut.is_supported(128, 24)  # G not a multiple of 16
    assert not lut.is_supported(128, 8)
    assert not lut.is_supported(0, None)


@needs_avx512
@pytest.mark.parametrize("out, K, G", [
    (37, 128, 16), (16, 16, None), (5, 16, 16), (33, 4096, 128), (50, 4096, 64),
    (20, 128, None), (19, 4096, None), (21, 400, 64),  # last group shorter than G
    (24, 4096, 1024),  # groups span several K-blocks
])
@pytest.mark.parametrize("scale_dtype", [np.float16, np.float32])
def test_matches_reference(out: int, K: int, G: int | None, scale_dtype: type) -> None:
    codes, scale, zero, x, ref = make_case(2, out, K, G, scale_dtype, seed=out + K)
    w = lut.prepare_lut2(pack(codes, 2), scale, zero, K, G)
    assert_close(lut.gemv_lut2(w, x), ref)


@needs_avx512
def test_same_result_for_any_threads_and_tasks() -> None:
    codes, scale, zero, x, ref = make_case(2, 200, 1024, 128, seed=3)
    w = lut.prepare_lut2(pack(codes, 2), scale, zero, 1024, 128)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = lut.gemv_lut2(w, x, workers=1, tiles_per_task=16)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = lut.gemv_lut2(w, x, workers=2, tiles_per_task=1)
        three = lut.gemv_lut2(w, x, workers=2, tiles_per_task=5)
    finally:
        numba.set_num_threads(before)
    assert_close(one, ref)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)


@needs_avx512
@pytest.mark.parametrize("block_runs, ahead", [(1, 0), (3, 16), (64, 1024), (1000, 0)])
@pytest.mark.parametrize("G", [32, 256, None])
def test_tuning_knobs_keep_results(block_runs: int, ahead: int, G: int | None) -> None:
    """K-blocks that split groups or cover all of K, with and without prefetching."""
    codes, scale, zero, x, ref = make_case(2, 45, 1024, G, seed=block_runs)
    w = lut.prepare_lut2(pack(codes, 2), scale, zero, 1024, G)
    y = lut.gemv_lut2(w, x, tiles_per_task=3, block_runs=block_runs, ahead=ahead)
    assert_close(y, ref)
    if G == 32 and block_runs % 2 == 0:  # no group spans K-blocks: same sums, same order
        np.testing.assert_array_equal(y, lut.gemv_lut2(w, x))


@needs_avx512
@pytest.mark.parametrize("code", [0, 1, 2, 3])
def test_all_equal_codes(code: int) -> None:
    out, K, G = 18, 256, 64
    rng = np.random.default_rng(code)
    codes = np.full((out, K), code, np.uint8)
    scale = (rng.random((out, K // G)) + 0.5).astype(np.float16)
    x = rng.standard_normal(K).astype(np.float32)
    zero = np.zeros((out, K // G), np.uint8)
    w = lut.prepare_lut2(pack(codes, 2), scale, zero, K, G)
    if code:
        assert_close(lut.gemv_lut2(w, x), reference(codes, scale, zero, x, G))
    else:
        np.testing.assert_array_equal(lut.gemv_lut2(w, x), np.zeros(out, np.float32))
    # zero == code: every weight is 0, so y is 0 up to float32 rounding of the two terms.
    zero = np.full((out, K // G), code, np.uint8)
    y = lut.gemv_lut2(lut.prepare_lut2(pack(codes, 2), scale, zero, K, G), x)
    assert np.abs(y).max() <= 1e-5 * 3 * float(scale.astype(np.float64).max()) * np.abs(x).sum()


@needs_avx512
def test_padding_rows_do_not_leak() -> None:
    codes, scale, zero, x, ref = make_case(2, 17, 64, 16, seed=9)
    y = lut.gemv_lut2(lut.prepare_lut2(pack(codes, 2), scale, zero, 64, 16), x)
    assert y.shape == (17,)
    assert_close(y, ref)


@needs_avx512
def test_rejects_bad_inputs() -> None:
    codes, scale, zero, x, _ = make_case(2, 4, 64, 16)
    with pytest.raises(DataError, match="multiples of 16"):
        lut.prepare_lut2(pack(codes[:, :60], 2), scale, zero, 60, 16)
    with pytest.raises(DataError, match="needs packed"):
        lut.prepare_lut2(pack(codes, 2), scale[:, :2], zero, 64, 16)
    w = lut.prepare_lut2(pack(codes, 2), scale, zero, 64, 16)
    with pytest.raises(DataError, match="must have shape"):
        lut.gemv_lut2(w, x[:32])
    with pytest.raises(DataError, match="must be >= 1"):
        lut.gemv_lut2(w, x, tiles_per_task=0)
