"""The block-wise estimators are registered: by name, with their modes, from the CLI's list, into a cost table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.errors import ConfigError
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import ESTIMATORS, BlockOBS, InputDiagonal, get_estimator
from mpsearch.sensitivity.blockwise import scoring_modes
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import discover_quietly

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder


def test_names_classes_and_modes():
    assert ESTIMATORS.get("xtx") is InputDiagonal and ESTIMATORS.get("obs_block") is BlockOBS
    for name in ("xtx", "obs_block"):
        est = get_estimator(name, seed=3, progress=False)
        assert est.name == name and scoring_modes(est) == ("whole", "block") and est.mode == "block"
        assert est.supports_groups and "seed" not in est.settings()
    assert scoring_modes(get_estimator("fisher")) == ("whole",)  # gradients need every later block


def test_bad_mode_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"`mode` must be one of \('whole', 'block'\), but got mode='layer'"):
        get_estimator("xtx", mode="layer")


@pytest.mark.parametrize("name", ["xtx", "obs_block"])
def test_registered_estimator_gives_a_group_table_on_a_decoder(name):
    model = tiny_decoder(seed=0, layers=2)
    space = discover_quietly(model, bits=(2, 3, 4), pin_first_last=None, exclude=["lm_head"],
                             quantizer=QuantizerConfig(scheme=Scheme.AFFINE, group_size=16))
    windows = torch.randint(0, 260, (4, 16), generator=torch.Generator().manual_seed(0))
    sens = get_estimator(name, progress=False).estimate(model, Calibration.causal_lm(windows), space)
    table = build_cost_table(model, space, sens)
    assert table.meta["granularity"] == "group" and table.meta["estimator"] == name
    assert np.all(np.isfinite(table.cost)) and np.all(table.cost >= 0)
    assert table.n_items == sum(u.out_features * -(-u.fan_in // 16) for u in space.units)
    total = table.cost.sum(axis=0)
    assert total[0] > total[1] > total[2] > 0  # summed over groups, more bits cost less
