"""Packed low-bit matmul kernels against PyTorch baselines and the memory-bandwidth floor.

Prints one JSON document. In one run it measures, for each shape and width (G = 128):
our Numba GEMV/GEMM, our PyTorch packed path, PyTorch fp32 matmul, PyTorch's CPU int4 kernel
(4 bits) and int8 kernel (8 bits); the memory read bandwidth; and for every GEMV the floor
``(codes + scales + zeros bytes) / bandwidth``. Times are the median of N rounds after warm-up;
in each round every method of a shape runs once, and so does a read of a 1 GiB buffer, whose
median gives the bandwidth for that shape's floors: a slow (or fast) spell of the machine hits
every method and the floor alike. (This VM's read bandwidth is bimodal, about 48 or 80 GB/s,
and kernel times vary by up to 1.8x between runs.) Batch-1 times are "cold": a
buffer 3x the size of the last-level cache is read before each call, so weights come from DRAM
as in real inference (the floor assumes that); "hot" times (the same call again at once,
weights in cache) are given too. The flush runs on the measured method's own thread pool
(Numba's for our kernels, torch's for torch's), as the previous layer of a model would, after
a 5 ms pause that lets the other pool's threads stop spinning: the pool is awake and no other
pool spins on its cores. Threads = cores for torch and numba;
OpenMP threads spin ``GOMP_SPINCOUNT`` times after a call, then sleep (see below). The
settings and the load average are recorded in the output.

    python benchmarks/kernels.py            # full: 4096x4096 (B=1, 32), 11008x4096 (B=1)
    python benchmarks/kernels.py --quick    # smaller shapes, fewer repeats (smoke run)
    python benchmarks/kernels.py --order by-pool   # Numba methods first in each round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

# After a parallel call, OpenMP threads (torch's and numba's pools) spin this many times (about
# 0.5 ms here) before they sleep. Two pools that spin without bound starve each other on shared
# cores (OMP_WAIT_POLICY=ACTIVE: 8 ms stalls seen); pools that sleep at once
# (OMP_WAIT_POLICY=PASSIVE) pay a thread wake-up on every call: an empty Numba parallel region
# takes 46 us instead of 1.3 us on this 2-vCPU VM, a fifth of a 4096x4096 2-bit GEMV. Either
# can be exported to measure it. Read when torch and numba load OpenMP, so set before imports.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import numba
import numpy as np
import torch

from mpsearch.kernels import numba_cpu
from mpsearch.kernels.packing import pack
from mpsearch.kernels.torch_packed import packed_matmul

G = 128
BITS = (2, 3, 4, 8)
# Pause before each flush: after a call, a pool's threads kept spinning 1-2 ms of CPU here
# (longer than the 0.5 ms GOMP_SPINCOUNT suggests), so without it the first method of one pool
# after the other's shared its cores with the spinning threads through its flush and its timed
# call (our 2-bit GEMV after torch's fp32 matmul: 0.175-0.186 ms instead of 0.15).
QUIET_S = 0.005
LLC_BYTES = 32 << 20  # last-level cache of the benchmark machine (lscpu: L3 32 MiB)


def flushers(n_bytes: int) -> dict[str, Callable[[], object]]:
    """Cache evictions (``n_bytes`` read) on each pool, as the previous layer of a model would.

    "numba" (before our kernels): a GEMV with our 8-bit kernel over an ``n_bytes`` weight, on
    Numba's pool; "torch" (before torch's methods): a torch sum over ``n_bytes``, on torch's.
    """
    K = 4096
    rows = n_bytes // K
    w = (pack(np.full((rows, K), 7, np.uint8), 8), np.ones((rows, K // G), np.float16),
         np.zeros((rows, K // G), np.uint8))
    x = np.ones(K, np.float32)
    buf = torch.ones(n_bytes // 4)
    return {"numba": lambda: numba_cpu.gemv(*w, x, 8, K, G), "torch": buf.sum}


def _ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 4)


def timed(fn: Callable[[], object], repeats: int) -> dict:
    """Median and best of ``repeats`` back-to-back calls after 3 warm-up calls (no flush)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"ms": _ms(times), "ms_min": round(min(times) * 1e3, 4)}


ORDERS = ("fixed", "shuffled", "by-pool")


