"""Shared by the batch-1 kernel tests: random packed-weight cases and their float64 reference."""

from __future__ import annotations

import numpy as np


def make_case(bits: int, out: int, K: int, G: int | None, scale_dtype: type = np.float16,
              seed: int = 0):
    """Random ``bits``-bit codes, scales, zeros and x; the float64 reference y = W x."""
    rng = np.random.default_rng(seed)
    ng = 1 if G is None else -(-K // G)
    codes = rng.integers(0, 1 << bits, (out, K), dtype=np.uint8)
    scale = (rng.random((out, ng)) * 0.1 + 0.01).astype(scale_dtype)
    zero = rng.integers(0, 1 << bits, (out, ng), dtype=np.uint8)
    x = rng.standard_normal(K).astype(np.float32)
    return codes, scale, zero, x, reference(codes, scale, zero, x, G)


def reference(codes, scale, zero, x, G):
    """y = W x in float64 with W = (code - zero) * scale per group of G inputs."""
    group_of = np.arange(codes.shape[1]) // (codes.shape[1] if G is None else G)
    w = (codes.astype(np.float64) - zero[:, group_of]) * scale.astype(np.float64)[:, group_of]
    return w @ x.astype(np.float64)


def assert_close(y: np.ndarray, ref: np.ndarray) -> None:
    """Max error within 1e-5 of the largest |y| (float32 accumulation)."""
    assert y.shape == ref.shape and y.dtype == np.float32
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
