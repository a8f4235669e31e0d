"""The Numba vector helpers: float16 scales widen to float32 exactly, for every bit pattern,
with the hardware conversion (F16C) and with the integer one used on targets without it."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")
simd = pytest.importorskip("mpsearch.kernels._numba_simd")

ALL_HALVES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)  # every float16 bit pattern


def widen_one_by_one():
    @numba.njit
    def widen(bits):
        out = np.empty(bits.shape[0], np.float32)
        for i in range(bits.shape[0]):
            out[i] = simd.scale_at(bits, i)
        return out
    return widen


def widen_sixteen_at_a_time():
    @numba.njit
    def widen(bits):
        out = np.empty(bits.shape[0], np.float32)
        for i in range(0, bits.shape[0], 16):
            simd.vstore(out, i, simd.vload_scale(bits, i))
        return out
    return widen


@pytest.mark.parametrize("hardware", [True, False], ids=["fpext", "integer"])
@pytest.mark.parametrize("make", [widen_one_by_one, widen_sixteen_at_a_time])
def test_float16_bits_widen_exactly(make, hardware: bool, monkeypatch) -> None:
    if not hardware:  # compile as for a target without F16C (NUMBA_CPU_NAME=generic, ARM)
        monkeypatch.setattr(simd, "target_has", lambda feature: feature != "f16c")
    elif not simd.target_has("f16c"):
        pytest.skip("this CPU has no F16C")
    want = ALL_HALVES.view(np.float16).astype(np.float32)
    got = make()(ALL_HALVES)  # a fresh function: compiled now, under this setting
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(got.view(np.uint32)[finite], want.view(np.uint32)[finite])
    assert np.isnan(got[~finite]).all()
