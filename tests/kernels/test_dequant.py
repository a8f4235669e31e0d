"""Decoding a packed weight into a caller's buffer: bit-exact with the reference formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import DataError
from mpsearch.kernels.dequant import PARALLEL_ELEMENTS, dequantize_into, scratch
from mpsearch.kernels.numba_cpu import _numba_module, is_available
from mpsearch.kernels.packing import pack
from mpsearch.kernels.quantize import dequantize, quantize


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize(("K", "G"), [(45, None), (64, 16), (60, 12), (37, 5)])
def test_bit_exact_with_reference_dequantize(bits: int, K: int, G: int | None) -> None:
    torch.manual_seed(bits * K)
    config = QuantizerConfig(scheme="affine", group_size=G)
    qw = quantize(torch.randn(9, K), bits, config)
    out = torch.full((9, K), float("nan"))
    got = dequantize_into(pack(qw.codes, bits), qw.scale, qw.zero, bits, K, G, out)
    assert got is out
    assert torch.equal(got, dequantize(qw))


def test_large_weight_on_the_parallel_kernel_is_bit_exact() -> None:
    torch.manual_seed(0)
    rows = PARALLEL_ELEMENTS // 256 + 1
    qw = quantize(torch.randn(rows, 256), 3, QuantizerConfig(group_size=128))
    got = dequantize_into(pack(qw.codes, 3), qw.scale, qw.zero, 3, 256, 128)
    assert torch.equal(got, dequantize(qw))


def test_wrong_out_buffer_is_refused() -> None:
    qw = quantize(torch.randn(4, 8), 4)
    with pytest.raises(DataError, match=r"`out` must be a contiguous float32 tensor of shape"):
        dequantize_into(pack(qw.codes, 4), qw.scale, qw.zero, 4, 8, None, torch.empty(4, 9))


def test_scratch_is_reused_and_grows() -> None:
    a = scratch(100, torch.device("cpu"))
    b = scratch(50, torch.device("cpu"))
    assert b.data_ptr() == a.data_ptr() and b.numel() == 50
    c = scratch(1 << 16, torch.device("cpu"))
    assert c.numel() == 1 << 16 and scratch(10, torch.device("cpu")).data_ptr() == c.data_ptr()


@pytest.mark.skipif(not is_available(), reason="needs numba")
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize(("K", "G"), [(45, 45), (64, 16), (60, 12), (37, 5), (300, 128)])
def test_bfloat16_decoding_rounds_like_torch(bits: int, K: int, G: int) -> None:
    """Both decoders' bfloat16 outputs are the float32 reference rounded by ``.to``, for
    groups that start inside a byte (G 5, 12) and a last group cut short (300 = 2 x 128 + 44)."""
    torch.manual_seed(bits + K)
    qw = quantize(torch.randn(5, K), bits, QuantizerConfig(scheme="affine", group_size=G))
    want = dequantize(qw).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    for parallel in (False, True):
        out = np.zeros((5, K), np.uint16)
        kernel = _numba_module("_numba_dequant").make_dequantize(bits, parallel, True)
        kernel(pack(qw.codes, bits).numpy(), qw.scale.float().numpy(), qw.zero.numpy(), G, out)
        assert np.array_equal(out, want)
