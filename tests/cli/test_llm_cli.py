"""The causal-LM verbs end to end on a tiny decoder saved as a model folder: sensitivity -> search -> evaluate,
each equal to the library calls it stands for, and the refusals in the flags' own terms."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _llm_fixtures import save_tiny_lm, write_text

from mpsearch.cli.main import main
from mpsearch.core.costs import CostTable
from mpsearch.core.plan import BitPlan

pytestmark = pytest.mark.torch_threads(1)

G, SEQ, WINDOWS = 16, 32, 8


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(folder, text, costs.json) with the table written by `mpsearch sensitivity`."""
    root = tmp_path_factory.mktemp("llm")
    folder, text = save_tiny_lm(root / "tiny"), write_text(root / "prose.txt")
    costs = root / "costs.json"
    assert main(["sensitivity", "--model", str(folder), "--text", str(text), "--group-size", str(G), "--windows",
                 str(WINDOWS), "--seq-len", str(SEQ), "--bits", "2,3,4", "--out", str(costs), "--quiet"]) == 0
    return folder, text, costs


def _api_pieces(folder, text):
    from mpsearch.zoo.llm import load_causal_lm
    from mpsearch.zoo.text import read_paragraphs, split_lines, text_windows

    model, tokenizer = load_causal_lm(folder)
    lines = read_paragraphs(text)
    calib = text_windows(tokenizer, split_lines(lines, "calibration"), SEQ, WINDOWS, seed=0)
    held_out = text_windows(tokenizer, split_lines(lines, "evaluation"), SEQ)
    return model, calib, held_out


@pytest.mark.parametrize("estimator", ["token_fisher", "xtx"])
def test_sensitivity_table_equals_the_error_weighted_recipe(lm, tmp_path, estimator):
    """The default (token Fisher) and xtx: each table is the library's error-weighted recipe on the same windows,
    with the recommended quantizer (affine, MSE-clipped ranges) at the given group size."""
    from mpsearch.core.config import RECOMMENDED
    from mpsearch.pricing.recipes import input_values, recipe_tables, token_fisher_values
    from mpsearch.sensitivity.calibration import Calibration
    from mpsearch.space.discover import discover_quietly

    folder, text, costs_file = lm
    if estimator != "token_fisher":  # the fixture's table is the default's
        costs_file = tmp_path / "costs.json"
        assert main(["sensitivity", "--model", str(folder), "--text", str(text), "--group-size", str(G), "--windows",
                     str(WINDOWS), "--seq-len", str(SEQ), "--bits", "2,3,4", "--estimator", estimator,
                     "--out", str(costs_file), "--quiet"]) == 0
    costs = CostTable.load(costs_file)
    meta = costs.meta
    assert (meta["model_kind"], meta["estimator"], meta["recipe"], meta["granularity"]) == \
        ("causal_lm", estimator, "error-weighted", "group")
    assert (meta["text"], meta["windows"], meta["seq_len"], meta["seed"]) == (str(text), WINDOWS, SEQ, 0)
    model, calib, _ = _api_pieces(folder, text)
    space = discover_quietly(model, bits=(2, 3, 4), pin_first_last=None, exclude=["lm_head"],
                             quantizer=dataclasses.replace(RECOMMENDED, group_size=G))
    assert costs.quantizer["clip_search"] is True
    data = Calibration.causal_lm(calib)
    values = (token_fisher_values if estimator == "token_fisher" else input_values)(model, data, space)
    group, _ = recipe_tables(model, space, values)
    assert "lm_head" not in costs.items.units and len(costs.items.units) == 14  # 7 linear layers in each of 2 blocks
    np.testing.assert_allclose(costs.cost, group.cost, rtol=1e-6)
    np.testing.assert_array_equal(costs.storage_bits, group.storage_bits)


def test_slim_keeps_every_layer_at_the_budget_and_ilp_does_at_least_as_well(lm, tmp_path):
    folder, text, costs_file = lm
    overhead = 24 / G  # fp16 scale + 8-bit zero per group; every fan-in here is a multiple of G
    outs = {s: tmp_path / f"{s}.json" for s in ("slim", "ilp")}
    for solver, out in outs.items():
        assert main(["search", "--costs", str(costs_file), "--budget", str(3 + overhead), "--solver", solver,
                     "--out", str(out)]) == 0
    costs = CostTable.load(costs_file)
    slim, ilp = (BitPlan.load(outs[s]) for s in ("slim", "ilp"))
    for unit, widths in slim.bits.items():
        if unit in costs.items.units:
            assert np.mean(widths) == pytest.approx(3.0), unit  # SliM-LLM's rule: each layer alone
    def objective(plan):
        return sum(float(costs.cost[costs.items.unit_slice(u), [costs.bits.index(b) for b in np.broadcast_to(
            plan.bits[u], (costs.items.unit_slice(u).stop - costs.items.unit_slice(u).start,))]].sum())
            for u in costs.items.units)
    assert objective(ilp) <= objective(slim) * (1 + 1e-9)  # the global optimum under the same total budget
    assert slim.meta["solver"] == "slim" and slim.meta["text"] == str(text)


def _numbers(out: str) -> tuple[float, float, float]:
    m = re.search(r"perplexity ([\d.]+) \(float ([\d.]+)\), mean logit KL ([\d.e-]+) nats", out)
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


