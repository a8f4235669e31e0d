"""The token Fisher as an estimator: a tied embedding/head sums the per-token shares of both reads (brute force),
an untied embedding's rows get the tokens that look them up, scores are the means of the values, and
convolutions are refused with the estimator to use instead."""

from __future__ import annotations

import pytest
import torch
from _nets import tiny_data, tiny_net

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity import Calibration, TokenFisher, get_estimator
from mpsearch.sensitivity.token_fisher import token_fisher_values
from mpsearch.space.discover import discover_quietly

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder

GROUPED = QuantizerConfig(scheme=Scheme.AFFINE, group_size=16)


def _weight_detached(module, inputs, out):
    """The same output with no gradient into the module's weight (activations still carry it)."""
    if isinstance(module, torch.nn.Embedding):
        return out.detach()
    return torch.nn.functional.linear(inputs[0], module.weight.detach(), module.bias)


def _brute_force(model, windows: torch.Tensor, readers: list[str], first: int = 0) -> torch.Tensor:
    """sum over reads r and tokens t >= first of (dl/dW through read r at token t only)^2 / predicted tokens."""
    calib = Calibration.causal_lm(windows, batch_size=len(windows))
    B, T = windows.shape
    weight = model.get_submodule(readers[0]).weight
    total = torch.zeros(weight.shape, dtype=torch.float64)
    for reader in readers:
        for b in range(B):
            for t in range(first, T):
                mask = torch.zeros(B, T, 1)
                mask[b, t] = 1.0
                handles = [model.get_submodule(r).register_forward_hook(
                    (lambda m, i, out, mask=mask: out.detach() + mask * (out - out.detach())) if r == reader
                    else _weight_detached) for r in readers]
                try:
                    weight.grad = None
                    weight.requires_grad_(True)
                    (calib.loss_fn(model, windows) * B * (T - 1)).backward()
                finally:
                    for h in handles:
                        h.remove()
                total += weight.grad.double().square()
    weight.grad = None
    return total / (B * (T - 1))


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_values_equal_brute_force(tied):
    model = tiny_decoder(seed=3, tied=tied, layers=1, hidden_size=32).eval()
    space = discover_quietly(model, bits=(2, 4), pin_first_last=None, embeddings=True, quantizer=GROUPED)
    windows = torch.randint(0, 260, (2, 6), generator=torch.Generator().manual_seed(1))
    values = token_fisher_values(model, Calibration.causal_lm(windows, batch_size=1), space, skip_first=0)
    if tied:
        unit = next(u for u in space.units if u.tied)
        assert (unit.name, unit.tied) == ("lm_head", ("model.embed_tokens",))
        readers = ["lm_head", "model.embed_tokens"]
    else:
        unit = next(u for u in space.units if u.name == "model.embed_tokens")
        readers = ["model.embed_tokens"]
    got = values[space.names.index(unit.name)]
    expected = _brute_force(model, windows, readers)
    assert got.shape == (260, 32) and float(got.sum()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-12)
    if not tied:  # only rows of ids that occur (as inputs) get a share
        unused = torch.ones(260, dtype=torch.bool)
        unused[windows.reshape(-1)] = False
        assert float(got[unused].abs().sum()) == 0.0


def test_skip_first_drops_the_first_positions_shares():
    model = tiny_decoder(seed=6, layers=1, hidden_size=32).eval()
    space = discover_quietly(model, bits=(2, 4), pin_first_last=None, exclude=["lm_head"], quantizer=GROUPED)
    windows = torch.randint(0, 260, (2, 6), generator=torch.Generator().manual_seed(3))
    calib = Calibration.causal_lm(windows, batch_size=2)
    values = token_fisher_values(model, calib, space, skip_first=2)
    unit = space.units[-1]  # the down projection
    torch.testing.assert_close(values[-1], _brute_force(model, windows, [unit.name], first=2), rtol=1e-4, atol=1e-12)
    assert float(values[-1].sum()) < float(token_fisher_values(model, calib, space)[-1].sum())  # default: skip 1
    torch.testing.assert_close(token_fisher_values(model, calib, space)[-1], _brute_force(model, windows, [unit.name], first=1),
                               rtol=1e-4, atol=1e-12)
    with pytest.raises(ConfigError, match="skip_first"):
        token_fisher_values(model, calib, space, skip_first=-1)


def test_scores_are_the_means_of_the_values():
    model = tiny_decoder(seed=5, layers=1, hidden_size=32).eval()
    space = discover_quietly(model, bits=(2, 4), pin_first_last=None, embeddings=True, quantizer=GROUPED)
    windows = torch.randint(0, 260, (3, 8), generator=torch.Generator().manual_seed(2))
    calib = Calibration.causal_lm(windows, batch_size=2)
    sens = get_estimator("token_fisher", progress=False).estimate(model, calib, space)
    values = token_fisher_values(model, calib, space)
    assert set(sens.scores) == set(space.names)
    for unit, v in zip(space.units, values):
        assert sens.scores[unit.name] == pytest.approx(float(v.mean()), rel=1e-9)
        groups = sens.group_scores[unit.name]
        assert groups.shape == (unit.out_features, unit.fan_in // 16)
        assert groups[0, 0] == pytest.approx(float(v[0, :16].mean()), rel=1e-6)


def test_convolutions_are_refused_with_the_estimator_to_use():
    model = tiny_net()
    x, y = tiny_data(8)
    with pytest.raises(ConfigError, match=r"token Fisher .* is a conv2d .*--estimator fisher"):
        TokenFisher(progress=False).estimate(model, Calibration.classification(x, y, batch_size=4),
                                             discover_quietly(model, pin_first_last=None))


@pytest.mark.parametrize("name", ["xtx", "obs_block", "obs", "zeroq", "zeroq_bc"])
def test_estimators_without_embedding_support_refuse_a_table_clearly(name):
    """Input-statistics and per-layer quantizing estimators cannot score a lookup table: one clear error, before work."""
    model = tiny_decoder(seed=0, tied=False, layers=1, hidden_size=32)
    space = discover_quietly(model, bits=(2, 4), pin_first_last=None, embeddings=True)
    calib = Calibration.causal_lm(torch.randint(0, 260, (2, 8), generator=torch.Generator().manual_seed(0)), batch_size=2)
    with pytest.raises(ConfigError, match=rf"the {name} estimator .* embedding unit\(s\) \['model.embed_tokens'\].*token_fisher"):
        get_estimator(name, progress=False).estimate(model, calib, space)
    assert get_estimator("token_fisher", progress=False).estimate(model, calib, space).scores["model.embed_tokens"] > 0
