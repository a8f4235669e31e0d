"""Per-group mixed-width packing: round trips, bit-exactness with the reference quantizer, bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.kernels.packing import pack
from mpsearch.kernels.packing_groups import (
    dequantize_groups,
    group_offsets,
    pack_groups,
    packed_groups_bytes,
    quantize_groups,
    unpack_groups,
)
from mpsearch.kernels.quantize import fake_quantize_groups, quantize

SHAPES = [(7, 576, 128), (5, 100, 16), (9, 40, 40), (3, 30, 8), (4, 13, 5)]


def _case(out, K, G, scheme, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = QuantizerConfig(scheme=scheme, group_size=G)
    low = 2 if scheme == "symmetric" else 1
    gb = torch.randint(low, 9, (out, -(-K // G)), generator=gen).to(torch.uint8)
    return torch.randn(out, K, generator=gen), gb, cfg


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
@pytest.mark.parametrize("out,K,G", SHAPES)
def test_round_trip_and_reference_values(out, K, G, scheme):
    w, gb, cfg = _case(out, K, G, scheme)
    qw = quantize_groups(w, gb, cfg)
    packed = pack_groups(qw.codes, gb, G)
    assert torch.equal(unpack_groups(packed, gb, K, G), qw.codes)
    deq = dequantize_groups(packed, qw.scale, qw.zero, gb, K, G)
    assert torch.equal(deq, fake_quantize_groups(w, gb, cfg))  # bit for bit


def test_bytes_are_the_sum_of_group_bytes():
    gb = torch.tensor([[2, 3, 8], [1, 4, 5]], dtype=torch.uint8)  # K=20, G=8: lengths 8, 8, 4
    sizes = [2, 3, 4, 1, 4, 3]  # ceil(len * b / 8) per group, row-major
    assert packed_groups_bytes(gb, 20, 8) == sum(sizes)
    assert group_offsets(gb, 20, 8).tolist() == np.cumsum([0] + sizes).tolist()


def test_one_width_everywhere_is_the_one_width_stream():
    w, _, cfg = _case(6, 64, 16, "affine")
    gb = torch.full((6, 4), 3, dtype=torch.uint8)
    qw = quantize_groups(w, gb, cfg)
    ref = quantize(w, 3, cfg)
    assert torch.equal(qw.codes, ref.codes) and torch.equal(qw.scale, ref.scale)
    assert torch.equal(pack_groups(qw.codes, gb, 16), pack(ref.codes, 3).reshape(-1))


def test_bad_inputs_are_refused():
    w, gb, cfg = _case(3, 32, 8, "affine")
    with pytest.raises(PlanMismatchError, match="16 bits"):
        quantize_groups(w, torch.full((3, 4), 16), cfg)
    codes = torch.full((3, 32), 255, dtype=torch.uint8)
    with pytest.raises(DataError, match=r"\[0, 2\^b - 1\]"):
        pack_groups(codes, gb, 8)
    with pytest.raises(DataError, match="bytes for this width map"):
        unpack_groups(torch.zeros(5, dtype=torch.uint8), gb, 32, 8)
