"""A packed model cast with ``.to(dtype)``: quantized weights unchanged, compute in the input's dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.plan import BitPlan
from mpsearch.deploy import dispatch
from mpsearch.deploy.apply import apply
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.modules import QuantConv2d, QuantLinear


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("backend", ["reference", "torch", "numba"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_keeps_scales_and_computes_in_the_input_dtype(backend, dtype) -> None:
    torch.manual_seed(0)
    layer, config = nn.Linear(64, 32), QuantizerConfig(group_size=32)
    for rows in (1, 3, dispatch.DEQUANT_ROWS + 4):
        q = QuantLinear.from_float(layer, 4, config, backend=backend)
        x = torch.randn(rows, 64)
        scale, y = q.scale.clone(), q(x)
        q.to(dtype)
        assert q.scale.dtype == torch.float16 and torch.equal(q.scale, scale)
        yc = q(x.to(dtype))
        assert yc.dtype == dtype and rel(yc, y) < 2e-2
        # back to float32: the same model with its bias rounded through the cast
        q.float()
        ref = QuantLinear.from_float(layer, 4, config, backend=backend)
        ref.bias.data = layer.bias.detach().to(dtype).float()
        assert torch.equal(q(x), ref(x))


def test_cast_conv_and_tiny_decoder_end_to_end() -> None:
    pytest.importorskip("transformers")
    from mpsearch.zoo.llm import tiny_decoder

    torch.manual_seed(1)
    conv = QuantConv2d.from_float(nn.Conv2d(4, 8, 3, padding=1), 3, QuantizerConfig(), backend="numba")
    x = torch.randn(2, 4, 6, 6)
    y = conv(x)
    assert rel(conv.to(torch.bfloat16)(x.bfloat16()), y) < 2e-2
    model = tiny_decoder().eval()
    plan = BitPlan(bits={n: 4 for n, m in model.named_modules() if isinstance(m, nn.Linear)},
                   quantizer=QuantizerConfig(group_size=16))
    fake = fake_quantize_model(model, plan)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        want = fake(ids).logits
        packed = apply(model, plan, backend="numba").to(torch.bfloat16)
        got = packed(ids).logits
        want16 = fake.to(torch.bfloat16)(ids).logits
    assert got.dtype == torch.bfloat16 and rel(got, want) < 5e-2
    assert torch.equal(got, want16)  # the fake-quant model cast to bfloat16, bit for bit


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_group_widths_cast_to_bfloat16_round_like_torch(backend) -> None:
    import numpy as np

    from mpsearch.deploy.group_modules import GroupQuantLinear

    torch.manual_seed(2)
    config = QuantizerConfig(group_size=32, scheme="affine")
    layer = nn.Linear(96, 40)
    gb = torch.from_numpy(np.random.default_rng(1).choice([2, 3, 4, 5], (40, 3)).astype(np.uint8))
    q = GroupQuantLinear.from_float(layer, gb, config, backend=backend).to(torch.bfloat16)
    w = GroupQuantLinear.from_float(layer, gb, config, backend="reference").dequantized()
    x = torch.randn(dispatch.DEQUANT_ROWS + 2, 96).to(torch.bfloat16)
    want = torch.addmm(layer.bias.detach().to(torch.bfloat16), x, w.to(torch.bfloat16).T)
    with torch.no_grad():
        assert torch.equal(q(x), want)  # the decoded weight, rounded as torch rounds
