"""Token-level Fisher values: the per-token squared shares of the weight gradient, summed, checked by brute force."""

from __future__ import annotations

import pytest
import torch

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.pricing.recipes import token_fisher_values
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import discover_quietly

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder


def _share_squares(model, windows: torch.Tensor, name: str) -> torch.Tensor:
    """sum over (window, token) of (dl/dW through that token's output only)^2, l the summed next-token loss."""
    module = model.get_submodule(name)
    calib = Calibration.causal_lm(windows, batch_size=len(windows))
    total = torch.zeros(module.weight.shape, dtype=torch.float64)
    B, T = windows.shape
    for b in range(B):
        for t in range(T):
            mask = torch.zeros(B, T, 1)
            mask[b, t] = 1.0
            handle = module.register_forward_hook(lambda m, i, out, mask=mask: out.detach() + mask * (out - out.detach()))
            try:
                model.zero_grad(set_to_none=True)
                (calib.loss_fn(model, windows) * B * (T - 1)).backward()
            finally:
                handle.remove()
            total += module.weight.grad.double().square()
    model.zero_grad(set_to_none=True)
    return total / (B * (T - 1))


def test_token_fisher_equals_brute_force():
    model = tiny_decoder(seed=4, layers=1, hidden_size=32).eval()
    space = discover_quietly(model, bits=(2, 4), pin_first_last=None, exclude=["lm_head"],
                             quantizer=QuantizerConfig(scheme=Scheme.AFFINE, group_size=16))
    windows = torch.randint(0, 260, (3, 7), generator=torch.Generator().manual_seed(0))
    values = token_fisher_values(model, Calibration.causal_lm(windows, batch_size=2), space, skip_first=0)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    for unit in (space.units[0], space.units[-1]):  # a query projection and the down projection
        expected = _share_squares(model, windows, unit.name)
        got = values[space.names.index(unit.name)]
        assert got.shape == (unit.out_features, unit.fan_in) and float(got.sum()) > 0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-12)