def round_order(pools: list[str], order: str, r: int) -> list[int]:
    """The order of the entries in round ``r``: "fixed" as listed (every Numba GEMV then follows
    a torch method); "shuffled" a permutation seeded by ``r``; "by-pool" the Numba entries
    first, then the others, each in listed order."""
    idx = list(range(len(pools)))
    if order == "shuffled":
        random.Random(r).shuffle(idx)
    elif order == "by-pool":
        idx.sort(key=lambda i: pools[i] != "numba")
    elif order != "fixed":
        raise ValueError(f"`order` must be one of {ORDERS}, but got {order!r}.")
    return idx


def interleaved(entries: list[tuple[Callable, Callable | None]], repeats: int,
                pools: list[str], order: str = "fixed") -> list[dict]:
    """Time every (fn, flush) in rounds, one call of each per round, so that a slow spell of
    the machine hits every method alike instead of whichever ran then.

    With a flush: each round flushes, times the call ("ms", cold) and times it again at once
    ("ms_hot", weights left in cache). Without: one timed call per round. ``pools`` (the pool
    of each entry) and ``order`` set the order within a round (:func:`round_order`).
    """
    for fn, _ in entries:
        for _ in range(3):
            fn()
    cold: list[list[float]] = [[] for _ in entries]
    hot: list[list[float]] = [[] for _ in entries]
    for r in range(repeats):
        for i in round_order(pools, order, r):
            fn, flush = entries[i]
            if flush is not None:
                time.sleep(QUIET_S)  # the previous method's pool stops spinning, then ours wakes
                flush()
            t0 = time.perf_counter()
            fn()
            cold[i].append(time.perf_counter() - t0)
            if flush is not None:
                t0 = time.perf_counter()
                fn()
                hot[i].append(time.perf_counter() - t0)
    return [{"ms": _ms(c), "ms_min": round(min(c) * 1e3, 4)} | ({"ms_hot": _ms(h)} if h else {})
            for c, h in zip(cold, hot)]


