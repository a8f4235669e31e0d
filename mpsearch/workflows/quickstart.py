"""The end-to-end quickstart: pretrained ResNet -> sensitivity -> plans -> measured accuracy.

Everything runs on the embedded default (ResNet-20 and the first 1,000
CIFAR-10 test images) unless ``data_dir`` points at the full data. The first
``n_calib`` images calibrate the sensitivity estimate; accuracy is measured on
the rest, so no evaluated image was seen by the estimator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpsearch.core.budget import Budget
from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import DataError
from mpsearch.core.io import atomic_write_text
from mpsearch.deploy.bias_correction import measure_bias_correction
from mpsearch.deploy.evaluate import evaluate_plan, plan_size
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import Calibration, HutchinsonTrace
from mpsearch.solvers.pareto import ParetoFront, pareto
from mpsearch.space.discover import discover_quietly
from mpsearch.zoo.data import load_cifar10_split
from mpsearch.zoo.eval import accuracy
from mpsearch.zoo.models import load_pretrained

DEFAULT_BUDGETS = (2.5, 3.0, 3.5, 4.0)
DEFAULT_UNIFORM = (8, 4, 3, 2)
FRONT_BUDGETS = (2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0, 4.5, 5.0, 6.0, 8.0)


@dataclass
class QuickstartResult:
    table: Any  # pandas DataFrame, one row per plan
    front: ParetoFront
    costs: CostTable
    out_dir: Path
    seconds: dict[str, float]


def run_quickstart(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "mpsearch-out",
    model_name: str = "resnet20",
    n_calib: int = 256,
    calib_batch: int = 64,
    seed: int = 0,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    uniform: Sequence[int] = DEFAULT_UNIFORM,
    tol: float = 0.1,
    max_probes: int = 200,
    bias_correction: bool = True,
    model: torch.nn.Module | None = None,
    model_file: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    quantizer: QuantizerConfig | None = None,
    front_budgets: Sequence[float] = FRONT_BUDGETS,
) -> QuickstartResult:
    """Run the whole pipeline and write costs, plans, a CSV table and the Pareto figure into ``out_dir``.

    With ``bias_correction`` (the default) every plan, uniform ones included, carries the mean
    output shifts of its quantized layers measured on the calibration images
    (:mod:`mpsearch.deploy.bias_correction`), so the saved plans reproduce the measured models.

    ``model`` replaces the pretrained ``model_name`` (e.g. a user's checkpoint of that architecture,
    read from ``model_file``, which the cost table and plans then record).

    ``quantizer`` (default :data:`~mpsearch.core.config.RECOMMENDED`) is the quantizer of the search
    space and of every plan. Costs are priced with its round-to-nearest errors whatever its
    ``method``; with ``method="gptq"`` every plan is measured (and bias-corrected) after GPTQ on
    the calibration images, and the saved plans record it. ``front_budgets`` are the average-bit
    budgets of the Pareto front (each plan on it is measured), ``budgets`` among them or not.
    """
    import pandas as pd

    torch.manual_seed(seed)
    out = Path(out_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_cifar10_split(data_dir, n_calib)
    x_cal, y_cal, x_eval, y_eval = data.x_calib, data.y_calib, data.x_eval, data.y_eval
    model = load_pretrained(model_name, data_dir) if model is None else model.eval()
    log(f"{model_name}: {data.n_images} CIFAR-10 test images ({data.source}); "
        f"calibrating on the first {n_calib}, evaluating on the other {len(x_eval)}")
    fp32 = accuracy(model, x_eval, y_eval)
    timings["load_and_fp32"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    space = discover_quietly(model, quantizer=quantizer or RECOMMENDED)
    gptq = [x_cal] if space.quantizer.method == "gptq" else None  # GPTQ rounds with the calibration images
    if notice := space.float_notice():
        log(f"note: {notice}")
    calib = Calibration.classification(x_cal, y_cal, batch_size=calib_batch)
    estimator = HutchinsonTrace(seed=seed, tol=tol, max_probes=max_probes, progress=progress)
    sens = estimator.estimate(model, calib, space)
    source_meta = {"model": model_name, **({"model_file": str(model_file)} if model_file is not None else {})}
    costs = build_cost_table(model, space, sens, meta={**source_meta, "calibration": n_calib})
    costs.save(out / "costs.json")
    timings["sensitivity"] = time.perf_counter() - t0
    quality = costs.meta["estimate_quality"]
    log(f"Hutchinson trace: {quality['probes']} probes, converged={quality['converged']}, relative standard error "
        f"median {quality['rel_stderr_median']:.3g} (worst {quality['rel_stderr_max']:.3g}), {sens.seconds:.1f} s")

    def finish(plan):
        if not bias_correction:
            return plan
        return plan.with_bias_correction(measure_bias_correction(model, plan, [x_cal]))  # GPTQ too: same batches

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = [{
        "plan": "fp32", "avg_bits": 32.0, "KiB": plan_size_fp32(model) / 1024, "predicted_cost": 0.0, "top1": fp32,
    }]
    baselines: dict[str, tuple[float, float]] = {}
    for b in uniform:
        choice = costs.uniform_choice(b)
        plan = finish(costs.plan(choice, solver="uniform", budget=f"uniform {b}-bit"))
        rows.append(_row(f"uniform W{b}", model, plan, costs, choice, x_eval, y_eval, out, gptq))
        baselines[f"uniform W{b}"] = (rows[-1]["avg_bits"], rows[-1]["top1"])
    front_budgets = sorted(set(default_sweep(costs, "avg_bits", front_budgets)) | {float(b) for b in budgets})
    front = pareto(costs, front_budgets, solver="ilp", progress=progress)
    measured: list[float | None] = []
    for result in front.results:
        value = result.budgets[0].value
        if result.choice is None:
            measured.append(None)
            continue
        if value in {float(b) for b in budgets}:
            rows.append(_row(f"mixed {value:g} bits", model, finish(result.plan), costs, result.choice, x_eval, y_eval, out,
                             gptq))
            measured.append(rows[-1]["top1"])
        else:
            measured.append(evaluate_plan(model, finish(result.plan), x_eval, y_eval, batches=gptq))
    front.add_measurement("top1", measured)
    timings["plans_and_eval"] = time.perf_counter() - t0

    table = pd.DataFrame(rows)
    atomic_write_text(out / "summary.csv", table.to_csv(index=False))
    atomic_write_text(out / "pareto.csv", front.to_frame().to_csv(index=False))
    front.plot(out / "pareto.png", measured="top1", baselines=baselines, reference=(f"fp32 ({fp32:.2f})", fp32),
               title=f"{model_name} on CIFAR-10 ({len(x_eval)} held-out images)")
    return QuickstartResult(table=table, front=front, costs=costs, out_dir=out, seconds=timings)


def plan_size_fp32(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


def _row(label, model, plan, costs, choice, x_eval, y_eval, out: Path, batches=None) -> dict[str, Any]:
    size = plan_size(model, plan)
    slug = label.replace(" ", "_").replace(".", "p")
    plan.save(out / "plans" / f"{slug}.json")
    return {
        "plan": label,
        "avg_bits": costs.average_bits(choice),
        "KiB": size.total_bytes / 1024,
        "predicted_cost": costs.objective(choice),
        "top1": evaluate_plan(model, plan, x_eval, y_eval, batches=batches),
    }


def format_table(table) -> str:
    """The quickstart table as aligned text."""
    shown = table.copy()
    shown["avg_bits"] = shown["avg_bits"].map(lambda v: f"{v:.3f}")
    shown["KiB"] = shown["KiB"].map(lambda v: f"{v:.1f}")
    shown["predicted_cost"] = shown["predicted_cost"].map(lambda v: f"{v:.3g}")
    shown["top1"] = shown["top1"].map(lambda v: f"{v:.2f}")
    return shown.to_string(index=False)


def default_sweep(costs: CostTable, kind: str = "avg_bits", grid: Sequence[float] | None = None) -> list[float]:
    """Budget values for a sweep nobody chose: ``grid`` (default 2:8:0.25 average bits) without the
    values above the largest useful budget, or for other kinds 16 values from the smallest feasible
    to the largest useful one. A sweep the user chose is passed on as it is, and checked."""
    probe = Budget(kind=kind, value=1.0)
    top = costs.max_usage(probe)
    if kind != "avg_bits":
        return [float(v) for v in np.linspace(costs.min_usage(probe), top, 16)]
    values = [float(v) for v in (budget_grid("2:8:0.25") if grid is None else grid)]
    return [v for v in values if v <= top] or [top]


def budget_grid(text: str) -> list[float]:
    """Parse ``2.5,3,3.5`` or ``START:STOP:STEP`` (inclusive) into budget values."""
    if ":" in text:
        start, stop, step = (float(v) for v in text.split(":"))
        if step <= 0 or stop < start:
            raise DataError(f"a budget range must read START:STOP:STEP with STEP > 0 and STOP >= START, but got {text!r}.")
        return [round(v, 10) for v in np.arange(start, stop + step / 2, step)]
    return [Budget.parse(v).value for v in text.split(",") if v.strip()]
