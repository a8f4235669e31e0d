"""Every estimator accepts a time limit and, when it hits it, returns what it has and says so."""

from __future__ import annotations

import numpy as np
import pytest
from _nets import tiny_data, tiny_net

from mpsearch.sensitivity import Calibration, get_estimator
from mpsearch.space.discover import discover

LIMITED = {
    "hessian": {"max_probes": 10**6, "min_probes": 2, "tol": 1e-9},
    "hessian_diag": {"probes": 10**6},
    "hessian_eig": {"max_iter": 10**6, "tol": 1e-12},
    "fisher": {},
    "first_order": {},
    "gwq": {},
    "obs": {},
}


@pytest.mark.parametrize("name", sorted(LIMITED))
def test_estimator_stops_at_its_time_limit_with_valid_scores(name):
    model = tiny_net()
    x, y = tiny_data(48)
    calib = Calibration.classification(x, y, batch_size=8)
    space = discover(model, pin_first_last=None)
    sens = get_estimator(name, progress=False, time_limit=1e-6, **LIMITED[name]).estimate(model, calib, space)
    assert sens.seconds < 30
    assert set(sens.scores) == set(space.names)
    assert all(np.isfinite(v) and v >= 0 for v in sens.scores.values())
    flag = sens.details.get("time_limited", not sens.details.get("converged", True))
    assert flag is True


@pytest.mark.parametrize("name", ["fisher", "hessian_diag", "obs"])
def test_generous_time_limit_changes_nothing(name):
    model = tiny_net()
    x, y = tiny_data(16)
    calib = Calibration.classification(x, y, batch_size=8)
    space = discover(model, pin_first_last=None)
    opts = {"probes": 8} if name == "hessian_diag" else {}
    free = get_estimator(name, progress=False, **opts).estimate(model, calib, space)
    limited = get_estimator(name, progress=False, time_limit=600, **opts).estimate(model, calib, space)
    assert dict(free.scores) == dict(limited.scores)
    assert limited.details["time_limited"] is False
