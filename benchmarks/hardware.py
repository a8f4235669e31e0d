"""Benchmark: the lookup-table latency model against measured whole-model latency (prints JSON).

For packed ResNet-20 (one 32x32 image) and MiniLM (one 128-token sequence) under five plans
(uniform 2, 4 and 8 bits, two seeded random mixes), compare

* predicted = sum over units of the LUT's latency of its GEMM (``mpsearch hw calibrate`` table;
  convolutions as im2col GEMMs) + the model's non-GEMM time ("rest": batch norm, attention,
  layer norm...), measured once on the *float* model as its forward time minus the time spent
  inside its Conv2d/Linear modules. The rest does not depend on the plan;
* measured = best (minimum over >= 10 repeats, >= 1 s) wall time of the packed model's forward
  (``mpsearch.deploy.apply.apply(model, plan, backend="numba")``).

Numba and torch run with one thread, as the table is measured. Target: within 25 %.

    python benchmarks/hardware.py [--lut lut.json] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mpsearch.hardware_models.lut import LUTLatencyModel
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.pricing.profile import trace_layers
from mpsearch.space.hooks import ModelHooks
from mpsearch.workflows.hw_calibrate import calibrate, time_call


def rest_ms(model: torch.nn.Module, inputs: dict, repeats: int = 15) -> tuple[float, float]:
    """(whole forward ms, ms outside the quantizable units) of a float model, best of the repeats."""
    starts: dict[int, float] = {}
    inside = [0.0]
    totals, outs = [], []
    with ModelHooks(model, train=None) as hooks, torch.no_grad():
        for m in model.modules():
            if quantizable_kind(m) is not None:
                hooks.pre(m, lambda mod, a: starts.__setitem__(id(mod), time.perf_counter()))
                hooks.forward(m, lambda mod, a, o: inside.__setitem__(0, inside[0] + time.perf_counter() - starts[id(mod)]))
        model(**inputs)
        for _ in range(repeats):
            inside[0] = 0.0
            t = time.perf_counter()
            model(**inputs)
            total = time.perf_counter() - t
            totals.append(total)
            outs.append(total - inside[0])
    best = int(np.argmin(totals))
    return float(totals[best] * 1e3), float(outs[best] * 1e3)


def plans(names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    rng = np.random.default_rng(0)
    out = {f"uniform{b}": {n: b for n in names} for b in (2, 4, 8)}
    for k in range(2):
        out[f"mixed{k}"] = {n: int(rng.choice([2, 3, 4, 8])) for n in names}
    return out


def bench_model(label: str, model: torch.nn.Module, inputs: dict, lut: LUTLatencyModel) -> dict:
    from mpsearch.core.config import QuantizerConfig
    from mpsearch.core.plan import BitPlan
    from mpsearch.deploy.apply import apply

    shapes = trace_layers(model, **inputs)
    fp32_ms, rest = rest_ms(model, inputs)
    rows = []
    for name, bits in plans(shapes.names).items():
        packed = apply(model, BitPlan(bits=bits, quantizer=QuantizerConfig(scheme="affine")), backend="numba")
        with torch.no_grad():
            measured = time_call(lambda packed=packed: packed(**inputs), min_seconds=1.0, min_repeats=10)
        gemm = lut.model_latency_ms(shapes, bits)
        predicted = gemm + rest
        rows.append({"plan": name, "avg_bits": float(sum(shapes.n_weights[shapes.index(n)] * b for n, b in bits.items())
                                                     / shapes.n_weights.sum()),
                     "predicted_gemm_ms": round(gemm, 4), "predicted_ms": round(predicted, 4),
                     "measured_ms": round(measured, 4), "rel_error": round(predicted / measured - 1, 4)})
    errors = [abs(r["rel_error"]) for r in rows]
    return {"model": label, "fp32_forward_ms": round(fp32_ms, 4), "rest_ms": round(rest, 4), "plans": rows,
            "max_abs_rel_error": round(max(errors), 4), "within_25pct": bool(max(errors) <= 0.25)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lut", type=Path, default=None, help="table from `mpsearch hw calibrate` (default: measure)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args(argv)
    import numba

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    start = time.perf_counter()
    lut = LUTLatencyModel.from_json(args.lut) if args.lut else calibrate(threads=1)
    from mpsearch.zoo.resnet import cifar_resnet

    torch.manual_seed(0)
    results = [bench_model("resnet20", cifar_resnet(20).eval(), {"x": torch.randn(1, 3, 32, 32)}, lut)]
    if not args.skip_minilm:
        from mpsearch.zoo.minilm import load_minilm

        model, _ = load_minilm()
        ids = torch.randint(1000, 5000, (1, 128))
        results.append(bench_model("minilm", model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, lut))
    doc = {"benchmark": "hardware_lut_vs_measured", "target": "abs(predicted/measured - 1) <= 0.25",
           "measured_with": "mpsearch.deploy.apply.apply(model, plan, backend='numba'), 1 numba/torch thread",
           "lut_machine": dict(lut.machine), "results": results,
           "all_within_25pct": all(r["within_25pct"] for r in results),
           "seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(doc, indent=1)
    if args.out:
        from mpsearch.core.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
