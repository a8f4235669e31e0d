"""Kernel choice of packed layers on the numba backend: right kernel, prepared once, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.plan import BitPlan
from mpsearch.deploy import dispatch
from mpsearch.deploy.apply import apply, set_backend
from mpsearch.deploy.modules import QuantConv2d, QuantLinear
from mpsearch.kernels import _numba_lut
from mpsearch.kernels.fake import fake_quantize_model


def close(y: torch.Tensor, ref: torch.Tensor) -> bool:
    return y.shape == ref.shape and float((y - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("rows", [1, 3, dispatch.DEQUANT_ROWS, 40])
def test_every_route_matches_fake_quant(bits: int, rows: int) -> None:
    torch.manual_seed(bits)
    layer, config = nn.Linear(64, 48), QuantizerConfig(group_size=32)
    ref = fake_quantize_model(nn.Sequential(layer), {"0": bits}, config)[0]
    q = QuantLinear.from_float(layer, bits, config, backend="numba")
    x = torch.randn(rows, 64)
    with torch.no_grad():
        assert close(q(x), ref(x))
        assert close(q(x[:, None, :]), ref(x[:, None, :]))  # (rows, 1, K): rows after flattening


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_decode_calls_use_the_lut_kernel_prepared_once(bits: int) -> None:
    q = QuantLinear.from_float(nn.Linear(64, 32), bits, QuantizerConfig(), backend="numba")
    first = dispatch.prepare(q)
    q(torch.randn(1, 64))
    assert dispatch.prepare(q) is first
    want = f"lut{bits}" if _numba_lut.is_supported(bits, 64, None) else "rows"
    assert first.kernel == want


def test_other_widths_and_odd_k_use_the_row_kernel() -> None:
    for bits, K in ((5, 64), (2, 40)):
        q = QuantLinear.from_float(nn.Linear(K, 8), bits, QuantizerConfig(), backend="numba")
        assert dispatch.prepare(q).kernel == "rows"


def test_reloaded_buffers_are_not_served_from_the_old_prepared_weight() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(64, 16), nn.Linear(64, 16)
    qa = QuantLinear.from_float(a, 4, QuantizerConfig(), backend="numba")
    qb = QuantLinear.from_float(b, 4, QuantizerConfig(), backend="numba")
    x = torch.randn(1, 64)
    with torch.no_grad():
        qa(x)
        qa.load_state_dict(qb.state_dict())
        assert torch.equal(qa(x), qb(x))


def test_apply_and_set_backend_prepare_the_decode_weight() -> None:
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    q = apply(net, BitPlan(bits={"0": 2, "2": 4}), backend="numba")
    assert "_gemv" in q[0].__dict__ and "_gemv" in q[2].__dict__
    t = apply(net, BitPlan(bits={"0": 2, "2": 4}), backend="torch")
    assert dispatch.prepare(t[0]) is None
    set_backend(t, "numba")
    assert dispatch.prepare(t[0]) is not None


def test_conv_runs_torch_conv_on_the_decoded_weight_with_and_without_grad() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    ref = fake_quantize_model(nn.Sequential(conv), {"0": 3}, QuantizerConfig())[0]
    q = QuantConv2d.from_float(conv, 3, QuantizerConfig(), backend="numba")
    x = torch.randn(5, 8, 10, 10, requires_grad=True)
    y = q(x)
    y.sum().backward()  # the decoded weight autograd keeps is not the reused scratch buffer
    assert close(y.detach(), ref(x).detach())
    with torch.no_grad():
        assert close(q(x[:1]), ref(x[:1]))
        assert close(q(x), ref(x))


def test_prebound_decode_follows_new_codes_and_a_moved_scratch_buffer() -> None:
    from mpsearch.kernels.dequant import release_scratch, scratch

    torch.manual_seed(2)
    small, other = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
    q = QuantConv2d.from_float(small, 4, QuantizerConfig(), backend="numba")
    qo = QuantConv2d.from_float(other, 4, QuantizerConfig(), backend="numba")
    ref = fake_quantize_model(nn.Sequential(other), {"0": 4}, QuantizerConfig())[0]
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        first = q(x)
        assert "_dense" in q.__dict__ and torch.equal(q(x), first)
        scratch(10**6, torch.device("cpu")).fill_(float("nan"))  # the buffer grows: new storage
        assert torch.equal(q(x), first)
        release_scratch()
        assert torch.equal(q(x), first)
        q.packed = qo.packed.clone()  # buffers replaced outright, without load_state_dict
        q.scale, q.bias = qo.scale.clone(), qo.bias
        assert close(q(x), ref(x))


@pytest.mark.parametrize(("choices", "scheme"), [((2, 3, 4), "affine"), ((2, 3), "symmetric"),
                                                 ((2, 5), "affine")])
def test_group_widths_run_one_row_on_the_widest_lut_kernel(choices, scheme) -> None:
    from mpsearch.deploy.group_modules import GroupQuantLinear
    from mpsearch.kernels.groups_cpu import GroupWeight

    torch.manual_seed(3)
    config = QuantizerConfig(group_size=32, scheme=scheme)
    layer = nn.Linear(96, 40)
    gb = torch.from_numpy(np.random.default_rng(0).choice(choices, (40, 3)).astype(np.uint8))
    q = GroupQuantLinear.from_float(layer, gb, config, backend="numba")
    ref = GroupQuantLinear.from_float(layer, gb, config, backend="reference")
    widest = max(choices)
    gemv = dispatch.prepare(q)
    if widest <= 4 and _numba_lut.is_supported(widest, 96, 32):
        assert gemv.kernel == f"lut{widest}"
    else:
        assert isinstance(gemv, GroupWeight)
    x = torch.randn(dispatch.DEQUANT_ROWS, 96)
    with torch.no_grad():
        assert close(q(x[:1]), ref(x[:1]))
        assert close(q(x), ref(x))  # more rows: the decoded weight, not the LUT layout


def test_one_token_shortcut_checks_what_it_skips() -> None:
    torch.manual_seed(4)
    a, b = nn.Linear(64, 16), nn.Linear(64, 16)
    qa = QuantLinear.from_float(a, 4, QuantizerConfig(), backend="numba")
    qb = QuantLinear.from_float(b, 4, QuantizerConfig(), backend="numba")
    ref = QuantLinear.from_float(a, 4, QuantizerConfig(), backend="reference")
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        assert close(qa(x), ref(x))  # the first call prepares the one-row weight
        assert dispatch.one_row(qa, x) is not None and close(qa(x), ref(x))
        assert dispatch.one_row(qa, x.double()) is None and dispatch.one_row(qa, x[..., :32]) is None
        qa.packed, qa.scale = qb.packed.clone(), qb.scale.clone()  # replaced, not reloaded
        assert dispatch.one_row(qa, x) is None
        qa.bias = qb.bias
        assert close(qa(x), qb(x))  # the slow path re-prepared from the new buffers
        assert dispatch.one_row(qa, x) is not None
    xg = torch.randn(1, 64, requires_grad=True)
    assert dispatch.one_row(qb, xg) is None
    assert close(qb(xg).detach(), qb(xg.detach()))


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_layers_decode_a_tile_of_rows_at_a_time(monkeypatch, grouped, dtype) -> None:
    """Above TILE_ELEMENTS weights a token block decodes the weight in tiles of rows into a
    scratch buffer of one tile (a last tile cut short included), with the whole-weight path's
    outputs."""
    from mpsearch.deploy.group_modules import GroupQuantLinear
    from mpsearch.kernels.dequant import release_scratch, scratch_buffer

    torch.manual_seed(5)
    config = QuantizerConfig(group_size=32)
    layer = nn.Linear(96, 40)
    if grouped:
        gb = torch.from_numpy(np.random.default_rng(1).choice((2, 3, 4, 6), (40, 3)).astype(np.uint8))
        q = GroupQuantLinear.from_float(layer, gb, config, backend="numba")
        ref = GroupQuantLinear.from_float(layer, gb, config, backend="reference")
    else:
        q = QuantLinear.from_float(layer, 3, config, backend="numba")
        ref = fake_quantize_model(nn.Sequential(layer), {"0": 3}, config)[0]
    q, ref = q.to(dtype), ref.to(dtype)
    x = torch.randn(dispatch.DEQUANT_ROWS + 3, 96, dtype=dtype)
    with torch.no_grad():
        whole = q(x)
        monkeypatch.setattr(dispatch, "TILE_ELEMENTS", 96 * 7)  # tiles of 7 rows, the last of 5
        release_scratch()
        tiled = q(x)
        assert scratch_buffer(torch.device("cpu")).numel() * 4 <= 96 * 7 * x.element_size()
        assert close(tiled.float(), whole.float())
        assert tiled.dtype == dtype
        if dtype == torch.float32:
            assert close(tiled, ref(x))
