"""Packed layers: codes bit-exact with the reference quantizer, outputs equal to fake-quant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import DataError, PlanMismatchError, UnknownNameError
from mpsearch.deploy.modules import BACKENDS, QuantConv2d, QuantLinear
from mpsearch.kernels.fake import fake_quantize_model
from mpsearch.kernels.packing import unpack
from mpsearch.kernels.quantize import quantize, weight_matrix

CONFIGS = {
    "sym": QuantizerConfig(),
    "affine-g16-clip": QuantizerConfig(scheme="affine", group_size=16, clip_search=True),
}


class Conv1D(nn.Module):
    """transformers' Conv1D layout ((in, out) weight, ``nf``), without importing transformers."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return y.reshape(*x.shape[:-1], self.nf)


def make_layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(40, 7), torch.randn(3, 5, 40)
    if kind == "conv1d":
        return Conv1D(9, 40), torch.randn(2, 4, 40)
    return nn.Conv2d(5, 6, 3, stride=2, padding=1, bias=False), torch.randn(2, 5, 9, 9)


def quantized(layer: nn.Module, bits: int, config: QuantizerConfig, backend: str) -> nn.Module:
    cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    return cls.from_float(layer, bits, config, backend)


def assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    """Within 1e-5 relative to the largest output (float32 accumulation orders differ)."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert float((y - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_bit_exact_and_outputs_match_fake_quant(config_name: str, kind: str,
                                                      bits: int) -> None:
    config = CONFIGS[config_name]
    layer, x = make_layer(kind)
    ref_q = quantize(weight_matrix(layer.weight.detach(), kind), bits, config)
    fake = fake_quantize_model(nn.Sequential(layer), {"0": bits}, config)[0]
    with torch.no_grad():
        want = fake(x)
        for backend in BACKENDS.names():
            q = quantized(layer, bits, config, backend)
            assert torch.equal(unpack(q.packed, bits, q.K), ref_q.codes)
            assert torch.equal(q.codes(), ref_q.codes)
            assert torch.equal(q.scale, ref_q.scale)
            assert torch.equal(q.zero_points(), ref_q.zero)
            y = q(x)
            if backend == "reference":
                assert torch.equal(y, want)
            assert_close(y, want)


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_state_dict_holds_packed_codes_not_float_weights(kind: str) -> None:
    layer, _ = make_layer(kind)
    for name, config in CONFIGS.items():
        state = quantized(layer, 3, config, "reference").state_dict()
        assert "weight" not in state
        assert state["packed"].dtype == torch.uint8
        assert state["scale"].dtype == torch.float16
        assert ("zero" in state) == (name != "sym")
        if "zero" in state:
            assert state["zero"].dtype == torch.uint8
        floats = {k for k, v in state.items() if v.is_floating_point()}
        assert floats == {"scale"} | ({"bias"} if layer.bias is not None else set())
        K = weight_matrix(layer.weight, kind).shape[1]
        assert state["packed"].shape[1] == -(-K * 3 // 8)


def test_repr_shows_geometry() -> None:
    q = QuantLinear.from_float(nn.Linear(16, 4), 4, CONFIGS["affine-g16-clip"], "torch")
    text = repr(q)
    for part in ("bits=4", "K=16", "G=16", "kind=linear", "backend=torch"):
        assert part in text


def test_grouped_conv_runs_on_reference_and_is_refused_by_packed_backends() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    x = torch.randn(2, 4, 6, 6)
    q = QuantConv2d.from_float(conv, 4, QuantizerConfig(), "reference")
    fake = fake_quantize_model(nn.Sequential(conv), {"0": 4})[0]
    with torch.no_grad():
        assert torch.equal(q(x), fake(x))
    for backend in ("numba", "torch"):
        with pytest.raises(PlanMismatchError, match="groups=1"):
            QuantConv2d.from_float(conv, 4, QuantizerConfig(), backend)


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="'numba', 'reference', 'torch'.*backend='cuda'"):
        QuantLinear.from_float(nn.Linear(4, 2), 4, backend="cuda")


def test_bad_kind_is_refused() -> None:
    with pytest.raises(DataError, match="QuantConv2d"):
        QuantLinear(2, 4, 4, QuantizerConfig(), kind="conv2d")


def test_numba_chunks_large_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpsearch.kernels import backends

    monkeypatch.setattr(backends, "NUMBA_ROWS", 7)
    layer = nn.Linear(24, 5)
    x = torch.randn(30, 24)
    q = QuantLinear.from_float(layer, 3, QuantizerConfig(), "numba")
    ref = QuantLinear.from_float(layer, 3, QuantizerConfig(), "reference")
    with torch.no_grad():
        assert_close(q(x), ref(x))
