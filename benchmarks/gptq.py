"""Sequential GPTQ of the whole of SmolLM2-135M: wall and CPU time, where the time goes, perplexity.

Writes ONE JSON document (also printed). Run from the repository root:

    python benchmarks/gptq.py --data-dir DATA --act-order --clip --out benchmarks/data/gptq.json
    python benchmarks/gptq.py --data-dir DATA --windows 16 --mode whole     # the unit-by-unit forward

Model: SmolLM2-135M-Instruct (dequantized Q4_1 GGUF); its 210 decoder linears quantized to 3 bits,
per group of 128 inputs, affine (``--act-order``, ``--clip``: act-order and MSE clipping, the
settings of the best SmolLM2 plans), by :func:`mpsearch.deploy.gptq.run_gptq` (``lm_head``, tied to
the embedding, stays in floating point). Calibration: ``--windows`` windows of 256 tokens from the
prose calibration split, 4 windows a batch. Figures: wall seconds (target < 180 s), process CPU
seconds, the part spent accumulating Hessians and in the GPTQ kernel (the rest: forwards,
capture and bookkeeping), the load average before and after (the machine is shared), and the
perplexity on ``--eval-windows`` held-out windows of the float, round-to-nearest and GPTQ models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # this folder's kernels.py would shadow the `kernels` package transformers looks for


class Timer:
    """Seconds spent inside a wrapped function (wall clock), summed over calls."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=os.environ.get("MPSEARCH_DATA_DIR"))
    p.add_argument("--windows", type=int, default=128, help="256-token calibration windows (default: %(default)s)")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows for perplexity (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=("auto", "block", "whole"), default="auto")
    p.add_argument("--act-order", action="store_true", help="GPTQ's act-order (static groups)")
    p.add_argument("--clip", action="store_true", help="MSE clipping of every group's range (round to nearest too)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir is required (a folder with python_docs_prose.txt), or set $MPSEARCH_DATA_DIR")
    torch.set_num_threads(args.threads)

    import mpsearch.deploy.gptq as deploy_gptq
    from mpsearch.core.config import QuantizerConfig, Scheme
    from mpsearch.core.io import atomic_write_text
    from mpsearch.core.plan import BitPlan
    from mpsearch.deploy.evaluate import fake_quantize_model
    from mpsearch.deploy.lm_metrics import perplexity
    from mpsearch.kernels.gptq import HessianAccumulator
    from mpsearch.sensitivity.calibration import Calibration
    from mpsearch.space.discover import discover_quietly
    from mpsearch.zoo.llm import load_smollm2
    from mpsearch.zoo.text import load_prose, text_windows

    model, tokenizer = load_smollm2()
    calib = Calibration.causal_lm(text_windows(tokenizer, load_prose(args.data_dir, "calibration"), 256, args.windows, seed=0))
    quantizer = QuantizerConfig(scheme=Scheme.AFFINE, group_size=128, method="gptq", act_order=args.act_order,
                                clip_search=args.clip)
    space = discover_quietly(model, bits=(3,), pin_first_last=None, exclude=["lm_head"], quantizer=quantizer)
    plan = BitPlan(bits={**dict.fromkeys(space.names, 3), "lm_head": 16}, quantizer=quantizer)

    kernel = Timer(deploy_gptq.gptq_quantize)
    deploy_gptq.gptq_quantize = kernel
    add = Timer(HessianAccumulator.add)
    HessianAccumulator.add = lambda self, rows: add(self, rows)
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    quantized, _ = deploy_gptq.run_gptq(model, plan, calib, mode=args.mode)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    load_after = os.getloadavg()
    deploy_gptq.gptq_quantize, HessianAccumulator.add = kernel.fn, add.fn

    doc = {
        "model": "SmolLM2-135M-Instruct (dequantized Q4_1)", "units": len(space.units), "weights": space.n_weights,
        "quantizer": f"3 bits, affine, G=128, GPTQ damp 0.01, block 128, {'' if args.act_order else 'no '}act-order, "
                     f"{'MSE clipping' if args.clip else 'no clipping'}", "mode": args.mode,
        "calibration": f"{calib.n_samples} windows of 256 tokens, 4 a batch", "threads": torch.get_num_threads(),
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "target_wall_s": 180,
        "hessian_seconds": round(add.seconds, 1), "hessian_calls": add.calls,
        "kernel_seconds": round(kernel.seconds, 1), "kernel_calls": kernel.calls,
        "forward_and_rest_seconds": round(wall - add.seconds - kernel.seconds, 1),
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    if args.eval_windows:
        held_out = text_windows(tokenizer, load_prose(args.data_dir, "evaluation"), 256, args.eval_windows, seed=0)
        rtn_quantizer = QuantizerConfig(scheme=Scheme.AFFINE, group_size=128, clip_search=args.clip)
        rtn = fake_quantize_model(model, BitPlan(bits=plan.bits, quantizer=rtn_quantizer))
        doc["perplexity"] = {"eval": f"{len(held_out)} held-out windows of 256 tokens",
                             **{k: round(perplexity(m, held_out).perplexity, 2)
                                for k, m in (("float", model), ("rtn", rtn), ("gptq", quantized))}}
    text = json.dumps(doc, indent=1)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
