"""The operand checks shared by the packed backends: the one-step common case agrees with the full check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.errors import BitsOutOfRangeError, DataError
from mpsearch.kernels._operands import _fast_shape, check_activations, check_operands
from mpsearch.kernels.packing import pack


@pytest.mark.parametrize("bits", [1, 3, 8])
@pytest.mark.parametrize("G", [None, 32, 128, 300, 512])
@pytest.mark.parametrize("scale_dtype", [np.float16, np.float32])
def test_fast_path_returns_the_full_checks_shape(bits: int, G: int | None,
                                                 scale_dtype: type) -> None:
    K = 300
    n_groups = 1 if G is None else -(-K // G)
    packed = pack(np.zeros((5, K), np.uint8), bits)
    scale, zero = np.ones((5, n_groups), scale_dtype), np.zeros((5, n_groups), np.uint8)
    fast = _fast_shape(packed, scale, zero, bits, K, G)
    assert fast is not None
    assert fast == check_operands(torch.from_numpy(packed), torch.from_numpy(scale),
                                  torch.from_numpy(zero), np.int64(bits), np.int64(K), G)


def test_fast_path_declines_what_it_does_not_know() -> None:
    packed = pack(np.zeros((5, 300), np.uint8), 4)
    scale, zero = np.ones((5, 3), np.float16), np.zeros((5, 3), np.uint8)
    assert _fast_shape(packed, scale, zero, 4, 300, 128) is not None
    for args in [(packed, scale, zero, True, 300, 128), (packed, scale, zero, 4, 300.0, 128),
                 (packed, scale, zero, 4, 300, 0), (packed, scale, zero, 9, 300, 128),
                 (packed, scale, zero, 3, 300, 128), (packed, scale, zero, 4, 300, 32),
                 (packed, scale.astype(np.float64), zero, 4, 300, 128),
                 (packed, scale, zero.astype(np.int8), 4, 300, 128),
                 (torch.from_numpy(packed), scale, zero, 4, 300, 128)]:
        assert _fast_shape(*args) is None


def test_invalid_operands_still_raise_the_full_message() -> None:
    packed = pack(np.zeros((5, 300), np.uint8), 4)
    scale, zero = np.ones((5, 3), np.float16), np.zeros((5, 3), np.uint8)
    with pytest.raises(BitsOutOfRangeError, match="within 1..8"):
        check_operands(packed, scale, zero, True, 300, 128)
    with pytest.raises(DataError, match="`K` .* must be an integer >= 1"):
        check_operands(packed, scale, zero, 4, 300.0, 128)
    with pytest.raises(DataError, match="`scale` must have shape"):
        check_operands(packed, scale[:, :2], zero, 4, 300, 128)


def test_activations_fast_and_full_paths() -> None:
    check_activations(np.ones((2, 7), np.float32), 7)
    check_activations(np.ones(7, np.float64), 7)
    check_activations(torch.ones(7, dtype=torch.bfloat16), 7)
    with pytest.raises(DataError, match="last dimension is K=7"):
        check_activations(np.ones(6, np.float32), 7)
    with pytest.raises(DataError, match="floating array"):
        check_activations(np.ones(7, np.int32), 7)
    with pytest.raises(DataError, match="floating array"):
        check_activations(np.float32(1.0) * np.ones(()), 1)
