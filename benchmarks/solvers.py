"""Solver benchmarks: quality against the ILP on real tables, scale, Pareto fronts, NSGA-II.

Prints ONE JSON document. Run from the repository root:

    python benchmarks/solvers.py            # full run (the 10^8-item case needs ~8 GiB and minutes)
    python benchmarks/solvers.py --quick    # smoke run, small sizes
    python benchmarks/solvers.py --memory   # only the CostTable path at 10^6 and 10^7 groups: seconds,
                                            # peak memory and bytes per item (add --with-1e8 for 10^8)

Real cost tables (``benchmarks/data``) were made with

    mpsearch sensitivity --quiet --out benchmarks/data/costs_resnet20.json
    mpsearch sensitivity --quiet --model resnet56 --data-dir DATA --calib 128 --tol 0.2 \\
        --max-probes 60 --out benchmarks/data/costs_resnet56.json

(DATA: a folder holding the ResNet checkpoints and ``cifar10_test.npz``; settings in
``benchmarks/data/README.md``.)

Synthetic tables are labelled as such: item i at b bits costs s_i n_i 2^(-2b) with
lognormal s_i, and stores n_i b bits plus a 32-bit scale/zero-point per group.
Timings are wall-clock on a shared machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BITS = np.array([2.0, 3.0, 4.0, 8.0])


def machine() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()], "platform": platform.platform()}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def timed_cpu(fn, *args, **kwargs):
    """Wall and CPU seconds: on a shared machine the CPU time is the steadier figure."""
    cpu = time.process_time()
    out, wall = timed(fn, *args, **kwargs)
    return out, wall, time.process_time() - cpu


def real_tables(quick: bool) -> dict:
    from mpsearch.core.budget import Budget
    from mpsearch.core.costs import CostTable
    from mpsearch.solvers import solve

    out = {}
    for name in ("resnet20", "resnet56"):
        path = HERE / "data" / f"costs_{name}.json"
        if not path.exists():
            out[name] = {"missing": str(path)}
            continue
        costs = CostTable.load(path)
        low = costs.min_usage(Budget.avg_bits(1.0))
        budgets = [b for b in (2.5, 3.0, 3.5, 4.0, 5.0, 6.0) if b >= low] or [low * 1.1]
        rows = {s: {"excess_vs_ilp": [], "seconds": []} for s in ("ilp", "convex", "lagrange", "dp", "greedy")}
        for s in rows:  # warm-up: imports, Numba's on-disk cache, PuLP's first CBC call
            solve(costs, budgets[-1], solver=s)
        for value in budgets:
            budget = Budget.avg_bits(value)
            ref, t_ref = timed(solve, costs, budget, solver="ilp")
            for s in rows:
                r, t = (ref, t_ref) if s == "ilp" else timed(solve, costs, budget, solver=s)
                rows[s]["excess_vs_ilp"].append((r.objective - ref.objective) / ref.objective)
                rows[s]["seconds"].append(t)
        summary = {}
        for s, v in rows.items():
            summary[s] = {
                "max_excess_vs_ilp_pct": 100 * max(v["excess_vs_ilp"]),
                "mean_seconds": float(np.mean(v["seconds"])),
                "speedup_vs_ilp": float(np.mean(rows["ilp"]["seconds"]) / np.mean(v["seconds"])),
                "within_0.5pct": bool(max(v["excess_vs_ilp"]) <= 0.005),
            }
        out[name] = {"items": costs.n_items, "choices": list(costs.bits), "budgets_avg_bits": budgets, "solvers": summary}
    return out


def groupwise_case(quick: bool) -> dict:
    """A group-wise table (GroupIndex items): 16 units x 128 groups of 64 weights, synthetic scores
    (a lognormal per unit times a lognormal per group, 4x spread), solved against the ILP."""
    from mpsearch.core.budget import Budget
    from mpsearch.core.costs import CostTable, GroupIndex
    from mpsearch.solvers import solve

    rng = np.random.default_rng(3)
    units, per_unit = (8, 32) if quick else (16, 128)
    n = units * per_unit
    score = np.repeat(rng.lognormal(0, 1.5, units), per_unit) * rng.lognormal(0, 0.7, n)
    costs = CostTable(
        items=GroupIndex([f"blocks.{u}.mlp" for u in range(units)], [per_unit] * units), bits=(2, 3, 4, 8),
        cost=score[:, None] * 64 * 2.0 ** (-2 * BITS) * rng.uniform(0.9, 1.1, (n, 4)),
        storage_bits=np.tile(64 * BITS + 32, (n, 1)), n_weights=np.full(n, 64), meta={"synthetic": True},
    )
    out = {"items": n, "table": "group-wise, synthetic scores", "budgets_avg_bits": [3.0, 3.5, 4.5], "solvers": {}}
    for s in ("ilp", "convex", "lagrange", "greedy"):
        solve(costs, 4.5, solver=s)  # warm-up
    for value in out["budgets_avg_bits"]:
        ref, t_ref = timed(solve, costs, Budget.avg_bits(value), solver="ilp")
        for s in ("ilp", "convex", "lagrange", "greedy"):
            r, t = (ref, t_ref) if s == "ilp" else timed(solve, costs, Budget.avg_bits(value), solver=s)
            row = out["solvers"].setdefault(s, {"max_excess_vs_ilp_pct": 0.0, "seconds": [], "max_certified_gap_pct": None})
            row["max_excess_vs_ilp_pct"] = max(row["max_excess_vs_ilp_pct"], 100 * (r.objective - ref.objective) / ref.objective)
            row["seconds"].append(t)
            if r.gap is not None and s != "ilp":
                row["max_certified_gap_pct"] = max(row["max_certified_gap_pct"] or 0.0, 100 * r.gap)
    return out


def synthetic(n: int, seed: int = 0, group: int = 64) -> tuple[np.ndarray, np.ndarray, float]:
    """float32 cost and storage arrays of n groups (n_i = group weights), and the 3.5-bit limit."""
    rng = np.random.default_rng(seed)
    cost = np.empty((n, 4), np.float32)
    storage = np.empty((n, 4), np.float32)
    row = (group * BITS + 32).astype(np.float32)
    step = 1 << 22
    for a in range(0, n, step):
        s = rng.lognormal(0.0, 2.0, min(step, n - a))
        cost[a:a + len(s)] = (s[:, None] * group * 2.0 ** (-2 * BITS)).astype(np.float32)
        storage[a:a + len(s)] = row
    return cost, storage, float((3.5 * group + 32) * n)


def scale_case(n: int) -> dict:
    """Array-level Lagrangian on n synthetic groups; run in a fresh process for an honest peak RSS."""
    import resource

    from mpsearch.solvers.lagrange import lagrange_solve

    lagrange_solve(*synthetic(1000)[:2], synthetic(1000)[2])  # JIT warm-up (cached after the first run)
    (cost, storage, limit), t_gen = timed(synthetic, n)
    sol, t, cpu = timed_cpu(lagrange_solve, cost, storage, limit)
    return {"items": n, "choices": 4, "dtype": "float32", "budget": "3.5 avg bits (incl. 32-bit overhead/group)",
            "generate_seconds": t_gen, "solve_seconds": t, "solve_cpu_seconds": cpu, "certified_gap_pct": 100 * sol.gap,
            "within_budget": bool(sol.used <= limit),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def costtable_case(n: int) -> dict:
    """n synthetic groups through CostTable + solve(..., solver='lagrange'), validation included; run
    in a fresh process. Memory: the peak RSS, and the peak above the process after imports and the
    JIT warm-up (the baseline), per item: the figure that must stay flat as n grows."""
    from mpsearch.core.budget import Budget
    from mpsearch.core.costs import CostTable, GroupIndex
    from mpsearch.solvers import solve

    warm = synthetic(1000)
    units = 100
    warm_table = CostTable(items=GroupIndex([f"unit{u}" for u in range(units)], [10] * units), bits=(2, 3, 4, 8),
                           cost=warm[0], storage_bits=warm[1], n_weights=np.full(1000, 64))
    solve(warm_table, Budget.avg_bits(4.0), solver="lagrange")  # JIT warm-up (cached on disk after the first run)
    baseline = rss_bytes()
    (cost, storage, _), t_gen = timed(synthetic, n, seed=1)
    table, t_build = timed(
        CostTable, items=GroupIndex([f"unit{u}" for u in range(units)], [n // units] * units), bits=(2, 3, 4, 8),
        cost=cost, storage_bits=storage, n_weights=np.full(n, 64),
    )
    inputs = cost.nbytes + storage.nbytes + table.n_weights.nbytes
    r, t, cpu = timed_cpu(solve, table, Budget.avg_bits(3.5 + 32 / 64), solver="lagrange")
    peak = rss_bytes()
    return {"items": n, "dtype": "float32", "solver": "lagrange", "peak_rss_gib": peak / 2**30,
            "peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
            "peak_above_baseline_bytes_per_item": (peak - baseline) / n,
            "input_arrays_bytes_per_item": inputs / n,
            "generate_seconds": t_gen, "build_table_seconds": t_build, "solve_seconds": t, "solve_cpu_seconds": cpu,
            "solver_seconds_reported": r.seconds, "certified_gap_pct": 100 * r.gap, "status": r.status.value,
            "within_budget": bool(r.usage["avg_bits"] <= 4.0 * (1 + 1e-9))}


def linearity(cases: list[dict]) -> dict:
    """Peak memory above the baseline, per item, at each size; flat means linear in the item count."""
    ok = [c for c in cases if "peak_rss_bytes" in c]
    per_item = {f"{c['items']:.0e}": round(c["peak_above_baseline_bytes_per_item"], 2) for c in ok}
    out: dict = {"peak_bytes_per_item_above_baseline": per_item}
    for a, b in zip(ok, ok[1:]):  # the slope between two sizes: the memory each extra item costs
        out[f"marginal_bytes_per_item_{a['items']:.0e}_to_{b['items']:.0e}"] = round(
            (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (b["items"] - a["items"]), 2)
    values = list(per_item.values())
    out["max_over_min_per_item"] = round(max(values) / min(values), 3) if values else None
    return out


def in_subprocess(fn: str, n: int) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import solvers; print(json.dumps(solvers.{fn}({n})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"items": n, "error": done.stderr[-1500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def layer_table(n: int, seed: int):
    from mpsearch.core.costs import CostTable

    rng = np.random.default_rng(seed)
    n_weights = rng.integers(2_000, 600_000, n)
    cost = rng.lognormal(0, 2, (n, 1)) * n_weights[:, None] * 2.0 ** (-2 * BITS) * rng.uniform(0.8, 1.25, (n, 4))
    storage = n_weights[:, None] * BITS + 32 * rng.integers(16, 512, (n, 1))
    return CostTable(items=tuple(f"layer{i}" for i in range(n)), bits=(2, 3, 4, 8), cost=cost,
                     storage_bits=storage, n_weights=n_weights, meta={"synthetic": True})


def pareto_case(quick: bool) -> dict:
    from mpsearch.core.budget import Budget
    from mpsearch.solvers.pareto import pareto

    costs = layer_table(200, 0)
    low = costs.min_usage(Budget.avg_bits(1.0))
    values = list(np.linspace(low, 8.0, 50))
    out = {"units": 200, "points": 50, "table": "synthetic (lognormal s_i)"}
    for solver in ("dp", "lagrange"):
        front, t = timed(pareto, costs, values, solver=solver)
        out[solver] = {"seconds": t, "feasible": sum(r.ok for r in front.results),
                       "max_gap_pct": 100 * max((r.gap or 0.0) for r in front.results if r.ok),
                       "grid_exact": bool(front.results[-1].info.get("grid_exact")) if solver == "dp" else None}
    return out


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """2-D hypervolume (both minimized) dominated by ``points`` up to ``ref``."""
    pts = points[(points < ref).all(axis=1)]
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    volume, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            volume += (ref[0] - x) * (best_y - y)
            best_y = y
    return volume


def nsga2_case(quick: bool) -> dict:
    from mpsearch.core.budget import Budget
    from mpsearch.solvers import DPSolver, NSGA2Solver

    costs = layer_table(20, 1)
    exact = DPSolver().front(costs, kind="avg_bits")
    n_trials = 300 if quick else 2000
    found, t = timed(NSGA2Solver(n_trials=n_trials, population_size=50, seed=0).front, costs, kind="avg_bits")

    def pts(front):
        return np.array([[r.costs.usage(r.choice, Budget.avg_bits(1.0)), r.objective] for r in front.results if r.ok])

    e, f = pts(exact), pts(found)
    ref = np.array([costs.usage(costs.uniform_choice(8), Budget.avg_bits(1.0)), costs.objective(costs.uniform_choice(2))]) * 1.0001
    ratio = hypervolume(f, ref) / hypervolume(e, ref)
    from mpsearch.solvers.base import reduce

    seeds = NSGA2Solver(population_size=50)._front_starts(reduce(costs, (Budget.avg_bits(1.0),)))
    s = np.array([[costs.usage(c, Budget.avg_bits(1.0)), costs.objective(c)] for c in seeds])
    return {"units": 20, "evaluations": n_trials, "seconds": t, "hypervolume_ratio": ratio,
            "seeds_only_hypervolume_ratio": hypervolume(s, ref) / hypervolume(e, ref),
            "seeding": "first generation = 4 uniform plans + 46 plans along the greedy descent (counted in evaluations)",
            "table": "synthetic layer-wise (lognormal s_i)",
            "reference_point": "(avg bits of all-8-bit, cost of all-2-bit)", "exact_front": "DP (exact grid)",
            "exact_front_points": len(e), "met_95pct": bool(ratio >= 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--memory", action="store_true",
                        help="only the CostTable path at 10^6 and 10^7 groups, with peak memory per item")
    parser.add_argument("--with-1e8", action="store_true", help="with --memory: also 10^8 groups (~8 GiB)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    doc = {"benchmark": "mpsearch.solvers", "quick": args.quick, "machine_at_start": machine()}
    if args.memory:
        sizes = (1_000_000, 10_000_000) + ((100_000_000,) if args.with_1e8 else ())
        doc["scale_costtable_path"] = [in_subprocess("costtable_case", n) for n in sizes]
        doc["memory_linearity"] = linearity(doc["scale_costtable_path"])
        doc["machine_at_end"] = machine()
        print(json.dumps(doc, indent=1, default=float))
        return
    sizes = (100_000,) if args.quick else (1_000_000, 100_000_000)
    doc["scale_array_level"] = [in_subprocess("scale_case", n) for n in sizes]
    big = (100_000,) if args.quick else (1_000_000, 10_000_000, 100_000_000)
    doc["scale_costtable_path"] = [in_subprocess("costtable_case", n) for n in big]
    doc["memory_linearity"] = linearity(doc["scale_costtable_path"])
    doc["pareto_front_200_units"] = pareto_case(args.quick)
    doc["nsga2_hypervolume_20_units"] = nsga2_case(args.quick)
    doc["groupwise_table"] = groupwise_case(args.quick)
    doc["real_tables"] = real_tables(args.quick)  # last: the ResNet-56 table may still be computing
    doc["targets"] = {
        "closed_form_and_lagrange_within_0.5pct_of_ilp": all(
            t["solvers"][s]["within_0.5pct"] for t in doc["real_tables"].values() if "solvers" in t
            for s in ("convex", "lagrange")
        ),
        "real_tables_measured": sorted(k for k, t in doc["real_tables"].items() if "solvers" in t),
        "1e6_items_under_2s_gap_under_0.1pct": any(
            c.get("items") == 1_000_000 and c.get("solve_seconds", 1e9) < 2 and c.get("certified_gap_pct", 1) < 0.1
            for c in doc["scale_array_level"]
        ),
        "1e8_items_under_2min_wall": any(
            c.get("items") == 100_000_000 and c.get("solve_seconds", 1e9) < 120 for c in doc["scale_array_level"]
        ),
        "50_point_front_200_units_under_5s": min(doc["pareto_front_200_units"][s]["seconds"] for s in ("dp", "lagrange")) < 5,
        "nsga2_95pct_hypervolume_in_2000_evals": doc["nsga2_hypervolume_20_units"]["met_95pct"] and not args.quick,
    }
    doc["machine_at_end"] = machine()
    doc["notes"] = [
        "timings are wall clock on a 2-core machine shared with other jobs; see load_average",
        "scale cases are synthetic: s_i lognormal(0, 2), 64-weight groups, costs s_i*64*2^(-2b), float32",
        "the first Numba call compiles (cached on disk afterwards); scale cases warm up first",
    ]
    print(json.dumps(doc, indent=1, default=float))


if __name__ == "__main__":
    main()
