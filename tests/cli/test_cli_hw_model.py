"""`mpsearch hw add` refuses a cost table made for another model (mpsearch/cli/hw.py)."""

from __future__ import annotations

from mpsearch.cli.main import main
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.space.discover import discover
from mpsearch.zoo import load_pretrained


def test_hw_add_refuses_a_table_of_another_model(tmp_path, capsys):
    space = discover(load_pretrained("resnet20"))
    costs = cost_table_from_space(space, {u.name: {b: 1.0 for b in u.bits} for u in space.units},
                                  meta={"model": "resnet20"})
    costs.save(tmp_path / "c.json")
    out = tmp_path / "o.json"
    argv = ["hw", "add", "--costs", str(tmp_path / "c.json"), "--device", "t4", "--out", str(out)]
    assert main([*argv, "--model", "resnet56"]) == 2  # exited 0, pricing the 20 shared names as ResNet-56's
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "`--model` must be the model the cost table was computed for, but" in err
    assert "has 20 units and resnet56 has 56: 36 of the model's units are not in the table (layer1.3.conv1" in err
    assert err.endswith("Pass --model resnet20 (the table was computed for it).")
    assert not out.exists()
    assert main([*argv, "--model", "resnet20"]) == 0 and out.is_file()
