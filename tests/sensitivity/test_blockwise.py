"""Block-wise input statistics equal whole-model ones on a tiny Llama decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity.blockwise import BlockOBS, InputDiagonal, decoder_blocks, scoring_modes
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.salience import FisherDiagonal
from mpsearch.sensitivity.salience_obs import OBSSalience
from mpsearch.space.discover import discover, discover_quietly

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder


@pytest.fixture(scope="module")
def setup():
    model = tiny_decoder(seed=0, tied=False, layers=3)
    space = discover_quietly(model, bits=(2, 3, 4), pin_first_last=None,
                              quantizer=QuantizerConfig(scheme=Scheme.AFFINE, group_size=16))
    windows = torch.randint(0, 260, (6, 24), generator=torch.Generator().manual_seed(1))
    return model, space, Calibration.causal_lm(windows, batch_size=4)


def _close(a, b):
    assert a.scores.keys() == b.scores.keys()
    for name in a.scores:
        assert a.scores[name] == pytest.approx(b.scores[name], rel=1e-6, abs=1e-12), name
        np.testing.assert_allclose(a.group_scores[name], b.group_scores[name], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("cls", [InputDiagonal, BlockOBS])
def test_blockwise_equals_whole_model(setup, cls):
    model, space, calib = setup
    whole = cls(mode="whole", progress=False).estimate(model, calib, space)
    block = cls(mode="block", progress=False).estimate(model, calib, space)
    _close(whole, block)
    assert block.details["rows"]["lm_head"] == 6 * 24  # outside the blocks: one whole-model pass
    assert all(n == 6 * 24 for n in block.details["rows"].values())


def test_block_obs_equals_library_obs(setup):
    model, space, calib = setup
    _close(OBSSalience(progress=False).estimate(model, calib, space),
           BlockOBS(mode="block", progress=False).estimate(model, calib, space))


def test_input_diagonal_is_mean_square_input(setup):
    model, space, calib = setup
    name = "model.layers.1.mlp.down_proj"
    captured = []
    module = model.get_submodule(name)
    handle = module.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for b in calib.batches:
            model(b)
    handle.remove()
    x = torch.cat(captured).double()
    expected = x.square().mean(dim=0).mean()
    sens = InputDiagonal(mode="block", progress=False).estimate(model, calib, space)
    assert sens.scores[name] == pytest.approx(float(expected), rel=1e-6)


def test_modes_and_errors(setup):
    model, space, _ = setup
    assert scoring_modes(InputDiagonal()) == ("whole", "block")
    assert scoring_modes(FisherDiagonal()) == ("whole",)
    assert len(decoder_blocks(model, space)) == 3
    with pytest.raises(ConfigError, match="`mode` must be one of"):
        InputDiagonal(mode="layers")
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    flat = discover(net, bits=(4,), pin_first_last=None)
    with pytest.raises(ConfigError, match="list of blocks"):
        decoder_blocks(net, flat)
