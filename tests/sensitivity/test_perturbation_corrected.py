"""zeroq_bc: ZeroQ's divergence measured after the quantized unit's mean shift is removed."""

from __future__ import annotations

import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.sensitivity import Calibration, get_estimator
from mpsearch.sensitivity.perturbation import (
    PerturbationKL,
    PerturbationKLCorrected,
    channel_means,
)
from mpsearch.space.discover import discover

FAST = QuantizerConfig()  # no clipping search


def constant_inputs_model(conv: bool):
    """A net whose quantization error only shifts each output channel: every input is the same
    (and spatially constant, without padding), so the error of each output is one number."""
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.Linear(5 * 4 * 4, 4)).eval()
        x = torch.full((10, 3, 6, 6), 0.7)
    else:
        model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)).eval()
        x = torch.randn(1, 6).repeat(10, 1)
    calib = Calibration.classification(x, torch.zeros(10, dtype=torch.long), batch_size=4)
    space = discover(model, bits=(2, 3), pin_first_last=None, quantizer=FAST)
    return model, calib, space


def test_registered_and_subclass():
    assert isinstance(get_estimator("zeroq_bc", progress=False), PerturbationKLCorrected)


def test_a_pure_mean_shift_costs_nothing_after_correction():
    for conv in (False, True):
        model, calib, space = constant_inputs_model(conv)
        first = space.names[0]  # its error reaches the logits as a shift of its channels only
        plain = PerturbationKL(progress=False).estimate(model, calib, space).unit_costs[first]
        fixed = PerturbationKLCorrected(progress=False).estimate(model, calib, space).unit_costs[first]
        for b in (2, 3):
            assert plain[b] > 1e-6, (conv, b, plain)
            assert fixed[b] < 1e-10, (conv, b, fixed)


def test_weights_restored_and_no_hooks_left():
    model, calib, space = constant_inputs_model(conv=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PerturbationKLCorrected(progress=False).estimate(model, calib, space)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks for m in model.modules())


def test_channel_means_of_conv_and_token_outputs():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(conv).eval()
    x = torch.randn(7, 2, 4, 4)
    calib = Calibration.classification(x, torch.zeros(7, dtype=torch.long), batch_size=3)
    with torch.no_grad():
        want = conv(x).double().mean(dim=(0, 2, 3))
    torch.testing.assert_close(channel_means(model, conv, calib), want)
    lin = nn.Linear(4, 6)
    tokens = nn.Sequential(lin).eval()
    t = torch.randn(5, 9, 4)  # (batch, tokens, features): channels are the last dim
    calib = Calibration.classification(t, torch.zeros(5, dtype=torch.long), batch_size=2)
    with torch.no_grad():
        want = lin(t).double().mean(dim=(0, 1))
    torch.testing.assert_close(channel_means(tokens, lin, calib), want)


def test_channel_means_count_real_tokens_only_as_bias_correction_does():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.lin = nn.Linear(4, 3)

        def forward(self, input_ids, attention_mask):
            return self.lin(self.embed(input_ids))

    torch.manual_seed(0)
    model = Tokens().eval()
    ids = torch.randint(0, 10, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    data = Calibration(batches=({"input_ids": ids, "attention_mask": mask},), sizes=(2,))
    with torch.no_grad():
        out = model(ids, mask).double()
    want = out[mask.bool()].mean(dim=0)  # the 8 real tokens, not the 2 padded ones
    torch.testing.assert_close(channel_means(model, model.lin, data), want)
