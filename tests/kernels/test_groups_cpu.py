"""Numba kernels for per-group widths against the reference formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.kernels.packing_groups import dequantize_groups, pack_groups, quantize_groups

pytest.importorskip("numba")
from mpsearch.kernels.groups_cpu import GroupWeight


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
@pytest.mark.parametrize("out,K,G,kernel", [(37, 576, 128, "blocks"), (33, 512, 256, "blocks"),
                                            (5, 100, 16, "codes"), (9, 40, 40, "blocks"),
                                            (17, 300, 24, "codes"),
                                            (1024, 1024, 128, "blocks")])  # decoded in parallel
def test_gemv_and_decode_match_reference(out, K, G, kernel, scheme):
    gen = torch.Generator().manual_seed(out)
    cfg = QuantizerConfig(scheme=scheme, group_size=G)
    gb = torch.randint(2, 9, (out, -(-K // G)), generator=gen).to(torch.uint8)
    qw = quantize_groups(torch.randn(out, K, generator=gen), gb, cfg)
    packed = pack_groups(qw.codes, gb, G)
    ref = dequantize_groups(packed, qw.scale, qw.zero, gb, K, G)
    gw = GroupWeight(packed, qw.scale, qw.zero, gb, K, G)
    assert gw.kernel == kernel
    decoded = gw.dequantize_into(np.empty((out, K), np.float32))
    assert np.array_equal(decoded, ref.numpy())  # bit-exact
    x = torch.randn(K, generator=gen)
    y, y_ref = gw(x.numpy()), (ref.double() @ x.double()).numpy()
    assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max()
    assert np.array_equal(y, gw(x.numpy()))  # deterministic
