"""End to end: calibrate a tiny table, add hardware columns, sweep a latency budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpsearch.cli.main import main
from mpsearch.core.costs import CostTable
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.space.discover import discover
from mpsearch.workflows import hw_calibrate


@pytest.fixture()
def tiny_grid(monkeypatch):
    monkeypatch.setattr(hw_calibrate, "QUICK_SHAPES", ((16, 144), (64, 576)))
    monkeypatch.setattr(hw_calibrate, "QUICK_BATCHES", (1, 64))
    monkeypatch.setattr(hw_calibrate, "QUICK_BITS", (2, 8))


def test_latency_front_end_to_end(resnet20, tiny_grid, tmp_path, capsys):
    space = discover(resnet20)
    costs = cost_table_from_space(space, {u.name: {b: 2.0 ** -b * u.n_weights for b in u.bits} for u in space.units})
    costs.save(tmp_path / "costs.json")
    lut = tmp_path / "lut.json"
    assert main(["hw", "calibrate", "--quick", "--out", str(lut), "--quiet"]) == 0
    out = tmp_path / "costs_hw.json"
    assert main(["hw", "add", "--costs", str(tmp_path / "costs.json"), "--model", "resnet20",
                 "--lut", str(lut), "--out", str(out)]) == 0
    table = CostTable.load(out)
    assert {"latency_ms", "bops", "bytes_packed"} <= set(table.resources)
    lat = table.resources["latency_ms"]
    lo, hi = lat.min(axis=1).sum(), lat.max(axis=1).sum()
    budgets = ",".join(f"{v:.6f}" for v in np.linspace(lo * 1.001, hi, 4))
    assert main(["pareto", "--costs", str(out), "--kind", "latency_ms", "--budgets", budgets,
                 "--out-dir", str(tmp_path / "front"), "--quiet"]) == 0
    frame = pd.read_csv(tmp_path / "front" / "pareto.csv")
    assert len(frame) >= 1 and (frame["latency_ms"] <= frame["budget"] * (1 + 1e-6)).all()
    assert (tmp_path / "front" / "pareto.png").is_file()


def test_hw_add_with_a_roofline_device(tmp_path, resnet20):
    space = discover(resnet20)
    costs = cost_table_from_space(space, {u.name: {b: 1.0 for b in u.bits} for u in space.units})
    costs.save(tmp_path / "c.json")
    assert main(["hw", "add", "--costs", str(tmp_path / "c.json"), "--device", "a100-80gb",
                 "--out", str(tmp_path / "o.json")]) == 0
    assert "latency_ms" in CostTable.load(tmp_path / "o.json").resources


def test_hw_errors_exit_2(tmp_path, capsys):
    assert main(["hw", "add", "--costs", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o.json")]) == 2
    assert "error" in capsys.readouterr().err
