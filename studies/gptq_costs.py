"""Do GPTQ-error costs rank real GPTQ damage better than round-to-nearest-error costs?

For every searched unit u of a CIFAR ResNet and each width b, the *measured* damage is the
increase of the held-out cross-entropy when u alone is quantized to b bits (weights only, the
rest in fp32). The *predicted* damage is the cost table's cell (u, b) for one estimator, priced
two ways: ``score * ||Q_b(W) - W||^2`` (round to nearest's weight error, ``error="rtn"``) and
``score * tr(dW H dW^T) / mean(diag H)`` (the error GPTQ leaves, ``error="gptq"``). The study
reports the Spearman rank correlation between predicted and measured damage, over all (unit,
width) cells and per width, for damage measured with GPTQ and, as a reference, with round to
nearest. Calibration: the first --calibration test images (estimates, Hessians and GPTQ);
evaluation: the next --eval images.

    python studies/gptq_costs.py --data-dir DATA --out results/gptq_costs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.io import atomic_write_text
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.pricing import build_cost_table
from mpsearch.sensitivity import Calibration, get_estimator
from mpsearch.space.discover import discover
from mpsearch.zoo.data import load_cifar10_split
from mpsearch.zoo.models import load_pretrained


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="folder with cifar10_test.npz and resnet*.th")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--estimators", default="fisher")
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--calibration", type=int, default=256, help="first N test images calibrate (default: %(default)s)")
    p.add_argument("--eval", type=int, default=1000, help="the next N images measure the loss (default: %(default)s)")
    p.add_argument("--act-order", action="store_true", help="GPTQ with act-order")
    p.add_argument("--rtn-damage", action="store_true", help="also measure each cell's damage under round to nearest")
    p.add_argument("--out", type=Path, default=Path("results/gptq_costs"))
    return p.parse_args(argv)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    model.eval()
    total = sum(float(F.cross_entropy(model(x[i:i + batch]), y[i:i + batch], reduction="sum")) for i in range(0, len(x), batch))
    return total / len(x)


def spearman(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(spearmanr(pred, meas).statistic)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    widths = [int(b) for b in args.bits.split(",")]
    data = load_cifar10_split(args.data_dir, args.calibration, eval_limit=args.eval, what="--calibration")
    calib = Calibration.classification(data.x_calib, data.y_calib, batch_size=64)
    model = load_pretrained(args.model, args.data_dir).eval()
    gptq = QuantizerConfig.from_dict({**RECOMMENDED.to_dict(), "method": "gptq", "act_order": args.act_order})
    space = discover(model, bits=tuple(sorted({*widths, 8})), quantizer=gptq)
    units = [u.name for u in space.units if not u.pinned]
    base = mean_loss(model, data.x_eval, data.y_eval)
    start = time.perf_counter()
    tables: dict[tuple[str, str], object] = {}
    for est in args.estimators.split(","):
        sens = get_estimator(est, progress=False).estimate(model, calib, space)
        for error in ("rtn", "gptq"):
            tables[est, error] = build_cost_table(model, space, sens, granularity="layer", error=error, calibration=calib)
    print(f"cost tables in {time.perf_counter() - start:.0f} s", flush=True)

    methods = [("gptq", gptq)] + ([("rtn", RECOMMENDED)] if args.rtn_damage else [])
    measured: dict[str, list[float]] = {m: [] for m, _ in methods}
    cells: list[tuple[str, int]] = []
    for name in units:
        for b in widths:
            bits = {n: (b if n == name else 16) for n in space.names}
            for method, quantizer in methods:
                plan = BitPlan(bits=bits, quantizer=quantizer)
                q = fake_quantize_model(model, plan, batches=calib.batches if method == "gptq" else None)
                measured[method].append(mean_loss(q, data.x_eval, data.y_eval) - base)
            cells.append((name, b))
        print(f"{name}: measured in {time.perf_counter() - start:.0f} s", flush=True)
        report(args, gptq, units, widths, base, len(data.x_eval), tables, cells, measured)
    return 0


def report(args, gptq, units, widths, base, n_eval, tables, cells, measured) -> None:
    """Write the JSON and markdown of the cells measured so far (rewritten after every unit)."""
    rows = []
    for (est, error), table in tables.items():
        pred = np.array([table.cost[table.items.index(n), table.bits.index(b)] for n, b in cells])
        for method, values in measured.items():
            meas = np.array(values)
            row = {"estimator": est, "cost_error": error, "damage_quantizer": method, "all_widths": spearman(pred, meas)}
            for b in widths:
                mask = np.array([c[1] == b for c in cells])
                row[f"{b}_bits"] = spearman(pred[mask], meas[mask])
            rows.append(row)
    done = sorted({n for n, _ in cells}, key=units.index)
    result = {
        "model": args.model, "calibration_images": args.calibration, "eval_images": n_eval,
        "quantizer": dataclasses.asdict(gptq) | {"scheme": gptq.scheme.value}, "fp32_loss": base,
        "units_measured": len(done), "units_searched": len(units), "widths": widths,
        "cells": [{"unit": n, "bits": b, **{f"loss_increase_{m}": v[i] for m, v in measured.items()}}
                  for i, (n, b) in enumerate(cells)],
        "spearman": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "gptq_costs.json", json.dumps(result, indent=1))
    head = "| estimator | cost error | damage measured with | all widths | " + " | ".join(f"{b} bits" for b in widths) + " |"
    lines = [f"Spearman rank correlation, predicted cost vs measured loss increase, {args.model}, "
             f"{len(done)} of {len(units)} units x {len(widths)} widths, {args.calibration} calibration / {n_eval} held-out images", "",
             head, "|---|---|---|" + "---:|" * (len(widths) + 1)]
    lines += [f"| {r['estimator']} | {r['cost_error']} | {r['damage_quantizer']} | {r['all_widths']:.3f} | "
              + " | ".join(f"{r[f'{b}_bits']:.3f}" for b in widths) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "gptq_costs.md", text)


if __name__ == "__main__":
    sys.exit(main())
