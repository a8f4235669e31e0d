"""Kernels of several widths, compiled in different processes, load together from Numba's cache.

Each width's kernel is a closure from one factory. While they shared a qualified name, a width
compiled in a second process could get the same compiled name as one compiled in the first, and
a third process that loaded both from the disk cache failed ("'descr' is NULL").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

SCRIPT = """
import sys
import numpy as np
from mpsearch.kernels import numba_cpu
from mpsearch.kernels.packing import pack

kind, widths = sys.argv[1], [int(b) for b in sys.argv[2].split(",")]
rng = np.random.default_rng(0)
out, K, G = 48, 256, 128
for bits in widths:
    codes = rng.integers(0, 1 << bits, (out, K), dtype=np.uint8)
    scale = (rng.random((out, K // G)) + 0.5).astype(np.float16)
    zero = rng.integers(0, 1 << bits, (out, K // G), dtype=np.uint8)
    x = rng.standard_normal(K).astype(np.float32)
    w = (codes.astype(np.float64).reshape(out, K // G, G) - zero[:, :, None])
    ref = (w * scale.astype(np.float64)[:, :, None]).reshape(out, K) @ x
    packed = pack(codes, bits)
    if kind == "lut":
        y = numba_cpu.GemvWeight(packed, scale, zero, bits, K, G)(x)
    elif kind == "gemm":
        y = numba_cpu.gemm(packed, scale, zero, np.stack([x, x]), bits, K, G)[1]
    else:
        y = numba_cpu.gemv(packed, scale, zero, x, bits, K, G)
    assert np.allclose(y, ref, rtol=1e-4, atol=1e-3), (bits, np.abs(y - ref).max())
"""


def _run(cache: Path, kind: str, widths: str) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, kind, widths], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("kind, first, second", [("gemv", 5, 6), ("gemm", 5, 6), ("lut", 2, 3)])
def test_widths_compiled_in_different_processes_load_together(tmp_path: Path, kind: str,
                                                              first: int, second: int) -> None:
    if kind == "lut":
        from mpsearch.kernels import _numba_lut

        if not _numba_lut.is_supported(first, 256, 128):
            pytest.skip("the LUT kernels need an AVX-512F CPU")
    _run(tmp_path, kind, f"{first}")  # compiles the first width
    _run(tmp_path, kind, f"{first},{second}")  # loads it, compiles the second
    _run(tmp_path, kind, f"{first},{second}")  # loads both
