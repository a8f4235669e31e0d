"""Noisy sensitivity estimates are said loudly and recorded (mpsearch/core/quality.py, build_cost_table)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from mpsearch.core.errors import MPSearchWarning, NoisyEstimateWarning
from mpsearch.core.quality import NOISY_REL_STDERR, estimate_quality, noisy_message
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import Calibration, HutchinsonTrace
from mpsearch.sensitivity.base import Sensitivity
from mpsearch.space.discover import discover


def details(rel: dict[str, float], converged: bool = False) -> dict:
    return {"trace": {n: 2.0 for n in rel}, "trace_stderr": {n: 2.0 * r for n, r in rel.items()},
            "converged": converged, "probes": 8}


def test_quality_uses_the_searched_units_only() -> None:
    q = estimate_quality("hessian", details({"first": 50.0, "a": 0.2, "b": 0.8, "c": 0.6}), {"tol": 0.1}, ["a", "b", "c"])
    assert q == {"estimator": "hessian", "converged": False, "probes": 8, "tol": 0.1, "rel_stderr_max": 0.8,
                 "rel_stderr_median": 0.6, "worst_unit": "b"}


def test_only_sampled_estimates_have_a_quality() -> None:
    assert estimate_quality("first_order", {"gradients": "mean"}, {}, ["a"]) is None


def test_the_message_names_the_error_and_the_remedies() -> None:
    noisy = estimate_quality("hessian", details({"a": 1.0, "b": 33.2, "c": 0.9}), {"tol": 0.1}, ["a", "b", "c"])
    text = noisy_message(noisy)
    assert "median relative standard error of 1 (worst 33.2 on 'b')" in text
    assert "after 8 probes (converged=False, tol=0.1)" in text
    assert "--max-probes/--time-limit" in text and "--estimator first_order" in text
    calm = estimate_quality("hessian", details({"a": 0.1, "b": 5.0, "c": 0.3}), {"tol": 0.1}, ["a", "b", "c"])
    assert calm["rel_stderr_median"] <= NOISY_REL_STDERR and noisy_message(calm) is None  # one flat unit is not noise
    assert noisy_message({**noisy, "converged": True}) is None and noisy_message(None) is None


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def test_build_cost_table_warns_and_records_into_table_and_plan() -> None:
    model = net()
    space = discover(model)
    sens = Sensitivity(method="hessian", scores={n: 1.0 for n in space.names}, settings={"tol": 0.1},
                       details=details({"0": 0.1, "2": 2.5, "4": 0.1}))
    with pytest.warns(NoisyEstimateWarning, match=r"median relative standard error of 2.5") as record:
        costs = build_cost_table(model, space, sens, meta={"model": "net"})
    assert issubclass(record[0].category, MPSearchWarning)
    quality = costs.meta["estimate_quality"]
    assert quality["converged"] is False and quality["rel_stderr_max"] == 2.5 and quality["worst_unit"] == "2"
    plan_doc = json.loads(costs.plan(costs.uniform_choice(4)).to_json())
    assert plan_doc["meta"]["estimate_quality"] == quality  # a plan file shows it


def test_a_real_short_hutchinson_run_warns() -> None:
    model = net()
    space = discover(model, pin_first_last=None)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    sens = HutchinsonTrace(seed=0, max_probes=2, min_probes=2, progress=False).estimate(
        model, Calibration.classification(x, y, batch_size=32), space)
    quality = estimate_quality(sens.method, sens.details, sens.settings, space.names)
    assert quality["probes"] == 2 and not quality["converged"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_cost_table(model, space, sens)
    noisy = [w for w in caught if issubclass(w.category, NoisyEstimateWarning)]
    assert len(noisy) == (quality["rel_stderr_median"] > NOISY_REL_STDERR)
