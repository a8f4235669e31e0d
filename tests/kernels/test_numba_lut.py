"""The AVX-512 table-lookup GEMVs (2, 3 and 4 bits) against a float64 reference: shapes, every
code at every position, thread counts, tuning knobs, edge codes and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from _gemv_cases import assert_close, make_case, reference

from mpsearch.core.errors import DataError
from mpsearch.kernels.packing import pack

numba = pytest.importorskip("numba")
lut = pytest.importorskip("mpsearch.kernels._numba_lut")

BITS = sorted(lut.WIDTHS)
needs_avx512 = pytest.mark.skipif(not lut.is_supported(2, 32, None),
                                  reason="the LUT kernels need an AVX-512F CPU")


def prepared(bits: int, codes, scale, zero, K: int, G: int | None, **layout):
    return lut.prepare_lut(pack(codes, bits), scale, zero, bits, K, G, **layout)


def gemv(bits: int, w, x, **knobs):
    assert w.bits == bits  # the weight picks its driver
    return lut.gemv_lut(w, x, **knobs)


def test_width_table() -> None:
    """Runs of 16 positions (32 at 3 bits, whose 1-bit plane words cover 32), each width's
    split giving its number of index words per run, a driver of its own per width."""
    assert BITS == [2, 3, 4]
    assert {b: (w.run, w.words) for b, w in lut.WIDTHS.items()} == {2: (16, 1), 3: (32, 3),
                                                                     4: (16, 2)}
    for bits, width in lut.WIDTHS.items():
        codes = np.random.default_rng(bits).integers(0, 1 << bits, (3, 64), dtype=np.uint8)
        assert width.split(pack(codes, bits)).shape == (3, 64 // width.run, width.words)
        assert lut.DRIVERS[bits].__name__ == f"gemv{bits}"


@pytest.mark.parametrize("bits", BITS)
def test_is_supported_rejects_unaligned_shapes(bits: int) -> None:
    m = lut.WIDTHS[bits].run

    def sup(K: int, G: int | None) -> bool:
        return lut.is_supported(bits, K, G)

    assert not sup(100, None)  # K not a multiple of 16
    assert not sup(128, 24)  # G not a multiple of 16
    assert not sup(0, None) and not sup(8, None)
    assert sup(48, None) == (m == 16 and sup(32, None))  # 48: a multiple of 16, not of 32


@pytest.mark.parametrize("bits", [1, 5, 8])
def test_other_widths_are_not_lut_widths(bits: int) -> None:
    assert not lut.is_supported(bits, 256, 128)
    codes = np.zeros((4, 256), np.uint8)
    with pytest.raises(DataError, match=r"`bits` must be one of \[2, 3, 4\].*numba_cpu.gemv"):
        lut.prepare_lut(pack(codes, bits), np.ones((4, 2), np.float16),
                        np.zeros((4, 2), np.uint8), bits, 256, 128)


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("out, K, G", [
    (37, 128, 32), (16, 32, None), (5, 32, 32), (33, 4096, 128), (50, 4096, 64),
    (20, 128, None), (19, 4096, None),
    (21, 416, 64), (9, 4064, 128),  # last group shorter than G
    (24, 4096, 1024),  # groups span several K-blocks
])
@pytest.mark.parametrize("scale_dtype", [np.float16, np.float32])
def test_matches_reference(bits: int, out: int, K: int, G: int | None, scale_dtype: type) -> None:
    codes, scale, zero, x, ref = make_case(bits, out, K, G, scale_dtype, seed=out + K)
    assert_close(gemv(bits, prepared(bits, codes, scale, zero, K, G), x), ref)


@needs_avx512
@pytest.mark.parametrize("bits", [2, 4])
def test_multiples_of_16(bits: int) -> None:
    codes, scale, zero, x, ref = make_case(bits, 7, 48, 16, seed=bits)
    assert_close(gemv(bits, prepared(bits, codes, scale, zero, 48, 16), x), ref)


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
def test_each_bit_of_each_position_lands_in_its_table(bits: int) -> None:
    """One nonzero code per row, at every position and bit: y picks out code * x[k] exactly."""
    K = 64
    values = sorted({1 << b for b in range(bits)} | {(1 << bits) - 1})
    rows = [(k, c) for k in range(K) for c in values]
    codes = np.zeros((len(rows), K), np.uint8)
    for r, (k, c) in enumerate(rows):
        codes[r, k] = c
    x = (np.arange(K, dtype=np.float32) + 1) / 8
    ones, zeros = np.ones((len(rows), 1), np.float32), np.zeros((len(rows), 1), np.uint8)
    y = gemv(bits, prepared(bits, codes, ones, zeros, K, None), x)
    np.testing.assert_array_equal(y, np.array([c * x[k] for k, c in rows], np.float32))


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
def test_same_result_for_any_threads_and_tasks(bits: int) -> None:
    codes, scale, zero, x, ref = make_case(bits, 200, 1024, 128, seed=3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = gemv(bits, prepared(bits, codes, scale, zero, 1024, 128), x, workers=1)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = gemv(bits, prepared(bits, codes, scale, zero, 1024, 128, tiles_per_task=1), x,
                   workers=2)
        three = gemv(bits, prepared(bits, codes, scale, zero, 1024, 128, tiles_per_task=5), x,
                     workers=2)
    finally:
        numba.set_num_threads(before)
    assert_close(one, ref)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
def test_tables_built_in_parts_by_more_workers_than_threads(bits: int) -> None:
    """The workers build the x tables in parts (512 positions; here 3, the last one short) and
    wait for all of them: with more workers than threads nobody waits for a part that no running
    worker holds, and the result does not depend on who built what."""
    codes, scale, zero, x, ref = make_case(bits, 70, 1056, 32, seed=4)
    w = prepared(bits, codes, scale, zero, 1056, 32, tiles_per_task=2)
    before = numba.get_num_threads()
    try:
        got = []
        for threads, workers in ((1, 1), (1, 3), (2, 2), (2, 5)):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            got.append(gemv(bits, w, x, workers=workers))
    finally:
        numba.set_num_threads(before)
    assert_close(got[0], ref)
    for other in got[1:]:
        np.testing.assert_array_equal(other, got[0])


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("block_runs, ahead", [(1, 0), (3, 16), (32, 2048), (1000, 0)])
@pytest.mark.parametrize("G", [64, 256, None])
def test_tuning_knobs_keep_results(bits: int, block_runs: int, ahead: int, G: int | None) -> None:
    """K-blocks that split groups or cover all of K, with and without prefetching, in tasks
    whose last one is short."""
    codes, scale, zero, x, ref = make_case(bits, 45, 1024, G, seed=block_runs)
    w = prepared(bits, codes, scale, zero, 1024, G, block_runs=block_runs, tiles_per_task=2)
    assert_close(gemv(bits, w, x, workers=2, ahead=ahead), ref)


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
def test_layout_is_the_read_order(bits: int) -> None:
    """Each task's codes are one contiguous stream, K-block by K-block; within a block the
    tiles go in pairs whose two tiles alternate run by run, an odd last tile alone. Its scales
    and zero-points are one stream too, group by group."""
    K, T, br = 256, 3, 3
    codes, scale, zero, _, _ = make_case(bits, 80, K, 64, seed=1)  # 5 tiles: tasks of 3 and 2
    plain = prepared(bits, codes, scale, zero, K, 64, block_runs=1000, tiles_per_task=1)
    w = prepared(bits, codes, scale, zero, K, 64, block_runs=br, tiles_per_task=T)
    runs = K // lut.WIDTHS[bits].run
    tiles = plain.idx.reshape(5, runs, -1)  # one tile per task and block: plain tile order
    expected = []
    for t0 in (0, 3):
        for b in range(0, runs, br):
            block = tiles[t0:min(5, t0 + T), b:b + br]
            expected.append(np.stack([block[0], block[1]], axis=1).reshape(-1))  # the pair
            if len(block) == 3:
                expected.append(block[2].reshape(-1))  # the odd last tile
    np.testing.assert_array_equal(w.idx, np.concatenate(expected))
    for got, given in ((w.scale, scale.view(np.uint16)), (w.zero, zero)):
        per_tile = given.T.reshape(K // 64, 5, 16)  # (group, tile, row in tile), 80 rows
        by_task = [per_tile[:, :3], per_tile[:, 3:]]  # task, then group, then tile
        np.testing.assert_array_equal(got, np.concatenate([a.reshape(-1) for a in by_task]))


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
def test_all_equal_codes(bits: int) -> None:
    out, K, G = 18, 256, 64
    for code in range(1 << bits):
        rng = np.random.default_rng(code)
        codes = np.full((out, K), code, np.uint8)
        scale = (rng.random((out, K // G)) + 0.5).astype(np.float16)
        x = rng.standard_normal(K).astype(np.float32)
        zero = np.zeros((out, K // G), np.uint8)
        y = gemv(bits, prepared(bits, codes, scale, zero, K, G), x)
        if code:
            assert_close(y, reference(codes, scale, zero, x, G))
        else:
            np.testing.assert_array_equal(y, np.zeros(out, np.float32))
        # zero == code: every weight is 0, so y is 0 up to float32 rounding of the two terms.
        zero = np.full((out, K // G), code, np.uint8)
        y = gemv(bits, prepared(bits, codes, scale, zero, K, G), x)
        bound = 1e-5 * ((1 << bits) - 1) * float(scale.astype(np.float64).max()) * np.abs(x).sum()
        assert np.abs(y).max() <= bound


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
def test_padding_rows_do_not_leak(bits: int) -> None:
    codes, scale, zero, x, ref = make_case(bits, 17, 64, 32, seed=9)
    y = gemv(bits, prepared(bits, codes, scale, zero, 64, 32), x)
    assert y.shape == (17,)
    assert_close(y, ref)
    assert gemv(bits, prepared(bits, codes[:0], scale[:0], zero[:0], 64, 32), x).shape == (0,)


@needs_avx512
@pytest.mark.parametrize("bits", BITS)
def test_rejects_bad_inputs(bits: int) -> None:
    codes, scale, zero, x, _ = make_case(bits, 4, 64, 32)

    def prepare(packed, scale, zero, K, G):
        return lut.prepare_lut(packed, scale, zero, bits, K, G)

    with pytest.raises(DataError, match="multiples of"):
        prepare(pack(codes[:, :60], bits), scale, zero, 60, None)
    with pytest.raises(DataError, match="multiples of"):
        prepare(pack(codes, bits), scale, zero, 64, 24)
    with pytest.raises(DataError, match="needs packed"):
        prepare(pack(codes, bits), scale[:, :1], zero, 64, 32)
    with pytest.raises(DataError, match=rf"pack\(codes, {bits}\)"):
        prepare(pack(codes & 1, 1), scale, zero, 64, 32)  # a 1-bit weight
    w = prepared(bits, codes, scale, zero, 64, 32)
    with pytest.raises(DataError, match="must have shape"):
        gemv(bits, w, x[:32])
    with pytest.raises(DataError, match="must be >= 1"):
        gemv(bits, w, x, workers=0)
    with pytest.raises(DataError, match="`ahead` >= 0"):
        gemv(bits, w, x, ahead=-1)
    for knob in ("tiles_per_task", "block_runs"):
        with pytest.raises(DataError, match=f"`{knob}` must be an integer >= 1"):
            prepared(bits, codes, scale, zero, 64, 32, **{knob: 0})
