"""Study: every combination in one table; an interrupted study resumes without recomputing."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from mpsearch.core.errors import MPSearchError
from mpsearch.sensitivity import Calibration, HutchinsonTrace
from mpsearch.space.discover import discover
from mpsearch.workflows.study import COLUMNS, Study


class CountingHutchinson(HutchinsonTrace):
    calls = 0

    def estimate(self, model, data, space):
        CountingHutchinson.calls += 1
        return super().estimate(model, data, space)


def setup(tmp_path, metric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    space = discover(model, pin_first_last=None)
    est = CountingHutchinson(max_probes=8, progress=False)
    return Study(model=model, calibration=Calibration.classification(x, y), space=space, metric=metric,
                 estimators=[est], solvers=["ilp"], budgets=[3.0, 4.0, 6.0], uniform=[8, 4],
                 out_dir=tmp_path, progress=False)


def test_study_table_plans_and_plot(tmp_path):
    study = setup(tmp_path, metric=lambda m: float(sum(p.detach().abs().sum() for p in m.parameters())))
    frame = study.run()
    assert list(frame.columns) == COLUMNS and len(frame) == 5
    assert set(frame["estimator"]) == {"uniform", "hessian"}
    assert (frame.loc[frame["estimator"] == "hessian", "avg_bits"] <= frame.loc[frame["estimator"] == "hessian", "budget"] + 1e-9).all()
    for plan_file in frame["plan_file"]:
        assert (tmp_path / plan_file).is_file()
    study.plot(tmp_path / "study.png", reference=1.0)
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "study.svg").is_file()


def test_interrupted_study_resumes_without_recomputing(tmp_path):
    calls = {"n": 0}

    def flaky_metric(model):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third evaluation
        return float(calls["n"])

    CountingHutchinson.calls = 0
    study = setup(tmp_path, flaky_metric)
    with pytest.raises(KeyboardInterrupt):
        study.run()
    finished = study.load()
    assert len(finished) == 2 and CountingHutchinson.calls == 1
    evaluated_before = calls["n"]
    resumed = setup(tmp_path, flaky_metric)  # a new process would build a new Study
    frame = resumed.run()
    assert len(frame) == 5
    assert CountingHutchinson.calls == 1  # the cost table was reloaded, not re-estimated
    assert frame.iloc[:2].equals(finished.iloc[:2])  # finished rows untouched
    assert calls["n"] - evaluated_before <= 3  # only the unfinished rows were evaluated
    assert len(resumed.run()) == 5  # a finished study runs nothing


def test_corrupt_results_file_is_a_clear_error(tmp_path):
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    study = setup(tmp_path, metric=lambda m: 0.0)
    with pytest.raises(MPSearchError, match="not a study's results file"):
        study.run()


def test_plans_that_differ_only_in_metadata_are_evaluated_once(tmp_path):
    calls = {"n": 0}

    def counting_metric(model):
        calls["n"] += 1
        return float(calls["n"])

    study = setup(tmp_path, counting_metric)
    study.solvers, study.uniform = ["ilp", "dp", "greedy"], []  # their plans differ in metadata, often not in widths
    frame = study.run()
    assert len(frame) == 9
    widths = [json.dumps(json.loads((tmp_path / f).read_text())["bits"], sort_keys=True) for f in frame["plan_file"]]
    assert calls["n"] == len(set(widths)) < len(frame)
    by_widths = pd.Series(frame["metric"].to_numpy()).groupby(widths).nunique()
    assert (by_widths == 1).all()  # one measurement shared by every plan with these widths


def test_bias_corrected_study_saves_the_corrections_in_its_plans(tmp_path):
    study = setup(tmp_path, metric=lambda m: float((m[0].bias - study.model[0].bias).detach().abs().sum()))
    study.bias_correction = [torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))]
    frame = study.run()
    for plan_file in frame["plan_file"]:
        doc = json.loads((tmp_path / plan_file).read_text())
        assert set(doc["bias_correction"]) == {n for n, b in doc["bits"].items() if b != 16}
    assert (frame["metric"] > 0).all()  # every evaluated model had the corrected bias


def test_bias_corrections_are_measured_once_per_distinct_plan(tmp_path, monkeypatch):
    import mpsearch.deploy.bias_correction as bc

    calls = []
    real = bc.measure_bias_correction
    monkeypatch.setattr(bc, "measure_bias_correction", lambda *a, **k: calls.append(1) or real(*a, **k))
    study = setup(tmp_path, metric=lambda m: 0.0)
    study.solvers, study.uniform = ["ilp", "dp", "greedy"], []
    study.bias_correction = [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))]
    frame = study.run()
    widths = {json.dumps(json.loads((tmp_path / f).read_text())["bits"], sort_keys=True) for f in frame["plan_file"]}
    assert len(calls) == len(widths) < len(frame)
