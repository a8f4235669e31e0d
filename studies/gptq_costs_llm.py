"""SmolLM2: do GPTQ-error costs rank real per-layer damage better than round-to-nearest-error costs?

For every searched linear unit u of SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF, the
reference) and each width b, the *measured* damage is the increase of the mean next-token loss
on held-out windows when u alone is quantized to b bits (G = 128, affine), by GPTQ (on the
unit's input Hessian from the float model) or by round to nearest. The *predicted* damage is
the cost of (u, b) priced two ways from the same token-level Fisher values F:

* RTN-error cost: ``sum_ij F_ij (Q_b(W) - W)_ij^2`` (the error-weighted recipe's layer cost);
* GPTQ-error cost: ``mean(F) * tr(dW H dW^T) / mean(diag H)`` with dW the error GPTQ leaves
  (what ``build_cost_table(error="gptq")`` prices).

It reports Spearman rank correlations between predicted and measured damage, over all cells
and per width. Calibration (Fisher and Hessians): --calib-windows windows of 256 tokens from
the calibration lines; damage: --eval-windows windows from the held-out lines.

    python studies/gptq_costs_llm.py --data-dir DATA --out results/gptq_costs_llm
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.io import atomic_write_text
from mpsearch.deploy.lm_metrics import perplexity
from mpsearch.kernels.gptq import gptq_quantize
from mpsearch.kernels.quantize import fake_quantize
from mpsearch.pricing.gptq_errors import gptq_normaliser
from mpsearch.pricing.recipes import error_weighted_costs
from mpsearch.sensitivity.blockwise import block_input_hessians
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.token_fisher import token_fisher_values
from mpsearch.space.discover import discover_quietly, unit_modules
from mpsearch.zoo.data import default_data_dir
from mpsearch.zoo.llm import load_smollm2
from mpsearch.zoo.text import load_prose, text_windows

SEQ = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder with python_docs_prose.txt")
    p.add_argument("--bits", default="2,3")
    p.add_argument("--calib-windows", type=int, default=16, help="calibration windows (Fisher and Hessians)")
    p.add_argument("--eval-windows", type=int, default=2, help="held-out windows the damage is measured on")
    p.add_argument("--out", type=Path, default=Path("results/gptq_costs_llm"))
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir is required (a folder with python_docs_prose.txt), or set $MPSEARCH_DATA_DIR")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    widths = [int(b) for b in args.bits.split(",")]
    model, tokenizer = load_smollm2()
    calib = Calibration.causal_lm(text_windows(tokenizer, load_prose(args.data_dir, "calibration"), SEQ, args.calib_windows, seed=0))
    held = text_windows(tokenizer, load_prose(args.data_dir, "evaluation"), SEQ, args.eval_windows, seed=0)
    config = QuantizerConfig(scheme=Scheme.AFFINE, group_size=128)
    space = discover_quietly(model, bits=tuple(widths), pin_first_last=None, exclude=["lm_head"], quantizer=config)
    modules = unit_modules(model, space)
    values = token_fisher_values(model, calib, space)
    _, rtn_cost = error_weighted_costs(model, space, values)
    score = [float(v.mean()) for v in values]
    del values
    gptq_cost: dict[str, dict[int, float]] = {}
    gptq_weight: dict[tuple[int, int], torch.Tensor] = {}

    def price(indices: list[int], sums: list[torch.Tensor], rows: list[int]) -> None:
        for i, s, n in zip(indices, sums, rows):
            h = (s * (2.0 / max(n, 1))).float()
            norm = gptq_normaliser(h, config.damp)
            w = modules[i].weight.detach().float()
            gptq_cost[space.units[i].name] = {}
            for b in widths:
                result = gptq_quantize(w, h, b, config, column_errors=True)
                gptq_cost[space.units[i].name][b] = score[i] * float(result.column_errors.double().sum()) / norm
                gptq_weight[i, b] = result.weight

    with torch.no_grad():
        block_input_hessians(model, calib, space, on_block=price)
    print(f"costs and GPTQ weights in {time.perf_counter() - start:.0f} s", flush=True)

    def loss() -> float:
        return perplexity(model, held).nll

    with torch.no_grad():
        base = loss()
        cells, measured = [], {"gptq": [], "rtn": []}
        for i, (unit, module) in enumerate(zip(space.units, modules)):
            original = module.weight.detach().clone()
            for b in widths:
                for method, weight in (("gptq", gptq_weight.pop((i, b))), ("rtn", fake_quantize(original, b, config))):
                    module.weight.copy_(weight.to(original.dtype))
                    measured[method].append(loss() - base)
                module.weight.copy_(original)
                cells.append((unit.name, b))
            if i % 10 == 9 or i == len(modules) - 1:
                print(f"{i + 1} of {len(modules)} units measured ({time.perf_counter() - start:.0f} s)", flush=True)
    report(args, widths, base, cells, measured, rtn_cost, gptq_cost, len(held))
    return 0


def report(args, widths, base, cells, measured, rtn_cost, gptq_cost, n_held) -> None:
    rows = []
    for error, table in (("rtn", rtn_cost), ("gptq", gptq_cost)):
        pred = np.array([table[n][b] for n, b in cells])
        for method, values in measured.items():
            meas = np.array(values)
            row = {"cost_error": error, "damage_quantizer": method,
                   "all_widths": float(spearmanr(pred, meas).statistic)}
            for b in widths:
                mask = np.array([c[1] == b for c in cells])
                row[f"{b}_bits"] = float(spearmanr(pred[mask], meas[mask]).statistic)
            rows.append(row)
    result = {"model": "SmolLM2-135M-Instruct (dequantized Q4_1)", "quantizer": "affine, G=128",
              "calib_windows": args.calib_windows, "eval_windows": n_held, "reference_nll": base, "widths": widths,
              "cells": [{"unit": n, "bits": b, **{f"loss_increase_{m}": v[k] for m, v in measured.items()},
                         "cost_rtn": rtn_cost[n][b], "cost_gptq": gptq_cost[n][b]} for k, (n, b) in enumerate(cells)],
              "spearman": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "gptq_costs_llm.json", json.dumps(result, indent=1))
    lines = [f"Spearman rank correlation, predicted cost vs measured loss increase, SmolLM2-135M, {len(cells) // len(widths)} "
             f"units x {len(widths)} widths, {args.calib_windows} calibration / {n_held} held-out windows", "",
             "| cost priced with | damage measured with | all widths | " + " | ".join(f"{b} bits" for b in widths) + " |",
             "|---|---|---:|" + "---:|" * len(widths)]
    lines += [f"| {r['cost_error']} error | {r['damage_quantizer']} | {r['all_widths']:.3f} | "
              + " | ".join(f"{r[f'{b}_bits']:.3f}" for b in widths) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "gptq_costs_llm.md", text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
