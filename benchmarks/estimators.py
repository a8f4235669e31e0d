"""Sensitivity-estimator benchmarks: wall time of each estimator on ResNet-20, and the
group-wise Hessian diagonal on MiniLM.

Prints ONE JSON document. Run from the repository root:

    python benchmarks/estimators.py              # ResNet-20 (all estimators) + MiniLM diagonal
    python benchmarks/estimators.py --skip-minilm

ResNet-20: the embedded pretrained weights, ``discover(model)`` (first and last
unit pinned at 8 bits, per-channel affine quantizer), and the first 256 CIFAR-10
test images in 4 batches of 64 as calibration; every estimator runs with its
default settings. MiniLM: ``discover(model)`` with groups of 128 inputs, 32
sentences of the bundled corpus (the first 32 lines of the shared corpus when found,
else a fixed list) under ``embedding_distillation_loss``, in batches of 8,
``HutchinsonDiagonal`` with its default 64 probes. Targets: each ResNet-20 estimator
under 60 s, the MiniLM diagonal under 300 s, on 2 shared cores. Timings are
wall-clock on a shared machine; the thread count and load average are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

FILLER = [
    "Post-training quantization maps weights to low-bit integers.",
    "Mixed-precision search assigns more bits to sensitive layers.",
    "The Hessian trace estimates the curvature of the loss.",
    "Calibration data is a small sample of representative inputs.",
]


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()]}


def resnet20(names: list[str]) -> dict:
    from mpsearch.pricing.tables import build_cost_table
    from mpsearch.sensitivity import Calibration, get_estimator
    from mpsearch.space.discover import discover
    from mpsearch.zoo import load_cifar10_split, load_pretrained

    model = load_pretrained("resnet20")
    data = load_cifar10_split(n_calib=256)
    calib = Calibration.classification(data.x_calib, data.y_calib, batch_size=64)
    space = discover(model)
    out = {}
    for name in names:
        est = get_estimator(name, progress=False)
        start = time.perf_counter()
        sens = est.estimate(model, calib, space)
        seconds = time.perf_counter() - start
        build_cost_table(model, space, sens)
        out[name] = {"seconds": round(seconds, 2), "under_60s": seconds < 60, "settings": dict(sens.settings),
                     "extra": {k: sens.details[k] for k in ("probes", "converged") if k in sens.details}}
        print(f"resnet20 {name}: {seconds:.1f}s", file=sys.stderr)
    return out


def minilm_diag(n_sentences: int = 32) -> dict:
    from mpsearch.core.config import QuantizerConfig
    from mpsearch.pricing.tables import build_cost_table
    from mpsearch.sensitivity import HutchinsonDiagonal, minilm_calibration
    from mpsearch.space.discover import discover
    from mpsearch.zoo import load_corpus, load_minilm

    model, tokenizer = load_minilm()
    corpus = Path(__file__).resolve().parents[2] / "shared" / "data"
    sentences = load_corpus(corpus)[:n_sentences] if (corpus / "quantization_abstracts.txt").is_file() else FILLER * 8
    calib = minilm_calibration(model, tokenizer, sentences, batch_size=8)
    space = discover(model, quantizer=QuantizerConfig(scheme="affine", group_size=128))
    start = time.perf_counter()
    sens = HutchinsonDiagonal(progress=False).estimate(model, calib, space)
    seconds = time.perf_counter() - start
    table_start = time.perf_counter()
    costs = build_cost_table(model, space, sens)
    return {"seconds": round(seconds, 2), "under_300s": seconds < 300, "probes": sens.details["probes"],
            "sentences": len(sentences), "groups": costs.n_items, "cost_table_seconds": round(time.perf_counter() - table_start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="*", default=None, help="names (default: every registered estimator)")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.estimators is None:
        from mpsearch.sensitivity import ESTIMATORS

        args.estimators = ESTIMATORS.names()
    doc = {"benchmark": "estimators", "machine": machine(), "resnet20": resnet20(args.estimators)}
    if not args.skip_minilm:
        doc["minilm_hessian_diag"] = minilm_diag()
    doc["machine_after"] = machine()
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
