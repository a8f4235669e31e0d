"""A time limit shorter than Hutchinson's minimum work (two probes) is announced with the measured cost,
and a limit that fits stays silent (mpsearch/sensitivity/hessian.py)."""

from __future__ import annotations

import re
import warnings

import pytest
from _nets import tiny_data, tiny_net

from mpsearch.core.errors import MPSearchWarning
from mpsearch.sensitivity import Calibration, HutchinsonTrace
from mpsearch.space.discover import discover


def run(time_limit: float) -> tuple[list[warnings.WarningMessage], dict]:
    model = tiny_net()
    x, y = tiny_data(32)
    calib = Calibration.classification(x, y, batch_size=8)
    estimator = HutchinsonTrace(tol=1e-9, min_probes=2, max_probes=6, time_limit=time_limit, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sens = estimator.estimate(model, calib, discover(model, pin_first_last=None))
    return [w for w in caught if issubclass(w.category, MPSearchWarning) and "time limit" in str(w.message)], sens.details


def test_a_limit_below_one_probe_warns_with_the_measured_cost() -> None:
    caught, details = run(1e-6)
    assert len(caught) == 1
    message = str(caught[0].message)
    match = re.search(r"the first took ([\d.e+-]+) s against time_limit=1e-06 s, so this estimate takes up to about ([\d.e+-]+) s\. "
                      r"Raise --time-limit", message)
    assert match, message
    assert float(match.group(1)) > 0 and message.startswith("a time limit must leave room for two Hutchinson probes")
    assert details["probes"] == 2 and details["time_limited"] is True  # the promise in the message holds


@pytest.mark.parametrize("limit", [None, 600.0])
def test_a_limit_that_fits_is_silent(limit: float | None) -> None:
    caught, details = run(limit)  # type: ignore[arg-type]
    assert caught == [] and details["probes"] == 6 and details["time_limited"] is False
