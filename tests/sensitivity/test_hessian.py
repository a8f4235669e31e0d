"""Hutchinson's trace against the exact Hessian of small networks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _nets import exact_hessian_block
from _nets import tiny_data as small_data
from _nets import tiny_net as small_net
from _nets import trained_tiny_net as trained_net
from torch import nn

from mpsearch.core.errors import MPSearchError
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import Calibration, HutchinsonTrace
from mpsearch.space.discover import discover


def exact_block_traces(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> dict[str, float]:
    """tr(H_uu) of the mean cross-entropy, from the full Hessian block of each unit's weight."""
    return {name: float(exact_hessian_block(model, x, y, name).diagonal().sum()) for name in names}


def test_trace_matches_exact_hessian_within_5_percent():
    x, y = small_data()
    model = trained_net(x, y)
    space = discover(model, pin_first_last=None)
    calib = Calibration.classification(x, y, batch_size=8)  # 3 batches in rotation
    est = HutchinsonTrace(tol=0.02, min_probes=30, max_probes=6000, seed=3, progress=False)
    sens = est.estimate(model, calib, space)
    exact = exact_block_traces(model, x, y, list(space.names))
    assert sens.details["converged"]
    for name in space.names:
        got = sens.details["trace"][name]
        assert abs(got - exact[name]) <= 0.05 * abs(exact[name]), (name, got, exact[name])
        n = space.unit(name).n_weights
        assert sens.scores[name] == pytest.approx(max(exact[name], 0) / n, rel=0.05)


def test_stopping_rule_and_seed():
    model = small_net()
    x, y = small_data()
    space = discover(model)  # first and last pinned: they do not hold up the rule
    calib = Calibration.classification(x, y, batch_size=24)
    a = HutchinsonTrace(tol=0.2, min_probes=4, max_probes=500, seed=7, progress=False).estimate(model, calib, space)
    b = HutchinsonTrace(tol=0.2, min_probes=4, max_probes=500, seed=7, progress=False).estimate(model, calib, space)
    c = HutchinsonTrace(tol=0.2, min_probes=4, max_probes=500, seed=8, progress=False).estimate(model, calib, space)
    assert a.details == b.details and dict(a.scores) == dict(b.scores)
    assert a.details["trace"] != c.details["trace"]
    assert a.details["converged"] and a.details["probes"] < 500
    searched = [u.name for u in space.units if not u.pinned]
    for name in searched:
        assert a.details["trace_stderr"][name] < 0.2 * abs(a.details["trace"][name])


def test_max_probes_caps_and_reports_not_converged():
    model = small_net()
    x, y = small_data()
    space = discover(model, pin_first_last=None)
    sens = HutchinsonTrace(tol=1e-4, min_probes=2, max_probes=5, progress=False).estimate(
        model, Calibration.classification(x, y), space
    )
    assert sens.details["probes"] == 5 and sens.details["converged"] is False


def test_model_left_as_found():
    model = small_net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = small_data()
    HutchinsonTrace(max_probes=3, min_probes=2, progress=False).estimate(model, Calibration.classification(x, y), discover(model))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_cost_is_score_times_quantization_error():
    model = small_net()
    x, y = small_data()
    space = discover(model, pin_first_last=None, bits=(2, 4, 8))
    sens = HutchinsonTrace(max_probes=20, min_probes=2, progress=False).estimate(model, Calibration.classification(x, y), space)
    costs = build_cost_table(model, space, sens)
    from mpsearch.kernels.quantize import quant_error, weight_matrix

    for i, unit in enumerate(space.units):
        w = weight_matrix(dict(model.named_modules())[unit.name].weight.detach(), unit.kind)
        for j, b in enumerate(costs.bits):
            expected = sens.scores[unit.name] * quant_error(w, b, space.quantizer)
            assert costs.cost[i, j] == pytest.approx(expected, rel=1e-9)
    assert np.all(np.diff(costs.cost, axis=1) <= 0)  # more bits never cost more


