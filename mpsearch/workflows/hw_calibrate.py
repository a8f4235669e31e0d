"""Measure this machine: latency tables of our Numba kernels, and a CPU roofline.

:func:`calibrate` times ``mpsearch.kernels.numba_cpu.gemm`` (``gemv`` for batch 1) on random
packed weights for every (bits, shape, batch) of a grid and returns a
:class:`~mpsearch.hardware_models.lut.LUTLatencyModel`; :func:`write_table` saves it atomically.
``mpsearch hw calibrate --out lut.json`` does both. :func:`measure_cpu` gives the ``cpu-local``
roofline device from a float32 matmul and a large copy. Timing code lives here, outside
:mod:`mpsearch.hardware_models`, because it needs numba and torch.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.core.errors import ConfigError
from mpsearch.core.io import atomic_write_text
from mpsearch.hardware_models.devices import Device, cpu_local
from mpsearch.hardware_models.lut import LUTLatencyModel

#: (out, K) weight matrices, increasing in out*K: CIFAR ResNet im2col shapes up to MiniLM's MLP.
DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((16, 144), (32, 288), (64, 576), (384, 384), (384, 1536), (1024, 1024))
DEFAULT_BATCHES: tuple[int, ...] = (1, 16, 64, 256, 1024)
DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 8)
QUICK_SHAPES: tuple[tuple[int, int], ...] = ((16, 144), (64, 576), (384, 1536))
QUICK_BATCHES: tuple[int, ...] = (1, 64, 1024)
QUICK_BITS: tuple[int, ...] = (2, 4, 8)


def time_call(fn: Callable[[], Any], *, min_seconds: float = 0.05, min_repeats: int = 3,
              max_repeats: int = 50, statistic: str = "min") -> float:
    """Wall time (ms) of ``fn()`` after one warm-up call (which also JIT-compiles).

    ``statistic`` "min" (default) or "median" of the repeats. The minimum is the time without
    interference: on a shared machine the higher times come from other processes (the advice
    of Python's ``timeit``), and it is the statistic that stays stable under load.
    """
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_seconds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    if statistic not in ("min", "median"):
        raise ConfigError(f"`statistic` must be 'min' or 'median', but got {statistic!r}.")
    return float((np.min(times) if statistic == "min" else np.median(times)) * 1e3)


def packed_operands(out: int, K: int, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Random packed codes, float16 scales and uint8 zero-points of an (out, K) matrix, one group per row."""
    from mpsearch.kernels.packing import pack

    codes = rng.integers(0, 1 << bits, size=(out, K), dtype=np.uint8)
    scale = (rng.random((out, 1)) * 0.01 + 0.001).astype(np.float16)
    zero = np.full((out, 1), 1 << (bits - 1), np.uint8)
    return pack(codes, bits), scale, zero


def kernel_ms(out: int, K: int, bits: int, batch: int, *, rng: np.random.Generator | None = None,
              min_seconds: float = 0.05) -> float:
    """Median ms of one packed matmul of ``batch`` rows through the (out, K) ``bits``-bit weight."""
    from mpsearch.kernels.numba_cpu import gemm, gemv

    rng = rng or np.random.default_rng(0)
    packed, scale, zero = packed_operands(out, K, bits, rng)
    x = rng.standard_normal((batch, K)).astype(np.float32)
    if batch == 1:
        return time_call(lambda: gemv(packed, scale, zero, x[0], bits, K, None), min_seconds=min_seconds)
    return time_call(lambda: gemm(packed, scale, zero, x, bits, K, None), min_seconds=min_seconds)


#: (in_ch, out_ch, height) of 3x3 stride-1 convolutions whose im2col glue is timed: the CIFAR
#: ResNet stages, and larger ones so bigger models interpolate rather than extrapolate.
IM2COL_SHAPES: tuple[tuple[int, int, int], ...] = (
    (32, 64, 8), (3, 16, 32), (64, 64, 8), (32, 32, 16), (16, 16, 32), (64, 64, 32), (128, 128, 32))


def im2col_table(*, min_seconds: float = 0.05) -> dict[str, list[float]]:
    """Time the glue of the packed convolution around its kernel call (unfold, copy the columns to
    (rows, K), bring the (rows, out) result back to NCHW) for each of :data:`IM2COL_SHAPES`.

    Returns ``{"elements": [...], "ms": [...]}`` sorted by ``elements = rows * (K + out)``.
    """
    import torch
    import torch.nn.functional as F

    points = []
    for cin, cout, hw in IM2COL_SHAPES:
        x = torch.randn(1, cin, hw, hw)
        y = torch.randn(hw * hw, cout)

        def glue(x: Any = x, y: Any = y, cin: int = cin, cout: int = cout, hw: int = hw) -> None:
            cols = F.unfold(x, (3, 3), padding=1).transpose(1, 2).reshape(-1, cin * 9)
            np.ascontiguousarray(cols.numpy())
            y.reshape(-1, hw * hw, cout).transpose(1, 2).reshape(1, cout, hw, hw).contiguous()

        points.append((hw * hw * (cin * 9 + cout), time_call(glue, min_seconds=min_seconds)))
    points.sort()
    return {"elements": [float(e) for e, _ in points], "ms": [float(m) for _, m in points]}


def machine_info(threads: int) -> dict[str, Any]:
    import numba

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numba": numba.__version__,
            "numba_threads": threads, "kernel": "mpsearch.kernels.numba_cpu.gemm (gemv at batch 1)",
            "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def calibrate(*, shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES, batches: Sequence[int] = DEFAULT_BATCHES,
              bits: Sequence[int] = DEFAULT_BITS, threads: int = 1, seed: int = 0, min_seconds: float = 0.05,
              quick: bool = False, progress: Callable[[str], None] | None = None) -> LUTLatencyModel:
    """Time the Numba kernels over the grid and return the table (``quick``: the small grid).

    ``threads`` Numba (and torch) threads are used while timing (1 by default: stable on a shared machine);
    predictions are valid for that thread count only.
    """
    import numba

    if quick:
        shapes, batches, bits, min_seconds = QUICK_SHAPES, QUICK_BATCHES, QUICK_BITS, min(min_seconds, 0.02)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ConfigError(f"`threads` must be within 1..{numba.config.NUMBA_NUM_THREADS}, but got threads={threads!r}. "
                          "Pass --threads 1.")
    shapes = sorted((int(o), int(k)) for o, k in shapes)
    import torch

    previous, previous_torch = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    ms = np.zeros((len(bits), len(shapes), len(batches)))
    try:
        for j, b in enumerate(bits):
            for i, (out, K) in enumerate(shapes):
                for k, batch in enumerate(batches):
                    ms[j, i, k] = kernel_ms(out, K, int(b), int(batch), rng=rng, min_seconds=min_seconds)
                if progress:
                    progress(f"bits={b} shape=({out}, {K}): " + ", ".join(f"{v:.3g}" for v in ms[j, i]) + " ms")
        glue = im2col_table(min_seconds=min_seconds)
    finally:
        numba.set_num_threads(previous)
        torch.set_num_threads(previous_torch)
    return LUTLatencyModel(bits=tuple(int(b) for b in bits), shapes=shapes, batches=tuple(int(b) for b in batches),
                           ms=ms, machine=machine_info(threads), im2col=glue)


def write_table(model: LUTLatencyModel, path: str | os.PathLike[str]) -> Path:
    """Save a latency table as JSON, atomically."""
    return atomic_write_text(path, json.dumps(model.to_dict(), indent=1, sort_keys=True) + "\n")


def measure_cpu(*, n: int = 1024, copy_mib: int = 256) -> Device:
    """The ``cpu-local`` roofline device: float32 matmul peak (GFLOPS) and copy bandwidth (GB/s), best of 3."""
    a = np.ones((n, n), np.float32)
    flops = 2.0 * n**3 / (min(_once(lambda: a @ a) for _ in range(3)))
    src = np.ones(copy_mib * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    seconds = min(_once(lambda: np.copyto(dst, src)) for _ in range(3))
    return cpu_local(peak_gflops=flops / 1e9, bandwidth_gbs=2.0 * src.nbytes / seconds / 1e9)


def _once(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
