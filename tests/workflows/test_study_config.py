"""`mpsearch study CONFIG.toml`: a real (small) study from a config file, and config errors."""

from __future__ import annotations

import pandas as pd
import pytest

from mpsearch.cli.main import main
from mpsearch.core.errors import ConfigError
from mpsearch.workflows.study_config import load_config

CONFIG = """
model = "resnet20"
out_dir = "out"
calibration = 128
eval_limit = 200
estimators = ["hessian"]
solvers = ["ilp"]
budgets = [3.0]
uniform = [3]
activation_bits = 8
[estimator_options.hessian]
max_probes = 8
"""


def test_study_from_config_writes_table_figure_and_plans(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(CONFIG)
    assert main(["study", str(tmp_path / "s.toml"), "--quiet"]) == 0
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(frame["estimator"]) == ["uniform", "hessian"]
    assert (frame["metric"] > 50).all()
    for name in ("study.png", "study.svg", "costs/hessian.json"):
        assert (tmp_path / "out" / name).is_file()
    plan_text = (tmp_path / "out" / frame["plan_file"].iloc[1]).read_text()
    assert '"activations"' in plan_text  # A8 is in the plan, not only in the run
    assert "fp32:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, match",
    [("model = \"resnet20\"\nbudgetz = [3]\n", "unknown \\['budgetz'\\]\\. Fix the spelling"),
     ("budgets = [3]\n", "must name a `model`, but none is given. Add e.g. model"),
     ("model = \"resnet20\"\nbudgets = 3\n", "`budgets` must be a list, but got 3. Write it in brackets, e.g. budgets = \\[3\\]"),
     ("model = [\n", "must be valid TOML, but .*bad.toml' is not: .*\\. Fix the syntax there \\(the example at the top of "
                      "mpsearch/workflows/study_config.py\\)")],
)
def test_bad_configs(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_config_file_is_one_line_error(tmp_path, capsys):
    assert main(["study", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert "must be a readable file" in err and "absent.toml' is not: No such file or directory. Check the path" in err


def test_binary_config_is_refused(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    with pytest.raises(ConfigError, match=r"must be UTF-8 TOML text, but .*bin\.toml' is binary\. Pass the TOML file"):
        load_config(path)
