"""The command line, end to end on the embedded default."""

from __future__ import annotations

import json

import pytest

from mpsearch.cli.main import main
from mpsearch.core.plan import BitPlan


@pytest.mark.parametrize("command", ["quickstart", "sensitivity", "search", "pareto", "evaluate", "study", "hw"])
def test_help_answers(command, capsys):
    assert main([command, "--help"]) == 0  # main returns argparse's exit status instead of raising
    out = capsys.readouterr().out
    assert f"usage: mpsearch {command}" in out and "--" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "quickstart" in capsys.readouterr().out


@pytest.fixture(scope="module")
def cost_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "costs.json"
    code = main(["sensitivity", "--estimator", "hessian", "--out", str(path), "--calib", "64", "--batch-size", "32",
                 "--max-probes", "8", "--tol", "0.5", "--quiet"])
    assert code == 0 and path.is_file()
    return path


def test_search_writes_a_valid_plan(cost_file, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", "--costs", str(cost_file), "--budget", "3", "--out", str(out)]) == 0
    plan = BitPlan.load(out)
    doc = json.loads(out.read_text())
    assert doc["format"] == "mpsearch.bitplan" and doc["version"] == 1
    assert plan.bits["conv1"] == 8 and plan.bits["linear"] == 8
    assert "optimal" in capsys.readouterr().out


def test_search_infeasible_budget_is_a_clear_error(cost_file, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", "--costs", str(cost_file), "--budget", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "infeasible" in err and "Raise it to avg_bits >=" in err
    assert not out.exists()


def test_pareto_writes_csv_png_and_plans(cost_file, tmp_path):
    out = tmp_path / "front"
    assert main(["pareto", "--costs", str(cost_file), "--budgets", "2:5:0.5", "--out-dir", str(out), "--quiet"]) == 0
    assert (out / "pareto.csv").read_text().startswith("budget_kind,")
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "plans").glob("*.json"))) >= 3


def test_evaluate_reports_accuracy_and_size(cost_file, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    main(["search", "--costs", str(cost_file), "--budget", "4", "--out", str(plan)])
    capsys.readouterr()
    assert main(["evaluate", "--plan", str(plan), "--limit", "200", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "(200 held out; 0-63 calibrate)" in out and "bits/weight" in out


def test_evaluate_rejects_bad_plans(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["evaluate", "--plan", str(bad), "--limit", "10"]) == 2
    assert "valid JSON" in capsys.readouterr().err
    other = tmp_path / "other.json"
    BitPlan(bits={"encoder.layer.0": 4}).save(other)
    assert main(["evaluate", "--plan", str(other), "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert "missing=" in err and "unknown=['encoder.layer.0']" in err
    assert main(["evaluate", "--plan", str(tmp_path / "absent.json")]) == 2
    assert "must be readable" in capsys.readouterr().err


def test_quickstart_smoke(tmp_path):
    from mpsearch.workflows.quickstart import run_quickstart

    result = run_quickstart(out_dir=tmp_path, max_probes=16, tol=0.5, budgets=(3.0,), uniform=(8, 3),
                            progress=False, log=lambda _: None)
    labels = list(result.table["plan"])
    assert labels == ["fp32", "uniform W8", "uniform W3", "mixed 3 bits"]
    fp32 = result.table["top1"].iloc[0]
    assert fp32 == pytest.approx(100 * 680 / 744, abs=0.01) or 80 < fp32 < 100
    assert result.table["avg_bits"].iloc[3] <= 3.0 + 1e-9
    for name in ("summary.csv", "pareto.csv", "pareto.png", "costs.json", "plans/mixed_3_bits.json"):
        assert (tmp_path / name).is_file(), name
