"""Batch-1 GEMV of this checkout against a git revision of it, interleaved, from DRAM.

Prints one JSON document. Kernel times on this VM drift by 20-30 % over minutes, more than most
kernel changes are worth, so two runs of ``benchmarks/kernels.py`` cannot compare two versions.
This benchmark loads both versions into one process (the revision's ``mpsearch`` is extracted
with ``git archive`` into a temporary directory and imported as ``mpsearch_base``) and times
them in the same rounds: in each round every (version, width, shape) runs once, in a shuffled
order, each call after the 96 MiB read on Numba's pool of ``kernels.py`` (cold) and once more
at once (hot). It first checks that both versions give the same y, bit for bit.

    python benchmarks/kernels_ab.py --base HEAD~1               # 2-, 3- and 4-bit, 4096 x 4096
    python benchmarks/kernels_ab.py --base 1b641a9 --bits 2 --shapes 4096x4096,11008x4096
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "30000")  # as in kernels.py (see there)

import numba
import numpy as np
import torch
from kernels import LLC_BYTES, G, flushers, make_weight  # benchmarks/kernels.py

from mpsearch.kernels import numba_cpu


def load_base(rev: str, into: Path):
    """``mpsearch`` at git revision ``rev`` as the package ``mpsearch_base`` (its own imports
    renamed), importable from ``into``."""
    root = Path(__file__).resolve().parents[1]
    try:
        tar = subprocess.run(["git", "archive", rev, "mpsearch"], cwd=root, check=True,
                             capture_output=True).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(f"kernels_ab: cannot read mpsearch at revision {rev!r}: "
                 f"{exc.stderr.decode().strip()}. Pass a commit, tag or branch of this repo.")
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    (into / "mpsearch").rename(into / "mpsearch_base")
    for py in (into / "mpsearch_base").rglob("*.py"):
        text = py.read_text()
        py.write_text(re.sub(r"\bmpsearch(?=[.\s])", "mpsearch_base", text))
    sys.path.insert(0, str(into))
    return importlib.import_module("mpsearch_base.kernels.numba_cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1", help="git revision to compare against")
    ap.add_argument("--bits", default="2,3,4", help="widths, comma-separated")
    ap.add_argument("--shapes", default="4096x4096", help="out x K shapes, comma-separated")
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds")
    args = ap.parse_args()
    bits_list = [int(b) for b in args.bits.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores)
    numba.set_num_threads(cores)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        flush = flushers(3 * LLC_BYTES)["numba"]  # the flush kernels.py uses for our kernels
        rng = np.random.default_rng(0)
        entries, checks = [], []
        for out, K in shapes:
            x = rng.standard_normal(K).astype(np.float32)
            for bits in bits_list:
                w = make_weight(out, K, bits, rng)
                p, s, z = w["packed"], w["scale"], w["zero"]
                pair = {"base": base.GemvWeight(p, s, z, bits, K, G),
                        "this": numba_cpu.GemvWeight(p, s, z, bits, K, G)}
                checks.append({"shape": [out, K], "bits": bits,
                               "kernel": {k: w.kernel for k, w in pair.items()},
                               "bit_identical": bool(np.array_equal(pair["base"](x),
                                                                    pair["this"](x)))})
                for side, w in pair.items():
                    entries.append(((out, K, bits, side), lambda w=w, x=x: w(x)))
        for _, fn in entries:
            for _ in range(3):
                fn()
        cold = {key: [] for key, _ in entries}
        hot = {key: [] for key, _ in entries}
        for r in range(args.rounds):
            order = list(entries)
            random.Random(r).shuffle(order)
            for key, fn in order:
                flush()
                t0 = time.perf_counter()
                fn()
                cold[key].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                fn()
                hot[key].append(time.perf_counter() - t0)

    def ms(v: list[float]) -> float:
        return round(statistics.median(v) * 1e3, 4)

    results = []
    for out, K in shapes:
        for bits in bits_list:
            b, t = (out, K, bits, "base"), (out, K, bits, "this")
            results.append({"shape": [out, K], "bits": bits, "base_ms": ms(cold[b]),
                            "this_ms": ms(cold[t]),
                            "ratio": round(ms(cold[t]) / ms(cold[b]), 3),
                            "base_ms_hot": ms(hot[b]), "this_ms_hot": ms(hot[t])})
    print(json.dumps({"format": "mpsearch.benchmark.kernels_ab", "version": 1,
                      "base": args.base, "rounds": args.rounds, "G": G, "cores": cores,
                      "statistic": "median; cold after a 96 MiB read on Numba's pool, hot "
                                   "the same call again at once",
                      "checks": checks, "results": results}, indent=1))


if __name__ == "__main__":
    main()
