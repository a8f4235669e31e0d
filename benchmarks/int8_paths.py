"""Token blocks on CPU: which PyTorch path could carry a packed low-bit weight past torch's
dynamic int8 Linear.

A packed model computes a block of tokens (MiniLM's 1x128, SmolLM2's 256-token prefill) by
decoding each weight and running a float matmul, so at fp32 it cannot beat fp32's matmul, and at
bfloat16 it cannot beat bfloat16's. This benchmark times, per Linear shape of MiniLM and
SmolLM2 (M tokens x K inputs -> N outputs), in interleaved rounds:

* ``fp32``, ``bf16``: ``F.linear`` on a float weight;
* ``int8-dynamic``: ``torch.ao.quantization.quantize_dynamic``'s Linear (the target to beat);
* ``int_mm``: ``torch._int_mm`` alone on int8 operands already in place, the int8 GEMM's floor;
* ``w8a8-composed``: per-token int8 activations, ``torch._int_mm`` and the float epilogue, from
  torch ops, on a weight already unpacked to int8 per channel: the best case of a W4A8 path that
  keeps per-channel int8 weights around (group-wise scales, as mpsearch's G=128 plans use, are
  not expressible as one int8 matrix at all);
* ``int4pack-bf16``: ``torch.ops.aten._weight_int4pack_mm_for_cpu``, PyTorch's own int4
  weight-only kernel with groups of 128 (where K is a multiple of 128).

Prints JSON and writes ``benchmarks/data/int8_paths.json``: per shape the median ms and its
ratio to ``int8-dynamic``.

    python benchmarks/int8_paths.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).parent / "data" / "int8_paths.json"
SHAPES = {  # (M, K, N): MiniLM's attention and MLP Linears at 128 tokens, SmolLM2's at 256
    "minilm qkvo": (128, 384, 384), "minilm up": (128, 384, 1536), "minilm down": (128, 1536, 384),
    "smollm2 qo": (256, 576, 576), "smollm2 gate/up": (256, 576, 1536),
    "smollm2 down": (256, 1536, 576)}


def calls(M: int, K: int, N: int) -> dict[str, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    x, lin = torch.randn(M, K), nn.Linear(K, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear},
                                                     dtype=torch.qint8)[0]
    w, b = lin.weight.detach(), lin.bias.detach()
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    d = w.abs().amax(1) / 127  # per-channel int8 weight, made once (not timed)
    w8t = torch.round(w / d[:, None]).to(torch.int8).t().contiguous()
    x8 = torch.randint(-127, 128, (M, K), dtype=torch.int8)

    def composed() -> torch.Tensor:
        s = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        y = torch._int_mm(torch.round(x / s).to(torch.int8), w8t)
        return torch.addcmul(b, y.float(), s * d)

    out = {"fp32": lambda: F.linear(x, w, b), "bf16": lambda: F.linear(xb, wb, bb),
           "int8-dynamic": lambda: dyn(x), "int_mm": lambda: torch._int_mm(x8, w8t),
           "w8a8-composed": composed}
    if K % 128 == 0:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            torch.randint(0, 16, (N, K), dtype=torch.int32), 1)
        sz = torch.rand(K // 128, N, 2, dtype=torch.bfloat16)
        out["int4pack-bf16"] = lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed,
                                                                                  128, sz)
    return out


def time_shape(fns: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, list[float]]:
    for f in fns.values():
        for _ in range(3):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(10):
                f()
            times[k].append((time.perf_counter() - t0) / 10 * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=OUT, help="where the JSON goes")
    args = ap.parse_args(argv)
    doc: dict = {"rounds": args.rounds, "torch": torch.__version__,
                 "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
                 "shapes": {}}
    with torch.inference_mode():
        for name, (M, K, N) in SHAPES.items():
            times = time_shape(calls(M, K, N), args.rounds)
            base = statistics.median(times["int8-dynamic"])
            doc["shapes"][name] = {"M,K,N": [M, K, N]} | {
                k: {"median_ms": round(statistics.median(v), 4), "min_ms": round(min(v), 4),
                    "max_ms": round(max(v), 4),
                    "ratio_to_int8_dynamic": round(statistics.median(v) / base, 3)}
                for k, v in times.items()}
            print(f"{name}: done", file=sys.stderr)
    doc["loadavg_end"] = os.getloadavg()
    text = json.dumps(doc, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