def bandwidth(n_bytes: int, repeats: int) -> dict:
    """Read bandwidth of a torch sum over a buffer far larger than the caches (all threads),
    measured once at the start (for reference; floors use the per-shape in-round figure)."""
    buf = torch.ones(n_bytes // 4)
    t = timed(buf.sum, repeats)
    return {"buffer_mib": n_bytes >> 20, "method": "torch.sum over float32 buffer",
            "gbps_median": round(n_bytes / t["ms"] / 1e6, 2),
            "gbps_best": round(n_bytes / t["ms_min"] / 1e6, 2)}


def make_weight(out: int, K: int, bits: int, rng: np.random.Generator) -> dict:
    codes = rng.integers(0, 1 << bits, (out, K), dtype=np.uint8)
    scale = (rng.random((out, K // G)) * 0.02 + 0.001).astype(np.float16)
    zero = rng.integers(0, 1 << bits, (out, K // G), dtype=np.uint8)
    return {"codes": codes, "packed": pack(codes, bits), "scale": scale, "zero": zero}


def reference(w: dict, x: np.ndarray, rows: int) -> np.ndarray:
    g = np.arange(w["codes"].shape[1]) // G
    dq = (w["codes"][:rows].astype(np.float64) - w["zero"][:rows, g]) \
        * w["scale"][:rows, g].astype(np.float64)
    return x.astype(np.float64) @ dq.T


def methods(w: dict, bits: int, x: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """Callables returning (B, out) float results, named for the JSON."""
    K = w["codes"].shape[1]
    p, s, z = w["packed"], w["scale"], w["zero"]
    pt, st, zt, xt = (torch.from_numpy(a) for a in (p, s, z, x))
    if x.shape[0] == 1:
        # GemvWeight: prepared once (as torch's int4 weight is), the table-lookup kernel at
        # 2 bits on AVX-512; "numba_gemv_rows" is the row-layout kernel every width can use.
        prepared = numba_cpu.GemvWeight(p, s, z, bits, K, G)
        ours = {"numba_gemv": lambda: prepared(x[0])[None]}
        if prepared.kernel != "rows":
            ours["numba_gemv_rows"] = lambda: numba_cpu.gemv(p, s, z, x[0], bits, K, G)[None]
    else:
        ours = {"numba_gemm": lambda: numba_cpu.gemm(p, s, z, x, bits, K, G)}
    ours["torch_packed"] = lambda: packed_matmul(pt, st, zt, xt, bits, K, G).numpy()
    return ours


def baselines(w: dict | None, bits: int, x: np.ndarray, out: int) -> dict[str, Callable]:
    """PyTorch's own kernels: fp32 matmul (once per shape), int4 at 4 bits, int8 at 8 bits."""
    xt = torch.from_numpy(x)
    K = x.shape[1]
    if w is None:
        wf = torch.randn(out, K)
        return {"torch_fp32_matmul": lambda: (xt @ wf.T).numpy()}
    if bits == 4:
        codes = torch.from_numpy(w["codes"]).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
        s = torch.from_numpy(w["scale"]).float()
        # The kernel dequantizes (q - 8) * scale + zero_float; ours is (q - zero) * scale.
        sz = torch.stack([s, (8 - torch.from_numpy(w["zero"]).float()) * s], -1)
        sz = sz.transpose(0, 1).contiguous()  # (K / G, out, 2)
        run = torch.ops.aten._weight_int4pack_mm_for_cpu
        xb = xt.to(torch.bfloat16)
        return {"torch_int4_fp32act": lambda: run(xt, packed, G, sz).numpy(),
                "torch_int4_bf16act": lambda: run(xb, packed, G, sz.to(torch.bfloat16)).float()
                .numpy()}
    if bits == 8:  # per-channel int8 (no groups): same weight bytes, a different quantizer
        q = torch.from_numpy(w["codes"].astype(np.int16) - 128).to(torch.int8)
        s = torch.from_numpy(w["scale"][:, 0].astype(np.float32))
        return {"torch_int8_perchannel": lambda: torch.ops.aten._weight_int8pack_mm(xt, q, s)
                .numpy()}
    return {}


def run_case(shape: tuple[int, int], batch: int, repeats: int, flush: dict[str, Callable],
             bw_buf: torch.Tensor, rng: np.random.Generator, order: str = "fixed"
             ) -> list[dict]:
    """Every method on one shape and batch: checked against the reference, then timed
    interleaved (:func:`interleaved`), batch 1 cold (flushed on the method's own pool) and hot,
    with the memory read bandwidth (a sum over ``bw_buf``) timed in the same rounds."""
    out, K = shape
    x = rng.standard_normal((batch, K)).astype(np.float32)
    rows: list[dict] = []
    entries: list[tuple[dict, Callable, int | None]] = []

    def record(name: str, bits: int | None, fn: Callable, w: dict | None, floor_bytes: int | None):
        row = {"out": out, "K": K, "batch": batch, "bits": bits, "G": G, "method": name}
        rows.append(row)
        try:
            got = fn()
            if w is not None and name != "torch_int8_perchannel":
                ref = reference(w, x, 64)
                row["max_rel_err"] = float(np.abs(got[:, :64] - ref).max() / np.abs(ref).max())
            entries.append((row, fn, floor_bytes))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"

    record("torch_fp32_matmul", None, baselines(None, 0, x, out)["torch_fp32_matmul"], None,
           out * K * 4 if batch == 1 else None)
    for bits in BITS:
        w = make_weight(out, K, bits, rng)
        nbytes = w["packed"].nbytes + w["scale"].nbytes + w["zero"].nbytes
        floor = nbytes if batch == 1 else None
        for name, fn in methods(w, bits, x).items():
            record(name, bits, fn, w, floor)
        for name, fn in baselines(w, bits, x, out).items():
            record(name, bits, fn, w, floor)
    pools = ["numba" if row["method"].startswith("numba_") else "torch" for row, _, _ in entries]
    calls = [(fn, flush[p] if batch == 1 else None) for (_, fn, _), p in zip(entries, pools)]
    if batch == 1:  # the bandwidth too, in the same rounds: the floors use its median
        calls.append((bw_buf.sum, None))
        pools.append("torch")
    timings = interleaved(calls, repeats, pools, order)
    if batch == 1:
        bw_ms = timings.pop()["ms"]
        gbps = round(bw_buf.numel() * 4 / bw_ms / 1e6, 2)
        rows.append({"out": out, "K": K, "batch": batch, "bits": None, "G": G,
                     "method": "memory_read_bandwidth", "ms": bw_ms, "gbps": gbps,
                     "note": f"torch.sum over {bw_buf.numel() * 4 >> 20} MiB, timed in the "
                             "same rounds; the floors of this shape use it"})
    for (row, _, floor_bytes), t in zip(entries, timings):
        row.update(t)
        if floor_bytes is not None:
            row["floor_ms"] = round(floor_bytes / (gbps * 1e6), 4)
            row["ratio_to_floor"] = round(row["ms"] / row["floor_ms"], 2)
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's targets, each with the numbers it was judged on."""
    def ms(method: str, bits: int | None, batch: int, shape: tuple[int, int]) -> float | None:
        for r in rows:
            if (r["method"], r["bits"], r["batch"], (r["out"], r["K"])) == (method, bits, batch,
                                                                            shape):
                return r.get("ms")
        return None

    shapes = sorted({(r["out"], r["K"]) for r in rows if r["batch"] == 1})
    int4, low, floors, gemm = [], [], [], []
    for sh in shapes:
        ours4 = ms("numba_gemv", 4, 1, sh)
        theirs = [v for v in (ms("torch_int4_fp32act", 4, 1, sh), ms("torch_int4_bf16act", 4, 1,
                                                                      sh)) if v is not None]
        int4.append({"shape": sh, "ours_ms": ours4, "torch_int4_fastest_ms": min(theirs, default=None),
                     "met": bool(theirs) and ours4 is not None and ours4 <= min(theirs)})
        for b in (2, 3):
            v = ms("numba_gemv", b, 1, sh)
            low.append({"shape": sh, "bits": b, "ms": v, "ms_4bit": ours4,
                        "met": v is not None and ours4 is not None and v < ours4})
    for r in rows:
        if r["method"] == "numba_gemv" and "ratio_to_floor" in r:
            floors.append({"shape": (r["out"], r["K"]), "bits": r["bits"],
                           "ratio": r["ratio_to_floor"], "met": r["ratio_to_floor"] <= 2.5})
        if r["method"] == "numba_gemm" and r["batch"] == 32 and "ms" in r:
            fp32 = ms("torch_fp32_matmul", None, 32, (r["out"], r["K"]))
            gemm.append({"shape": (r["out"], r["K"]), "bits": r["bits"], "ms": r["ms"],
                         "fp32_ms": fp32, "ratio": round(r["ms"] / fp32, 2) if fp32 else None,
                         "met": bool(fp32) and r["ms"] <= 1.5 * fp32})
    out = {"int4_gemv_no_slower_than_torch_int4": int4,
           "gemv_2_and_3_bit_faster_than_4_bit": low,
           "every_gemv_within_2.5x_of_bandwidth_floor": floors,
           "batch32_gemm_within_1.5x_of_fp32_matmul": gemm}
    return {k: {"met": all(c["met"] for c in v) if v else None, "cases": v}
            for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    ap.add_argument("--order", choices=ORDERS, default="fixed",
                    help="order of the methods within a round (default: fixed, the order of "
                         "the recorded runs; see round_order)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores)
    numba.set_num_threads(cores)
    repeats = args.repeats or (5 if args.quick else 20)
    cases = [((1024, 1024), 1), ((1024, 1024), 8)] if args.quick else \
        [((4096, 4096), 1), ((4096, 4096), 32), ((11008, 4096), 1)]
    rng = np.random.default_rng(0)
    bw_bytes = (256 if args.quick else 1024) << 20
    bw = bandwidth(bw_bytes, max(5, repeats // 2))
    flush = flushers(3 * LLC_BYTES)
    bw_buf = torch.rand(bw_bytes // 4)  # random, so no layer below can share its pages
    rows = [r for shape, batch in cases
            for r in run_case(shape, batch, repeats, flush, bw_buf, rng, args.order)]
    doc = {"format": "mpsearch.benchmark.kernels", "version": 1,
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": cores,
                       "python": sys.version.split()[0], "torch": torch.__version__,
                       "numba": numba.__version__, "numba_threading": numba.threading_layer(),
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                       "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "unset"),
                       "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()]},
           "settings": {"quick": args.quick, "repeats": repeats, "warmup": 3, "G": G,
                        "pause_before_flush_s": QUIET_S, "order": args.order,
                        "statistic": "median", "cold": "batch-1 'ms' after reading a "
                        f"{3 * LLC_BYTES >> 20} MiB buffer on the method's own thread pool; "
                        "'ms_hot' without",
                        "shape_note": "(out, K): 11008x4096 is out=11008, K=4096 (an MLP "
                        "up-projection); fp32 floor uses 4 bytes per weight",
                        "int8_note": "torch int8 kernel is per-channel (no groups)"},
           "bandwidth": bw, "results": rows, "targets": targets(rows)}
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