def test_evaluate_prints_perplexity_and_kl_of_the_library(lm, tmp_path, capsys):
    from mpsearch.deploy.evaluate import fake_quantize_model
    from mpsearch.deploy.lm_metrics import logit_kl, perplexity

    folder, text, costs_file = lm
    plan_file = tmp_path / "w3.json"
    assert main(["search", "--costs", str(costs_file), "--uniform", "3", "--out", str(plan_file)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(folder), "--plan", str(plan_file)]) == 0  # text and windows from the plan
    captured = capsys.readouterr()
    ppl, ref, kl = _numbers(captured.out)
    assert "note: using the text the plan records" in captured.err and "quantizer rtn" in captured.out
    model, _, held_out = _api_pieces(folder, text)
    assert f"on {len(held_out)} held-out windows of {SEQ} tokens" in captured.out
    quantized = fake_quantize_model(model, BitPlan.load(plan_file))
    assert ref == pytest.approx(perplexity(model, held_out).perplexity, abs=1e-3)
    assert ppl == pytest.approx(perplexity(quantized, held_out).perplexity, abs=1e-3)
    assert kl == pytest.approx(logit_kl(model, quantized, held_out), rel=1e-3) and kl > 0
    assert main(["evaluate", "--model", str(folder), "--text", str(text), "--seq-len", str(SEQ), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"perplexity {perplexity(model, held_out[:3]).perplexity:.3f} on 3 held-out windows")
    assert "; float, 43,056 parameters" in out


def test_block_wise_obs_and_layer_granularity(lm, tmp_path, capsys):
    folder, text, _ = lm
    out = tmp_path / "obs.json"
    assert main(["sensitivity", "--model", str(folder), "--text", str(text), "--estimator", "obs_block", "--group-size",
                 str(G), "--granularity", "layer", "--windows", "4", "--seq-len", str(SEQ), "--out", str(out), "--quiet"]) == 0
    costs = CostTable.load(out)
    assert costs.meta["estimator"] == "obs_block" and costs.n_items == 14 and "granularity" not in costs.meta
    assert "14 units (14 layers), obs_block" in capsys.readouterr().out
    assert costs.quantizer["group_size"] == G


@pytest.mark.parametrize(("argv", "words"), [
    (["--model", "{missing}.gguf"], ["does not exist", ".gguf"]),
    (["--model", "{empty}"], ["must hold config.json"]),
    (["--windows", "100000"], ["--text must give 100000 window(s) of --seq-len 32", "Pass --windows"]),
    (["--seq-len", "100000"], ["0 window(s)", "a smaller --seq-len"]),
    (["--calib", "16"], ["--calib apply to the CIFAR models", "is a causal LM"]),
    (["--granularity", "layer"], ["--granularity layer", "no --group-size", "--group-size 128"]),
    (["--time-limit", "5"], ["--time-limit", "--estimator token_fisher", "cannot stop early"]),
    (["--text", "{short}"], ["evaluation lines"]),
    (["--text", "{binary}"], ["--text must be UTF-8 text", "invalid start byte"]),
])
def test_llm_sensitivity_refusals(lm, tmp_path, capsys, argv, words):
    folder, text, _ = lm
    (tmp_path / "empty").mkdir()
    short = tmp_path / "short.txt"
    short.write_text("abc\n" * 5)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"abc\n\xff\xfe\x00" * 50)
    values = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "short": short, "binary": binary}
    argv = [a.format(**values) for a in argv]
    base = ["sensitivity", "--model", str(folder), "--text", str(text), "--seq-len", str(SEQ), "--windows", "2",
            "--out", str(tmp_path / "c.json"), "--quiet"]
    for flag in ("--model", "--text", "--seq-len", "--windows"):
        if flag in argv:
            i = base.index(flag)
            del base[i:i + 2]
    if argv == ["--text", str(short)]:  # a text with calibration lines but no held-out ones: evaluate says so
        base[0] = "evaluate"
        del base[base.index("--out"):base.index("--out") + 2]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "c.json").exists()


def test_cifar_models_refuse_llm_flags(capsys, tmp_path):
    assert main(["sensitivity", "--model", "resnet20", "--group-size", "16", "--out", str(tmp_path / "c.json")]) == 2
    assert "--group-size apply to causal LMs, but --model resnet20 is a CIFAR model" in capsys.readouterr().err


def test_plan_records_what_evaluate_needs(lm, tmp_path, capsys):
    folder, text, costs_file = lm
    out = tmp_path / "p.json"
    assert main(["search", "--costs", str(costs_file), "--budget", "4.5", "--out", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert {k: meta[k] for k in ("model", "text", "windows", "seq_len", "seed", "model_kind")} == \
        {"model": str(folder), "text": str(text), "windows": WINDOWS, "seq_len": SEQ, "seed": 0, "model_kind": "causal_lm"}
    capsys.readouterr()
    assert main(["evaluate", "--plan", str(out), "--limit", "2", "--quiet"]) == 0  # no --model, no --text: the plan's
    captured = capsys.readouterr()
    assert f"note: using the model the plan records (--model {folder})" in captured.err
    assert "on 2 held-out windows of 32 tokens" in captured.out
    assert main(["search", "--costs", str(costs_file), "--uniform", "3", "--bias-correction", "--out", str(out)]) == 2
    assert "--bias-correction is measured on CIFAR images, but the cost table is a causal LM's" in capsys.readouterr().err


def test_model_names_and_paths():
    from mpsearch.cli.llm import is_causal_lm

    assert not any(is_causal_lm(m) for m in ("resnet20", "resnet56", "resnet18", None))
    assert all(is_causal_lm(m) for m in ("model.GGUF", "./mine", "~/models/x", "a/b"))