@pytest.mark.parametrize(
    "kwargs, match",
    [({"tol": 0}, "`tol` must be within"), ({"tol": 1.5}, "`tol` must be within"),
     ({"min_probes": 1}, "min_probes"), ({"min_probes": 10, "max_probes": 5}, "min_probes <= max_probes")],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(MPSearchError, match=match):
        HutchinsonTrace(**kwargs)


def test_bad_calibration_data():
    with pytest.raises(MPSearchError, match="floating-point tensor"):
        Calibration.classification(torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(MPSearchError, match="1-D int64"):
        Calibration.classification(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(MPSearchError, match="equally long"):
        Calibration.classification(torch.zeros(4, 3), torch.zeros(3, dtype=torch.int64))


def test_interrupted_run_resumes_from_its_checkpoint_with_identical_result(tmp_path, monkeypatch):
    """Ctrl-C keeps every finished probe; the resumed run equals an uninterrupted one exactly."""
    import mpsearch.sensitivity.hessian as hessian_module

    x, y = small_data()
    model = small_net()
    space = discover(model, pin_first_last=None)
    calib = Calibration.classification(x, y, batch_size=8)
    settings = dict(tol=1e-9, min_probes=2, max_probes=40, seed=4, progress=False)
    reference = HutchinsonTrace(**settings).estimate(model, calib, space)

    real = hessian_module.hessian_vector_products
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        hvp = real(*args, **kwargs)

        def wrapped(vs, k):
            calls["n"] += 1
            if calls["n"] == 23:  # in the middle of probe 23
                raise KeyboardInterrupt
            return hvp(vs, k)

        return wrapped

    path = tmp_path / "trace.ckpt.npz"
    monkeypatch.setattr(hessian_module, "hessian_vector_products", interrupting)
    with pytest.raises(KeyboardInterrupt):
        HutchinsonTrace(checkpoint=path, **settings).estimate(model, calib, space)
    assert path.is_file()
    monkeypatch.setattr(hessian_module, "hessian_vector_products", real)
    calls["n"] = 0
    counting = {"n": 0}

    def counted(*args, **kwargs):
        hvp = real(*args, **kwargs)

        def wrapped(vs, k):
            counting["n"] += 1
            return hvp(vs, k)

        return wrapped

    monkeypatch.setattr(hessian_module, "hessian_vector_products", counted)
    resumed = HutchinsonTrace(checkpoint=path, **settings).estimate(model, calib, space)
    assert counting["n"] == 40 - 22  # only the unfinished probes ran again
    assert resumed.details["trace"] == reference.details["trace"]
    assert not path.exists()  # a finished run removes its checkpoint


def test_checkpoint_of_other_data_or_corrupt_is_ignored(tmp_path):
    x, y = small_data()
    model = small_net()
    space = discover(model, pin_first_last=None)
    settings = dict(tol=1e-9, min_probes=2, max_probes=6, seed=4, progress=False)
    path = tmp_path / "trace.ckpt.npz"
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        sens = HutchinsonTrace(checkpoint=path, **settings).estimate(model, Calibration.classification(x, y), space)
    assert sens.details["probes"] == 6


def test_time_limit_stops_after_two_probes_and_builds_only_one_graph():
    """An expired limit stops before the third probe, and the second reuses the first one's batch."""
    x, y = small_data(48)
    model = small_net()
    space = discover(model, pin_first_last=None)
    calls = {"n": 0}

    def counted_loss(m, batch):
        calls["n"] += 1
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    calib = dataclasses.replace(Calibration.classification(x, y, batch_size=8), loss_fn=counted_loss)  # 6 batches
    sens = HutchinsonTrace(tol=1e-9, min_probes=2, max_probes=1000, time_limit=1e-6, progress=False).estimate(model, calib, space)
    assert sens.details["probes"] == 2 and sens.details["time_limited"] is True and sens.details["converged"] is False
    assert calls["n"] - 1 == 1  # one forward of the data check, then the graph of batch 0 only
    for name in space.names:  # two probes of one batch: a real spread, never a zero error
        assert np.isfinite(sens.details["trace_stderr"][name]) and sens.details["trace_stderr"][name] > 0


def test_a_batch_probed_once_takes_the_pooled_spread_not_zero():
    """Three probes over three batches (a cap below two per batch): each batch borrows the spread of all probes."""
    x, y = small_data(48)
    model = small_net()
    space = discover(model, pin_first_last=None)
    calib = Calibration.classification(x, y, batch_size=16)  # 3 batches
    sens = HutchinsonTrace(tol=1e-9, min_probes=2, max_probes=3, progress=False).estimate(model, calib, space)
    assert sens.details["probes"] == 3
    assert all(sens.details["trace_stderr"][name] > 0 for name in space.names)
