"""The spread of many ``benchmarks/kernels.py`` runs, as one JSON document.

A single kernel run on a shared VM says little: times drift by 20-30 % over minutes and the
memory bandwidth is bimodal. This script reads the JSON of many runs and prints, per group of
runs: for every (shape, batch, bits, method) the median, smallest and largest time over the
runs, overall and per bandwidth mode; the same for the ratio to the bandwidth floor; the
bandwidth of every shape-round; and how often each target was met, with the failing cases.

    python benchmarks/kernels_spread.py --group all runs/run_*.json \\
        --group by-pool order/by-pool_*.json > benchmarks/data/kernels_spread.json

A shape-round is in the fast mode when its measured read bandwidth is at least
``--fast-gbps`` (65 by default: this VM measured 39-60 or 72-79 GB/s, nothing between).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def stats(values: list[float]) -> dict:
    """Count, median, smallest and largest of the values (only the count when there are none)."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def mode_of(run: dict, shape: tuple[int, int], fast_gbps: float) -> str:
    """'fast' or 'slow': the bandwidth mode of one shape's rounds in one run."""
    for row in run["results"]:
        if row["method"] == "memory_read_bandwidth" and (row["out"], row["K"]) == shape:
            return "fast" if row["gbps"] >= fast_gbps else "slow"
    raise ValueError(f"a kernel run must record the bandwidth of every shape, but {shape} has none")


def summarize(runs: dict[str, dict], fast_gbps: float) -> dict:
    """Spread of times, floor ratios, bandwidths and targets over the named runs."""
    cells: dict[tuple, dict[str, list]] = {}
    bandwidth: dict[str, list] = {}
    for name, run in runs.items():
        for row in run["results"]:
            shape = (row["out"], row["K"])
            label = f"{shape[0]}x{shape[1]}"
            if row["method"] == "memory_read_bandwidth":
                mode = "fast" if row["gbps"] >= fast_gbps else "slow"
                bandwidth.setdefault(label, []).append({"run": name, "gbps": row["gbps"], "mode": mode})
                continue
            mode = mode_of(run, shape, fast_gbps)
            cell = cells.setdefault((label, row["batch"], row["bits"], row["method"]), {})
            for key in ("ms", "ms_hot", "ratio_to_floor"):
                if row.get(key) is not None:
                    cell.setdefault(key, []).append(row[key])
                    cell.setdefault(f"{key}_{mode}", []).append(row[key])
    rows = []
    for (label, batch, bits, method), cell in sorted(cells.items(), key=lambda kv: str(kv[0])):
        entry = {"shape": label, "batch": batch, "bits": bits, "method": method}
        entry.update({key: stats(values) for key, values in sorted(cell.items())})
        rows.append(entry)
    return {"runs": sorted(runs), "fast_gbps": fast_gbps, "bandwidth": bandwidth,
            "bandwidth_rounds": {label: {mode: sum(r["mode"] == mode for r in found)
                                         for mode in ("slow", "fast")}
                                 for label, found in bandwidth.items()},
            "targets": targets(runs), "results": rows}


def targets(runs: dict[str, dict]) -> dict:
    """For each target: in how many runs it was met, the failing cases, the range of its ratios."""
    out: dict[str, dict] = {}
    for name, run in sorted(runs.items()):
        for target, result in run["targets"].items():
            entry = out.setdefault(target, {"runs": 0, "met": 0, "missed": [], "ratio": []})
            entry["runs"] += 1
            entry["met"] += bool(result["met"])
            if not result["met"]:
                entry["missed"].append({"run": name,
                                        "cases": [c for c in result["cases"] if not c["met"]]})
            entry["ratio"] += [c["ratio"] for c in result["cases"] if "ratio" in c]
    for entry in out.values():
        entry["ratio"] = stats(entry["ratio"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", nargs="+", action="append", required=True, metavar="LABEL FILE",
                        help="a label, then the JSON files of that group's runs (repeatable)")
    parser.add_argument("--fast-gbps", type=float, default=65.0)
    args = parser.parse_args(argv)
    doc: dict = {"format": "mpsearch.benchmark.kernels_spread", "version": 1, "groups": {}}
    for label, *files in args.group:
        if not files:
            parser.error(f"--group needs a label and at least one file, but got only {label!r}. "
                         "Pass e.g. --group all runs/run_*.json")
        runs = {Path(f).stem: json.loads(Path(f).read_text()) for f in files}
        doc["groups"][label] = summarize(runs, args.fast_gbps)
    json.dump(doc, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
