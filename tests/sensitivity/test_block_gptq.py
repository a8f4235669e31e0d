"""Block-wise sequential GPTQ equals the whole-model sequential GPTQ, for uniform and per-group plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.errors import ConfigError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.gptq import run_gptq
from mpsearch.sensitivity.block_gptq import gptq_blockwise
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import discover_quietly

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder

QUANT = QuantizerConfig(scheme=Scheme.AFFINE, group_size=16, method="gptq")


@pytest.fixture(scope="module")
def setup():
    model = tiny_decoder(seed=3, layers=2)
    space = discover_quietly(model, bits=(2, 3, 4), pin_first_last=None, quantizer=QUANT, exclude=["lm_head"])
    windows = torch.randint(0, 260, (4, 24), generator=torch.Generator().manual_seed(1))
    return model, space, Calibration.causal_lm(windows, batch_size=2)


def _plans(space):
    rng = np.random.default_rng(0)
    uniform = BitPlan(bits={**{u.name: 3 for u in space.units}, "lm_head": 16}, quantizer=QUANT)
    mixed = {u.name: tuple(int(b) for b in rng.choice([2, 3, 4], u.out_features * (u.fan_in // 16))) for u in space.units}
    return uniform, BitPlan(bits={**mixed, "lm_head": 16}, quantizer=QUANT)


def test_equals_whole_model_gptq(setup):
    model, space, calib = setup
    for plan in _plans(space):
        block = gptq_blockwise(model, plan, calib)
        whole, _ = run_gptq(model, plan, calib.batches)
        for u in space.units:
            torch.testing.assert_close(block.get_submodule(u.name).weight, whole.get_submodule(u.name).weight, rtol=0, atol=1e-6)
        assert not torch.equal(block.get_submodule(space.units[0].name).weight, model.get_submodule(space.units[0].name).weight)


def test_refusals(setup):
    model, space, calib = setup
    uniform, _ = _plans(space)
    with pytest.raises(ConfigError, match="method='gptq'"):
        gptq_blockwise(model, BitPlan(bits=uniform.bits, quantizer=QuantizerConfig(group_size=16)), calib)
    with pytest.raises(ConfigError, match="inside the decoder blocks"):
        gptq_blockwise(model, BitPlan(bits={**uniform.bits, "lm_head": 4}, quantizer=QUANT), calib)
