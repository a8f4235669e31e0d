"""The command line does what the API does: estimators, uniform plans, bias correction, held-out
evaluation, a user's checkpoint, pins and noisy estimates (mpsearch/cli/main.py, inputs.py, evaluate.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from mpsearch.cli.inputs import DEFAULT_ESTIMATOR, ESTIMATOR_NAMES
from mpsearch.cli.main import main
from mpsearch.core.costs import CostTable
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.bias_correction import measure_bias_correction
from mpsearch.deploy.evaluate import evaluate_plan
from mpsearch.sensitivity.base import ESTIMATORS
from mpsearch.zoo import load_pretrained
from mpsearch.zoo.data import load_cifar10_split
from mpsearch.zoo.resnet import cifar_resnet

CALIB = 64


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("parity") / "costs.json"
    assert main(["sensitivity", "--estimator", "first_order", "--out", str(path), "--calib", str(CALIB),
                 "--batch-size", "32", "--quiet"]) == 0
    return path


def top1_of(text: str) -> float:
    return float(re.search(r"top-1 ([\d.]+) %", text).group(1))


def test_the_estimator_list_is_the_registry() -> None:
    assert ESTIMATOR_NAMES == ESTIMATORS.names() and DEFAULT_ESTIMATOR in ESTIMATOR_NAMES


def test_sensitivity_runs_the_default_estimator(tmp_path, capsys) -> None:
    out = tmp_path / "c.json"
    assert main(["sensitivity", "--out", str(out), "--calib", "32", "--batch-size", "32", "--quiet"]) == 0
    assert CostTable.load(out).meta["estimator"] == DEFAULT_ESTIMATOR == "fisher"
    assert "fisher" in capsys.readouterr().out


def test_table_records_estimator_model_and_calibration(table) -> None:
    meta = CostTable.load(table).meta
    assert (meta["estimator"], meta["model"], meta["calibration"]) == ("first_order", "resnet20", CALIB)
    assert "estimate_quality" not in meta  # no sampling error to report


def test_hessian_only_flags_are_refused_for_other_estimators(tmp_path, capsys) -> None:
    assert main(["sensitivity", "--estimator", "first_order", "--tol", "0.2", "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert "--tol and --max-probes set the Hessian's probing, but --estimator first_order was given with --tol 0.2" in err
    assert main(["sensitivity", "--estimator", "nope", "--out", str(tmp_path / "c.json")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


def test_a_noisy_hessian_is_loud_and_recorded(tmp_path, capsys) -> None:
    out, plan = tmp_path / "c.json", tmp_path / "p.json"
    assert main(["sensitivity", "--estimator", "hessian", "--max-probes", "2", "--out", str(out), "--calib", "32",
                 "--batch-size", "16", "--quiet"]) == 0
    quality = CostTable.load(out).meta["estimate_quality"]
    assert quality["probes"] == 2 and quality["converged"] is False
    assert quality["rel_stderr_median"] > 0.5  # two probes cannot rank 18 layers
    captured = capsys.readouterr()
    assert f"median relative standard error {quality['rel_stderr_median']:.3g}" in captured.out
    warning = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and warning[0].startswith("mpsearch sensitivity: warning: a sensitivity estimate must be")
    assert "--max-probes/--time-limit" in warning[0] and "--estimator first_order" in warning[0]
    assert main(["search", "--costs", str(out), "--budget", "4", "--out", str(plan)]) == 0
    assert "mpsearch search: warning:" in capsys.readouterr().err
    assert json.loads(plan.read_text())["meta"]["estimate_quality"] == quality  # the plan file shows it


def test_uniform_plan_without_solving_keeps_pins(table, tmp_path, capsys) -> None:
    out = tmp_path / "u.json"
    assert main(["search", "--costs", str(table), "--uniform", "3", "--out", str(out)]) == 0
    plan = BitPlan.load(out)
    assert plan.bits["conv1"] == plan.bits["linear"] == 8 and plan.pins == {"conv1": 8, "linear": 8}
    assert {b for n, b in plan.bits.items() if n not in plan.pins} == {3}
    assert capsys.readouterr().out.startswith("uniform 3-bit: predicted cost")
    assert main(["search", "--costs", str(table), "--uniform", "3", "--budget", "3", "--out", str(out)]) == 2
    assert "needs --budget (solve) or --uniform BITS (one width, no solve), but got both" in capsys.readouterr().err
    assert main(["search", "--costs", str(table), "--out", str(out)]) == 2
    assert "but got neither" in capsys.readouterr().err
    assert main(["search", "--costs", str(table), "--uniform", "5", "--out", str(out)]) == 2
    assert "uniform bits must be one of the table's choices" in capsys.readouterr().err


def test_search_with_bias_correction_matches_the_api(table, tmp_path, capsys) -> None:
    out = tmp_path / "bc.json"
    assert main(["search", "--costs", str(table), "--budget", "3", "--bias-correction", "--out", str(out)]) == 0
    assert f"measured on images 0-{CALIB - 1} of the embedded test set (resnet20)" in capsys.readouterr().err
    plan = BitPlan.load(out)
    bare = BitPlan.from_dict({**plan.to_dict(), "bias_correction": {}})
    data = load_cifar10_split(None, CALIB)
    expected = measure_bias_correction(load_pretrained("resnet20"), bare, [data.x_calib])
    assert set(plan.bias_correction) == {n for n, b in plan.bits.items() if b != 16}
    for name, values in expected.items():
        assert plan.bias_correction[name] == pytest.approx(values, rel=1e-6, abs=1e-9)


def test_evaluate_is_held_out_and_equals_the_api(table, tmp_path, capsys) -> None:
    plan_path = tmp_path / "p.json"
    assert main(["search", "--costs", str(table), "--uniform", "3", "--out", str(plan_path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--plan", str(plan_path), "--limit", "150", "--bias-correction", "--quiet"]) == 0
    out = capsys.readouterr().out
    # the plan's own calibration count decides which images are held out
    assert f"on images {CALIB}-{CALIB + 149} of the embedded test set (150 held out; 0-{CALIB - 1} calibrate)" in out
    assert "bias-corrected" in out
    model, plan = load_pretrained("resnet20"), BitPlan.load(plan_path)
    data = load_cifar10_split(None, CALIB, eval_limit=150)
    corrected = plan.with_bias_correction(measure_bias_correction(model, plan, [data.x_calib]))
    assert top1_of(out) == pytest.approx(evaluate_plan(model, corrected, data.x_eval, data.y_eval), abs=0.005)
    assert main(["evaluate", "--plan", str(plan_path), "--limit", "10", "--calib", "0", "--quiet"]) == 0
    assert "on images 0-9 of the embedded test set (all; --calib 0)" in capsys.readouterr().out
    assert main(["evaluate", "--limit", "10", "--quiet"]) == 0  # fp32: the same held-out images by default
    assert "on images 256-265 of the embedded test set" in capsys.readouterr().out


def test_evaluate_refuses_a_plan_with_a_pinned_unit_moved(table, tmp_path, capsys) -> None:
    path = tmp_path / "p.json"
    assert main(["search", "--costs", str(table), "--budget", "3", "--out", str(path)]) == 0
    doc = json.loads(path.read_text())
    doc["bits"]["conv1"] = 2
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["evaluate", "--plan", str(path), "--limit", "10"]) == 2  # it evaluated before
    err = capsys.readouterr().err.strip()
    assert "the plan gives 'conv1' 2 bits and it is pinned at 8. Set it back to 8" in err and len(err.splitlines()) == 1


def test_model_file_state_dict_and_pickle(tmp_path, capsys) -> None:
    model = load_pretrained("resnet20")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "sd.th")
    assert main(["evaluate", "--model-file", str(tmp_path / "sd.th"), "--limit", "40", "--quiet"]) == 0
    from_file = top1_of(capsys.readouterr().out)
    assert main(["evaluate", "--limit", "40", "--quiet"]) == 0
    assert from_file == top1_of(capsys.readouterr().out)

    torch.save(cifar_resnet(32).state_dict(), tmp_path / "r32.pt")
    assert main(["evaluate", "--model-file", str(tmp_path / "r32.pt"), "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert "must match the CIFAR ResNet-20 layout of --model resnet20, but" in err
    assert "unexpected ['layer1.3." in err and "pass --model resnet32" in err

    torch.save(model, tmp_path / "whole.pt")
    assert main(["evaluate", "--model-file", str(tmp_path / "whole.pt"), "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert "holds other Python objects (mpsearch.zoo.resnet.CifarResNet: a pickled module?), and loading them" in err
    assert "or pass --trust-pickle" in err
    assert main(["evaluate", "--model-file", str(tmp_path / "whole.pt"), "--trust-pickle", "--limit", "40", "--quiet"]) == 0
    assert top1_of(capsys.readouterr().out) == from_file
    assert main(["evaluate", "--trust-pickle", "--limit", "10"]) == 2
    assert "--trust-pickle applies to --model-file only" in capsys.readouterr().err

    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert main(["evaluate", "--model-file", str(tmp_path / "junk.pt"), "--limit", "10"]) == 2
    assert "a model file must be a torch checkpoint, but" in capsys.readouterr().err


def test_a_table_from_a_model_file_keeps_using_it(tmp_path, capsys) -> None:
    model = load_pretrained("resnet20")
    with torch.no_grad():
        model.linear.bias += 1.0  # a different model than the zoo's
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    costs, plan = tmp_path / "c.json", tmp_path / "p.json"
    assert main(["sensitivity", "--estimator", "first_order", "--model-file", str(tmp_path / "mine.pt"),
                 "--calib", "32", "--out", str(costs), "--quiet"]) == 0
    assert CostTable.load(costs).meta["model_file"] == str(tmp_path / "mine.pt")
    assert main(["search", "--costs", str(costs), "--uniform", "8", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--plan", str(plan), "--limit", "10", "--quiet"]) == 0
    assert "using the model file the input records" in capsys.readouterr().err
