"""LLM scoring benchmarks on SmolLM2-135M: scoring time, G=128 cost-table time, peak memory whole vs block-wise.

Prints ONE JSON document. Run from the repository root:

    python benchmarks/llm_scoring.py --data-dir DATA --out benchmarks/data/llm_scoring.json

Model: SmolLM2-135M-Instruct (dequantized Q4_1 GGUF), the 210 decoder linears searched
(``lm_head`` left out), affine quantizer, bits 2..5. Calibration: ``--windows`` 256-token
windows of the prose calibration split, 4 windows a batch. Figures:

* ``token_fisher_seconds``: the estimator the group-wise recipe uses, the token-level Fisher
  diagonal ``mean_t (dl/dy)^2 x^2`` (one forward and backward per batch) on ``--fisher-windows``
  windows (8, as in the SmolLM2 study), scored over the whole model (target < 180 s);
* ``xtx_seconds``: the cheapest input-only estimator, the input diagonal ``[X^T X]_jj / rows``
  (forward passes only), block by block on ``--windows`` windows (it does not price the
  recipe well: its values are not on one scale across layers);
* ``table_g128_seconds``: the error-weighted G=128 group and layer tables from the Fisher
  values (every unit quantized at 4 widths; target < 60 s); ``table_g128_mse_seconds``: the
  same with MSE clipping of every group's range (what ``mpsearch sensitivity`` builds);
* ``memory``: peak resident memory of SliM-LLM's OBS salience (full ``X^T X`` per unit),
  scored on the whole model at once and block by block, each in its own process; the RSS is
  sampled every 10 ms while scoring and reported in full and above the process's RSS with the
  model loaded (``scoring_mib``). Target: block-wise scoring memory < 1/3 of whole-model.

Timings are wall-clock on a shared machine; threads and load average are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

# Run as a script, this folder comes first on sys.path, and its kernels.py would shadow the `kernels`
# package that transformers looks for.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples the resident set size in a thread while the block runs."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def setup(data_dir: Path, windows: int):
    from mpsearch.sensitivity.calibration import Calibration
    from mpsearch.space.discover import discover_quietly
    from mpsearch.zoo.llm import load_smollm2
    from mpsearch.zoo.text import load_prose, text_windows

    model, tokenizer = load_smollm2()
    calib = Calibration.causal_lm(text_windows(tokenizer, load_prose(data_dir, "calibration"), 256, windows, seed=0))
    space = discover_quietly(model, bits=(2, 3, 4, 5), pin_first_last=None, exclude=["lm_head"])
    return model, calib, space


def child(mode: str, data_dir: Path, windows: int) -> dict:
    """One process, one mode: OBS salience scored whole-model or block-wise, with its peak RSS."""
    from mpsearch.sensitivity.blockwise import BlockOBS

    model, calib, space = setup(data_dir, windows)
    loaded = rss_mib()
    start = time.perf_counter()
    with PeakRSS() as peak:
        BlockOBS(mode=mode, progress=False).estimate(model, calib, space)
    return {"mode": mode, "seconds": round(time.perf_counter() - start, 1), "loaded_mib": round(loaded),
            "peak_mib": round(peak.peak), "scoring_mib": round(peak.peak - loaded)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MPSEARCH_DATA_DIR"))
    parser.add_argument("--windows", type=int, default=32, help="calibration windows of xtx and the memory runs")
    parser.add_argument("--fisher-windows", type=int, default=8, help="calibration windows of the token Fisher")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON document here")
    parser.add_argument("--child", choices=("whole", "block"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir is required (a folder with python_docs_prose.txt), or set $MPSEARCH_DATA_DIR")
    if args.child:
        print(json.dumps(child(args.child, args.data_dir, args.windows)))
        return 0
    from mpsearch.core.config import QuantizerConfig, Scheme
    from mpsearch.pricing.recipes import input_values, recipe_tables, token_fisher_values
    from mpsearch.sensitivity.calibration import Calibration
    from mpsearch.space.discover import discover_quietly

    model, calib, space = setup(args.data_dir, args.windows)
    start = time.perf_counter()
    input_values(model, calib, space, mode="block")
    xtx_seconds = time.perf_counter() - start
    fisher_calib = Calibration.causal_lm(torch.cat(calib.batches)[: args.fisher_windows])
    start = time.perf_counter()
    values = token_fisher_values(model, fisher_calib, space)
    fisher_seconds = time.perf_counter() - start
    table_seconds = {}
    for clip in (False, True):
        grouped = discover_quietly(model, bits=(2, 3, 4, 5), pin_first_last=None, exclude=["lm_head"],
                                   quantizer=QuantizerConfig(scheme=Scheme.AFFINE, group_size=128, clip_search=clip))
        start = time.perf_counter()
        group, _ = recipe_tables(model, grouped, values)
        table_seconds[clip] = time.perf_counter() - start
    doc = {
        "model": "SmolLM2-135M-Instruct (dequantized Q4_1)", "units": len(space.units), "weights": space.n_weights,
        "calibration": f"{calib.n_samples} windows of 256 tokens", "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "token_fisher_seconds": round(fisher_seconds, 1), "token_fisher_windows": fisher_calib.n_samples,
        "token_fisher_target_s": 180, "xtx_seconds": round(xtx_seconds, 1),
        "table_g128_seconds": round(table_seconds[False], 1), "table_g128_mse_seconds": round(table_seconds[True], 1),
        "table_groups": group.n_items, "table_target_s": 60,
    }
    del model, values, group
    if not args.skip_memory:
        runs = {}
        for mode in ("whole", "block"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--data-dir", str(args.data_dir),
                                  "--windows", str(args.windows)], capture_output=True, text=True, check=True)
            runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        doc["memory"] = runs
        doc["block_over_whole_scoring"] = round(runs["block"]["scoring_mib"] / max(runs["whole"]["scoring_mib"], 1), 3)
        doc["block_over_whole_peak"] = round(runs["block"]["peak_mib"] / runs["whole"]["peak_mib"], 3)
    doc["load_average_end"] = os.getloadavg()[0]
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out is not None:
        from mpsearch.core.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
