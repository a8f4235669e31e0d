"""How well does each sensitivity estimator predict the real damage of quantizing a unit?

Ground truth: quantize each searchable unit alone to 2 and to 3 bits and measure the
increase of the cross-entropy on a fixed set of real held-out CIFAR-10 images. For every
estimator in ``ESTIMATORS`` (those that fail for a missing dependency or an unsupported
model are recorded as skipped, with the reason): the Spearman rank correlation of its
predicted cost (the cost column of its cost table at 2 and at 3 bits) with that ground
truth, its wall time, and the top-1 accuracy of the ILP plan at an average of 3 bits
(``solve(costs, 3.0)``), evaluated on other held-out images; with real calibration data
and, where ``mpsearch.sensitivity.distill`` exists, with ZeroQ-distilled data.

Costs of score-based estimators are ``score * ||Q_b(W) - W||^2``, exactly as
``build_cost_table`` computes them; the quantization errors are computed once per model
and reused (``build_cost_table`` itself is called for estimators with their own costs).

    python studies/estimator_fidelity.py --data-dir DATA --models resnet20 --out results/fidelity --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.io import atomic_write_text
from mpsearch.deploy.evaluate import evaluate_plan
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.quantize import fake_quantize, matrix_to_weight, weight_matrix
from mpsearch.pricing.tables import build_cost_table, cost_table_from_space
from mpsearch.sensitivity import ESTIMATORS, Calibration
from mpsearch.solvers import solve
from mpsearch.space.discover import discover
from mpsearch.space.quant_errors import quantization_errors
from mpsearch.zoo import accuracy, load_cifar10, load_pretrained, to_tensor

for _module in ("relevance", "embedding", "perturbation"):  # registered on import, wherever __init__ stands
    if importlib.util.find_spec(f"mpsearch.sensitivity.{_module}") is not None:
        importlib.import_module(f"mpsearch.sensitivity.{_module}")

# Options that keep each estimator within a study's time; passed only where accepted.
QUICK_OPTIONS = {"max_probes": 24, "min_probes": 8, "n_probes": 8, "iterations": 10, "time_limit": 120.0}


def mean_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            total += float(nn.functional.cross_entropy(model(x[i : i + batch]), y[i : i + batch], reduction="sum"))
    return total / len(y)


def ground_truth(model, space, x, y, bits=(2, 3)) -> dict[int, dict[str, float]]:
    """Loss increase with each searchable unit alone at each width; weights restored exactly."""
    base = mean_ce(model, x, y)
    modules = dict(model.named_modules())
    out: dict[int, dict[str, float]] = {b: {} for b in bits}
    for unit in space.units:
        if unit.pinned:
            continue
        module = modules[unit.name]
        kind, saved = quantizable_kind(module), module.weight.detach().clone()
        try:
            for b in bits:
                q = fake_quantize(weight_matrix(saved, kind), b, space.quantizer)
                module.weight.data.copy_(matrix_to_weight(q, saved.shape, kind))
                out[b][unit.name] = mean_ce(model, x, y) - base
        finally:
            module.weight.data.copy_(saved)
    return out


def make_estimator(name: str, quick: bool, seed: int):
    factory = ESTIMATORS.get(name)
    params = inspect.signature(factory).parameters
    options = {"progress": False, "seed": seed} | (QUICK_OPTIONS if quick else {})
    return factory(**{k: v for k, v in options.items() if k in params})


def cost_table(model, space, sens, errors):
    if sens.unit_costs is not None:
        return build_cost_table(model, space, sens)
    per_unit = {n: {b: sens.scores[n] * e for b, e in errors[n].items()} for n in space.names}
    return cost_table_from_space(space, per_unit, meta={"estimator": sens.method, "estimator_seconds": sens.seconds})


def distilled_calibration(model, n: int, quick: bool, seed: int) -> tuple[Calibration | None, str]:
    if importlib.util.find_spec("mpsearch.sensitivity.distill") is None:
        return None, "mpsearch.sensitivity.distill not available"
    try:
        from mpsearch.sensitivity.distill import distill_bn_data

        data = distill_bn_data(model, n=n, steps=60 if quick else 300, seed=seed, progress=False)
        # batches of 32 like the real data: one batch of n would make every Hessian probe n images wide
        return data.calibration(batch_size=min(n, 32)), f"distilled (BN loss x{data.reduction:.0f} lower)"
    except Exception as exc:
        return None, f"distillation failed: {type(exc).__name__}: {exc}"


def study_model(name, args, images, labels) -> list[dict]:
    n_cal, n_gt, n_eval = (64, 256, 1000) if args.quick else (256, 512, 5000)
    perm = np.random.default_rng(args.seed).permutation(len(labels))
    cal_i, gt_i, ev_i = perm[:n_cal], perm[n_cal : n_cal + n_gt], perm[n_cal + n_gt : n_cal + n_gt + n_eval]
    x, y = to_tensor(images), torch.as_tensor(labels)
    model = load_pretrained(name, args.data_dir)
    quantizer = QuantizerConfig(scheme="affine") if args.quick else RECOMMENDED
    space = discover(model, quantizer=quantizer)
    t0 = time.perf_counter()
    truth_file = Path(args.out) / f"ground_truth_{name}.json"  # a rerun reuses it (it takes minutes on ResNet-56)
    if truth_file.is_file():
        truth = {int(b): v for b, v in json.loads(truth_file.read_text()).items()}
    else:
        truth = ground_truth(model, space, x[gt_i], y[gt_i])
        atomic_write_text(truth_file, json.dumps(truth, sort_keys=True))
    print(f"[{name}] ground truth for {len(truth[2])} units in {time.perf_counter() - t0:.0f}s", flush=True)
    errors = quantization_errors(model, space)
    fp_top1 = accuracy(model, x[ev_i], y[ev_i])
    rows = [{"model": name, "estimator": "fp32", "data": "-", "top1_3bit": fp_top1, "note": "full precision"}]
    datasets = {"real": (Calibration.classification(x[cal_i], y[cal_i], batch_size=32), "real held-out images")}
    distilled, note = distilled_calibration(model, n_cal, args.quick, args.seed)
    datasets["distilled"] = (distilled, note)
    names = [n for n in ESTIMATORS.names() if not args.estimators or n in args.estimators.split(",")]
    for est_name in names:
        for data_name, (calib, data_note) in datasets.items():
            row = {"model": name, "estimator": est_name, "data": data_name}
            if (name, est_name, data_name) in args.finished:  # kept from an interrupted run
                rows.append(args.finished[(name, est_name, data_name)])
                continue
            if calib is None:
                rows.append(row | {"note": f"skipped: {data_note}"})
                continue
            try:
                start = time.perf_counter()
                sens = make_estimator(est_name, args.quick, args.seed).estimate(model, calib, space)
                seconds = time.perf_counter() - start
                costs = cost_table(model, space, sens, errors)
            except Exception as exc:
                rows.append(row | {"note": f"skipped: {type(exc).__name__}: {str(exc)[:120]}"})
                continue
            row |= {"seconds": round(seconds, 2), "note": data_note}
            for b in (2, 3):
                units = list(truth[b])
                col = costs.bits.index(b)
                pred = [costs.cost[costs.items.index(u), col] for u in units]
                rho = spearmanr(pred, [truth[b][u] for u in units]).statistic
                row[f"spearman_{b}bit"] = None if rho is None or math.isnan(rho) else round(float(rho), 3)
            result = solve(costs, 3.0)
            row["top1_3bit"] = evaluate_plan(model, result.plan, x[ev_i], y[ev_i]) if result.ok else None
            row["plan_status"] = str(getattr(result.status, "value", result.status))
            rows.append(row)
            print(f"[{name}] {est_name}/{data_name}: {row}", flush=True)
            if args.partial is not None:  # a long run keeps what it finished
                atomic_write_text(args.partial, pd.DataFrame(args.done + rows).to_csv(index=False))
    return rows


def markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = ["" if (isinstance(v, float) and math.isnan(v)) or v is None else str(v) for v in r.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz and checkpoints")
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--out", default="results/estimator_fidelity")
    parser.add_argument("--estimators", default="", help="comma-separated subset (default: all registered)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer images and probes, plain min-max quantizer")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    images, labels = load_cifar10(args.data_dir)
    rows: list[dict] = []
    args.partial, args.done = Path(args.out) / "partial.csv", rows
    args.finished = {}
    if args.partial.is_file():  # resume: rows finished by an interrupted run are kept, not recomputed
        for row in pd.read_csv(args.partial).to_dict("records"):
            if row.get("estimator") != "fp32" and isinstance(row.get("seconds"), float) and not math.isnan(row["seconds"]):
                kept = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
                args.finished[(row["model"], row["estimator"], row["data"])] = kept
    for name in args.models.split(","):
        rows += study_model(name.strip(), args, images, labels)
    order = ["model", "estimator", "data", "spearman_2bit", "spearman_3bit", "seconds", "top1_3bit", "plan_status", "note"]
    df = pd.DataFrame(rows).reindex(columns=order)
    out = Path(args.out)
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    atomic_write_text(out / "estimator_fidelity.csv", buffer.getvalue())
    atomic_write_text(out / "estimator_fidelity.md", markdown(df))
    print(markdown(df))
    return df


if __name__ == "__main__":
    main()
