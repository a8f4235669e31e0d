"""The AVX-512 4-bit two-plane LUT GEMV against a float64 reference, threads and edge codes."""

from __future__ import annotations

import numpy as np
import pytest
from _gemv_cases import assert_close, make_case, reference

from mpsearch.errors import DataError
from mpsearch.kernels.packing import pack

numba = pytest.importorskip("numba")
lut4 = pytest.importorskip("mpsearch.kernels._numba_lut4")

needs_avx512 = pytest.mark.skipif(not lut4.is_supported(16, None),
                                  reason="the LUT kernel needs an AVX-512F CPU")


def prepared(codes, scale, zero, K, G):
    return lut4.prepare_lut4(pack(codes, 4), scale, zero, K, G)


def test_is_supported_rejects_unaligned_shapes() -> None:
    assert not lut4.is_supported(100, None)  # K not a multiple of 16
    assert not lut4.is_supported(128, 24)  # G not a multiple of 16
    assert not lut4.is_supported(128, 8)
    assert not lut4.is_supported(0, None)
    assert not lut4.is_supported(8, None)


@needs_avx512
@pytest.mark.parametrize("out, K, G", [
    (37, 128, 16), (16, 16, None), (5, 16, 16), (33, 4096, 128), (50, 4096, 64),
    (20, 128, None), (19, 4096, None), (3, 48, None),
    (21, 400, 64), (9, 4080, 128),  # last group shorter than G
    (24, 4096, 1024),  # groups span several K-blocks
])
@pytest.mark.parametrize("scale_dtype", [np.float16, np.float32])
def test_matches_reference(out: int, K: int, G: int | None, scale_dtype: type) -> None:
    codes, scale, zero, x, ref = make_case(4, out, K, G, scale_dtype, seed=out + K)
    assert_close(lut4.gemv_lut4(prepared(codes, scale, zero, K, G), x), ref)


@needs_avx512
def test_each_bit_of_each_position_lands_in_its_table() -> None:
    """One nonzero code per row, at every position and bit: y picks out code * x[k] exactly."""
    K = 64
    rows = [(k, c) for k in range(K) for c in (1, 2, 4, 8, 15)]
    codes = np.zeros((len(rows), K), np.uint8)
    for r, (k, c) in enumerate(rows):
        codes[r, k] = c
    x = (np.arange(K, dtype=np.float32) + 1) / 8
    ones, zeros = np.ones((len(rows), 1), np.float32), np.zeros((len(rows), 1), np.uint8)
    y = lut4.gemv_lut4(prepared(codes, ones, zeros, K, None), x)
    np.testing.assert_array_equal(y, np.array([c * x[k] for k, c in rows], np.float32))


@needs_avx512
def test_same_result_for_any_threads_and_tasks() -> None:
    codes, scale, zero, x, ref = make_case(4, 200, 1024, 128, seed=3)
    w = prepared(codes, scale, zero, 1024, 128)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = lut4.gemv_lut4(w, x, workers=1, tiles_per_task=16)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = lut4.gemv_lut4(w, x, workers=2, tiles_per_task=1)
        three = lut4.gemv_lut4(w, x, workers=2, tiles_per_task=5)
    finally:
        numba.set_num_threads(before)
    assert_close(one, ref)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)


@needs_avx512
@pytest.mark.parametrize("block_runs, ahead", [(1, 0), (3, 32), (64, 2048), (1000, 0)])
@pytest.mark.parametrize("G", [32, 256, None])
def test_tuning_knobs_keep_results(block_runs: int, ahead: int, G: int | None) -> None:
    """K-blocks that split groups or cover all of K, with and without prefetching."""
    codes, scale, zero, x, ref = make_case(4, 45, 1024, G, seed=block_runs)
    w = prepared(codes, scale, zero, 1024, G)
    y = lut4.gemv_lut4(w, x, tiles_per_task=3, block_runs=block_runs, ahead=ahead)
    assert_close(y, ref)
    if G == 32 and block_runs % 2 == 0:  # no group spans K-blocks: same sums, same order
        np.testing.assert_array_equal(y, lut4.gemv_lut4(w, x))


@needs_avx512
@pytest.mark.parametrize("code", [0, 1, 3, 4, 7, 12, 15])
def test_all_equal_codes(code: int) -> None:
    out, K, G = 18, 256, 64
    rng = np.random.default_rng(code)
    codes = np.full((out, K), code, np.uint8)
    scale = (rng.random((out, K // G)) + 0.5).astype(np.float16)
    x = rng.standard_normal(K).astype(np.float32)
    zero = np.zeros((out, K // G), np.uint8)
    if code:
        assert_close(lut4.gemv_lut4(prepared(codes, scale, zero, K, G), x),
                     reference(codes, scale, zero, x, G))
    else:
        np.testing.assert_array_equal(lut4.gemv_lut4(prepared(codes, scale, zero, K, G), x),
                                      np.zeros(out, np.float32))
    # zero == code: every weight is 0, so y is 0 up to float32 rounding of the two terms.
    zero = np.full((out, K // G), code, np.uint8)
    y = lut4.gemv_lut4(prepared(codes, scale, zero, K, G), x)
    assert np.abs(y).max() <= 1e-5 * 15 * float(scale.astype(np.float64).max()) * np.abs(x).sum()


@needs_avx512
def test_padding_rows_do_not_leak() -> None:
    codes, scale, zero, x, ref = make_case(4, 17, 64, 32, seed=9)
    y = lut4.gemv_lut4(prepared(codes, scale, zero, 64, 32), x)
    assert y.shape == (17,)
    assert_close(y, ref)
    empty = prepared(codes[:0], scale[:0], zero[:0], 64, 32)
    assert lut4.gemv_lut4(empty, x).shape == (0,)


@needs_avx512
def test_rejects_bad_inputs() -> None:
    codes, scale, zero, x, _ = make_case(4, 4, 64, 32)
    with pytest.raises(DataError, match="multiples of 16"):
        lut4.prepare_lut4(pack(codes[:, :60], 4), scale, zero, 60, None)
    with pytest.raises(DataError, match="multiples of 16"):
        lut4.prepare_lut4(pack(codes, 4), scale, zero, 64, 24)
    with pytest.raises(DataError, match="needs packed"):
        lut4.prepare_lut4(pack(codes, 4), scale[:, :1], zero, 64, 32)
    with pytest.raises(DataError, match=r"pack\(codes, 4\)"):
        lut4.prepare_lut4(pack(codes & 7, 3), scale, zero, 64, 32)  # a 3-bit weight
    w = prepared(codes, scale, zero, 64, 32)
    with pytest.raises(DataError, match="must have shape"):
        lut4.gemv_lut4(w, x[:32])
    with pytest.raises(DataError, match="must be >= 1"):
        lut4.gemv_lut4(w, x, tiles_per_task=0)
    with pytest.raises(DataError, match="must be >= 1"):
        lut4.gemv_lut4(w, x, ahead=-1)
