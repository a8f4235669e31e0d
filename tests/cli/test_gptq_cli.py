"""`--quantizer rtn|gptq` (with --act-order, --damp): written into plans by search, applied by evaluate and
export with the calibration data, passed to the quickstart; each equal to the library call it stands for."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest
import torch

from mpsearch.cli.main import main
from mpsearch.cli.quantizer import chosen_quantizer
from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import ConfigError
from mpsearch.core.plan import BitPlan

pytestmark = pytest.mark.torch_threads(1)


def _flags(quantizer=None, act_order=False, damp=None) -> argparse.Namespace:
    return argparse.Namespace(quantizer=quantizer, act_order=act_order, damp=damp)


def test_the_flags_choose_the_method_and_keep_the_rest():
    grouped = QuantizerConfig(scheme="affine", group_size=32, clip_search=True)
    gptq = chosen_quantizer(_flags("gptq", True, 0.05), grouped)
    assert gptq == dataclasses.replace(grouped, method="gptq", act_order=True, damp=0.05)
    assert chosen_quantizer(_flags(), gptq) == gptq  # no flag: the input's own
    assert chosen_quantizer(_flags("rtn"), gptq) == grouped  # back to round to nearest, GPTQ settings dropped
    assert chosen_quantizer(_flags(damp=0.1), gptq).damp == 0.1  # a GPTQ plan takes a new damping alone
    with pytest.raises(ConfigError, match=r"--act-order set GPTQ's rounding, but the quantizer is rtn .*--quantizer gptq"):
        chosen_quantizer(_flags(act_order=True), grouped)
    with pytest.raises(ConfigError, match=r"--damp set GPTQ's rounding, but the quantizer is rtn \(--quantizer rtn\)"):
        chosen_quantizer(_flags("rtn", damp=0.1), gptq)


def test_damp_out_of_range_is_a_usage_error(tmp_path, capsys):
    assert main(["search", "--costs", "c.json", "--uniform", "4", "--out", str(tmp_path / "p.json"),
                 "--quantizer", "gptq", "--damp", "1.5"]) == 2
    assert "--damp: must be a number between 0 and 1 (exclusive), but got '1.5'. Pass e.g. --damp 0.01" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cnn_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("gptq_cnn") / "costs.json"
    assert main(["sensitivity", "--estimator", "first_order", "--calib", "32", "--batch-size", "32", "--out", str(path),
                 "--quiet"]) == 0
    return path


@pytest.mark.slow  # two GPTQ runs on ResNet-20 (about 10 s on two cores)
def test_search_writes_gptq_into_the_plan_and_evaluate_runs_it_on_the_calibration_images(cnn_table, tmp_path, capsys):
    from mpsearch.deploy.evaluate import evaluate_plan
    from mpsearch.zoo import load_pretrained
    from mpsearch.zoo.data import load_cifar10_split

    rtn_file, gptq_file = tmp_path / "rtn.json", tmp_path / "gptq.json"
    assert main(["search", "--costs", str(cnn_table), "--budget", "3", "--out", str(rtn_file)]) == 0
    assert main(["search", "--costs", str(cnn_table), "--budget", "3", "--quantizer", "gptq", "--act-order",
                 "--out", str(gptq_file)]) == 0
    rtn, gptq = BitPlan.load(rtn_file), BitPlan.load(gptq_file)
    assert gptq.bits == rtn.bits  # the costs price round to nearest either way: the same widths
    assert gptq.quantizer == dataclasses.replace(rtn.quantizer, method="gptq", act_order=True)
    assert CostTable.load(cnn_table).quantizer.get("method", "rtn") == "rtn"  # the table is not rewritten
    capsys.readouterr()
    assert main(["evaluate", "--plan", str(gptq_file), "--limit", "200"]) == 0
    out = capsys.readouterr().out
    assert "gptq (damp 0.01, act-order) on images 0-31" in out  # the table's calibration images, from the plan
    split = load_cifar10_split(None, 32, eval_limit=200)
    expected = evaluate_plan(load_pretrained("resnet20"), gptq, split.x_eval, split.y_eval, batches=[split.x_calib])
    assert float(re.search(r"top-1 ([\d.]+) %", out).group(1)) == pytest.approx(expected, abs=0.006)


def test_evaluate_refuses_quantizer_flags_without_a_plan_and_gptq_without_calibration(tmp_path, capsys):
    assert main(["evaluate", "--quantizer", "gptq"]) == 2
    assert "round a plan's weights, but no --plan was given" in capsys.readouterr().err
    plan = BitPlan(bits={"conv1": 8}).save(tmp_path / "p.json")
    assert main(["evaluate", "--plan", str(plan), "--calib", "0", "--quantizer", "gptq"]) == 2
    assert "a GPTQ plan is rounded with the calibration images, but --calib 0 leaves none" in capsys.readouterr().err


def test_quickstart_passes_the_quantizer(monkeypatch, tmp_path, capsys):
    import mpsearch.workflows.quickstart as quickstart

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(quickstart, "run_quickstart", fake)
    assert main(["quickstart", "--out", str(tmp_path / "q"), "--quantizer", "gptq", "--damp", "0.02", "--quiet"]) == 130
    assert seen["quantizer"] == dataclasses.replace(RECOMMENDED, method="gptq", damp=0.02)
    assert main(["quickstart", "--out", str(tmp_path / "q"), "--act-order"]) == 2
    assert "--act-order set GPTQ's rounding, but the quantizer is rtn" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lm_plan(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from _llm_fixtures import save_tiny_lm, write_text

    root = tmp_path_factory.mktemp("gptq_llm")
    folder, text = save_tiny_lm(root / "tiny"), write_text(root / "prose.txt")
    costs, plan = root / "costs.json", root / "w3.json"
    assert main(["sensitivity", "--model", str(folder), "--text", str(text), "--group-size", "16", "--windows", "8",
                 "--seq-len", "32", "--bits", "2,3,4", "--out", str(costs), "--quiet"]) == 0
    assert main(["search", "--costs", str(costs), "--uniform", "3", "--out", str(plan)]) == 0
    return folder, text, plan


def _kl(out: str) -> float:
    return float(re.search(r"mean logit KL ([\d.e-]+) nats", out).group(1))


def test_llm_gptq_plan_is_closer_to_the_float_model_and_equals_the_library(lm_plan, capsys):
    from mpsearch.deploy.evaluate import fake_quantize_model
    from mpsearch.deploy.lm_metrics import logit_kl
    from mpsearch.sensitivity.calibration import Calibration
    from mpsearch.zoo.llm import load_causal_lm
    from mpsearch.zoo.text import read_paragraphs, split_lines, text_windows

    folder, text, plan_file = lm_plan
    capsys.readouterr()
    assert main(["evaluate", "--model", str(folder), "--plan", str(plan_file), "--quiet"]) == 0
    rtn_kl = _kl(capsys.readouterr().out)
    assert main(["evaluate", "--model", str(folder), "--plan", str(plan_file), "--quantizer", "gptq", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "quantizer gptq (damp 0.01); GPTQ on 8 calibration windows of 32 tokens (seed 0)" in out
    assert _kl(out) < rtn_kl  # error compensation from the calibration windows
    model, tokenizer = load_causal_lm(folder)
    lines = read_paragraphs(text)
    calib = text_windows(tokenizer, split_lines(lines, "calibration"), 32, 8, seed=0)
    held_out = text_windows(tokenizer, split_lines(lines, "evaluation"), 32)
    plan = dataclasses.replace(BitPlan.load(plan_file), quantizer=dataclasses.replace(
        BitPlan.load(plan_file).quantizer, method="gptq"))
    quantized = fake_quantize_model(model, plan, batches=Calibration.causal_lm(calib).batches)
    assert _kl(out) == pytest.approx(logit_kl(model, quantized, held_out), rel=1e-3)


def test_llm_export_packs_gptq_codes_and_refuses_formats_that_cannot(lm_plan, tmp_path, capsys):
    pytest.importorskip("safetensors")
    from mpsearch.deploy.evaluate import fake_quantize_model
    from mpsearch.deploy.export import load
    from mpsearch.sensitivity.calibration import Calibration
    from mpsearch.zoo.llm import load_causal_lm
    from mpsearch.zoo.text import read_paragraphs, split_lines, text_windows

    folder, text, plan_file = lm_plan
    out = tmp_path / "packed"
    assert main(["export", "--plan", str(plan_file), "--model", str(folder), "--format", "mpsearch", "--quantizer", "gptq",
                 "--out", str(out)]) == 0
    assert "GPTQ on 8 calibration windows of 32 tokens" in capsys.readouterr().out
    model, tokenizer = load_causal_lm(folder)
    calib = text_windows(tokenizer, split_lines(read_paragraphs(text), "calibration"), 32, 8, seed=0)
    reference = fake_quantize_model(model, dataclasses.replace(BitPlan.load(plan_file), quantizer=dataclasses.replace(
        BitPlan.load(plan_file).quantizer, method="gptq")), batches=Calibration.causal_lm(calib).batches)
    ids = calib[:2]
    with torch.no_grad():
        torch.testing.assert_close(load(out, model)(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
    assert BitPlan.load(out / "plan.json").quantizer.method == "gptq"
    for fmt in ("compressed-tensors", "gguf"):
        assert main(["export", "--plan", str(plan_file), "--model", str(folder), "--format", fmt, "--quantizer", "gptq",
                     "--out", str(tmp_path / fmt)]) == 2
        assert f"--format {fmt} cannot hold GPTQ's weights" in capsys.readouterr().err
