"""HAWQ/ZeroQ-style study: CIFAR ResNets, every estimator and solver, real and distilled data.

For each model: fp32; uniform W8A8, W4A8, W3A8, W2A8; mixed plans at average 2.5, 3, 3.5 and
4 weight bits with A8, for every estimator x solver; calibrated on a fixed split of the real
CIFAR-10 test set (the first --calibration images) and, data-free, on inputs distilled from
the model's batch-norm statistics (ZeroQ). Accuracy is measured on the other test images.

    python studies/cnn_cifar10.py --data-dir DATA --out results/cnn
    python studies/cnn_cifar10.py --quick --out results/cnn_quick    # embedded data, a smoke run

Each (model, data, quantizer) is a resumable Study in its own folder; every folder's rows are
combined into OUT/cnn_cifar10.csv and summarized in OUT/cnn_cifar10.md (``--summarize`` rewrites
them alone), figures to OUT/<model>_<data>[_<quantizer>][_bc]/study.png.

``--quantizer rtn,gptq,gptq-act`` runs the same grid with each weight quantizer (per-channel
affine with MSE clipping, rounded to nearest or by GPTQ, act-order for ``gptq-act``), the same
quantizer for the uniform and the mixed plans. A GPTQ plan's costs price the error GPTQ leaves
(``build_cost_table(error="gptq")``), or round to nearest's with ``--gptq-costs rtn``; with
``--gptq-costs both`` each estimator appears twice, its GPTQ-priced table as ``<estimator>-gptqerr``.
Every plan carries bias corrections measured on its own calibration data (real or distilled;
``mpsearch.deploy.bias_correction``) unless ``--no-bias-correction`` is given; the folder name ends in
``_bc`` when it does.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.io import atomic_write_text
from mpsearch.kernels.activations import calibrate_ranges
from mpsearch.pricing import build_cost_table
from mpsearch.sensitivity import ESTIMATORS, Calibration, get_estimator
from mpsearch.space.discover import discover
from mpsearch.workflows.study import Study
from mpsearch.zoo.data import load_cifar10_split
from mpsearch.zoo.eval import accuracy
from mpsearch.zoo.models import load_pretrained

CNN_ESTIMATORS = ("hessian", "hessian_diag", "hessian_eig", "fisher", "first_order", "gwq", "obs", "lrp", "lim", "zscore", "zeroq")
SOLVERS = ("ilp", "convex", "lagrange", "dp", "greedy")
QUANTIZERS = {
    "rtn": RECOMMENDED,
    "gptq": QuantizerConfig.from_dict({**RECOMMENDED.to_dict(), "method": "gptq"}),
    "gptq-act": QuantizerConfig.from_dict({**RECOMMENDED.to_dict(), "method": "gptq", "act_order": True}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="folder with cifar10_test.npz and resnet*.th")
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--estimators", default=",".join(CNN_ESTIMATORS))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--budgets", default="2.5,3,3.5,4")
    p.add_argument("--uniform", default="8,4,3,2")
    p.add_argument("--bits", default="2,3,4,8", help="weight widths the search may choose (default: %(default)s)")
    p.add_argument("--calibration", type=int, default=512, help="first N test images calibrate (default: %(default)s)")
    p.add_argument("--distilled", type=int, default=256, help="distilled images for the data-free runs (0: skip)")
    p.add_argument("--activation-bits", type=int, default=8)
    p.add_argument("--quantizer", default="rtn", help=f"comma list of weight quantizers: {', '.join(QUANTIZERS)} (default: %(default)s)")
    p.add_argument("--gptq-costs", choices=("gptq", "rtn", "both"), default="gptq",
                   help="the error a GPTQ plan's costs price: GPTQ's own, round to nearest's, or both as two estimators")
    p.add_argument("--bias-correction", choices=("on", "off", "both"), default="on",
                   help="every plan carries the mean-shift corrections measured on its calibration data (on), none (off), "
                        "or run both settings (default: %(default)s)")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_const", const="off", help="--bias-correction off")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate at most N held-out images (0: all)")
    p.add_argument("--out", type=Path, default=Path("results/cnn_cifar10"))
    p.add_argument("--quick", action="store_true", help="embedded data, ResNet-20, few estimators: a smoke run")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--summarize", action="store_true", help="only (re)write the summary of the study folders in --out")
    args = p.parse_args(argv)
    unknown = sorted(set(args.quantizer.split(",")) - set(QUANTIZERS))
    if unknown:
        p.error(f"--quantizer must name some of {list(QUANTIZERS)}, but got {unknown}. Pass e.g. --quantizer rtn,gptq.")
    if args.quick:
        args.models, args.eval_limit, args.distilled = "resnet20", 300, 64
        args.estimators, args.solvers = "hessian,fisher", "ilp,greedy"
    return args


_ESTIMATES: dict[tuple[str, str, str], object] = {}  # (model, data, estimator) -> Sensitivity, shared by quantizers and corrections


def priced(args, model, model_name: str, data: str, calib, space, names: list[str], folder: Path) -> list[str]:
    """The estimator labels of a study, each estimator's table written to the study's ``costs/`` folder
    (where it resumes from): for a GPTQ quantizer priced with the errors ``--gptq-costs`` asks for.
    One estimate per model, data and estimator serves every quantizer and correction setting."""
    modes = {"gptq": ("gptq",), "rtn": ("rtn",), "both": ("rtn", "gptq")}[args.gptq_costs] if space.quantizer.method == "gptq" else ("rtn",)
    labels = []
    for name in names:
        wanted = {mode: name if mode == "rtn" or args.gptq_costs == "gptq" else f"{name}-gptqerr" for mode in modes}
        missing = {m: lbl for m, lbl in wanted.items() if not (folder / "costs" / f"{lbl}.json").is_file()}
        if missing:
            key = (model_name, data, name)
            if key not in _ESTIMATES:
                _ESTIMATES[key] = get_estimator(name, progress=not args.quiet).estimate(model, calib, space)
            sens = _ESTIMATES[key]
            for mode, label in missing.items():
                build_cost_table(model, space, sens, error=mode, calibration=calib).save(folder / "costs" / f"{label}.json")
        labels += list(wanted.values())
    return labels


def run_one(args, model_name: str, data: str, quantizer: str, bc: bool, x, y, x_eval, y_eval) -> pd.DataFrame:
    from mpsearch.sensitivity.distill import distill_bn_data

    model = load_pretrained(model_name, args.data_dir)
    space = discover(model, bits=tuple(int(b) for b in args.bits.split(",")), quantizer=QUANTIZERS[quantizer])
    if data == "real":
        calib = Calibration.classification(x, y, batch_size=64)
    else:
        distilled = distill_bn_data(model, n=args.distilled, seed=0, progress=not args.quiet)
        print(f"{model_name}: distilled {args.distilled} inputs, BN loss down {distilled.reduction:.0f}x", flush=True)
        calib = distilled.calibration(batch_size=64)
    names = [n for n in args.estimators.split(",") if n in ESTIMATORS]
    skipped = sorted(set(args.estimators.split(",")) - set(names))
    if skipped:
        print(f"skipping unknown estimators {skipped}", file=sys.stderr)
    inputs = [b[0] if isinstance(b, (tuple, list)) else b for b in calib.batches]
    folder = f"{model_name}_{data}" + (f"_{quantizer}" if quantizer != "rtn" else "") + ("_bc" if bc else "")
    estimators = priced(args, model, model_name, data, calib, space, names, args.out / folder)
    ranges = calibrate_ranges(model, inputs, space.names)
    study = Study(
        model=model, calibration=calib, space=space, metric=lambda m: accuracy(m, x_eval, y_eval),
        estimators=estimators, solvers=args.solvers.split(","), budgets=[float(b) for b in args.budgets.split(",")],
        uniform=[int(b) for b in args.uniform.split(",")] if data == "real" else [],
        out_dir=args.out / folder, metric_name="top-1 %", progress=not args.quiet,
        activation_bits=args.activation_bits, activation_ranges=ranges,
        bias_correction=inputs if bc else None,
    )
    frame = study.run()
    fp32 = accuracy(model, x_eval, y_eval)
    correction = (f", {quantizer}" if quantizer != "rtn" else "") + (", bias-corrected" if bc else "")
    study.plot(args.out / folder / "study.png", frame=frame, reference=fp32,
               title=f"{model_name}, {data} calibration{correction}, W/A{args.activation_bits}, {len(x_eval)} held-out images")
    return frame


def summarize(out: Path, fp32: dict[str, float]) -> str:
    """One markdown summary of every study folder under ``out`` (OUT/<model>_<data>[_<quantizer>][_bc]/results.csv).

    Per model, data, quantizer and bias correction: fp32 and uniform W/A8 top-1, then the top-1 of
    each estimator's ILP plan at each budget (average weight bits in brackets), and how many of the
    other solvers' plans matched the ILP's widths exactly; then one line per setting comparing
    uniform W3A8 with the best mixed plan at 3 bits.
    """
    frames, folders = [], {}
    for path in sorted(out.glob("*/results.csv")):
        model, data, *rest = path.parent.name.split("_")
        bc = rest[-1:] == ["bc"]
        quantizer = rest[0] if rest and rest[0] != "bc" else "rtn"
        folders[(model, data, quantizer, bc)] = path.parent
        frame = pd.read_csv(path)
        frame.insert(0, "bias_correction", bc)
        frame.insert(0, "quantizer", quantizer)
        frame.insert(0, "data", data)
        frame.insert(0, "model", model)
        frames.append(frame)
    if not frames:
        return ""
    table = pd.concat(frames, ignore_index=True)
    table["fp32"] = table["model"].map(fp32)
    atomic_write_text(out / "cnn_cifar10.csv", table.to_csv(index=False))
    parts = []
    for (model, data, quantizer, bc), group in table.groupby(["model", "data", "quantizer", "bias_correction"], sort=False):
        ref = fp32.get(model, float('nan'))
        head = f"**{model}, {data} calibration, {quantizer}, {'with' if bc else 'without'} bias correction** (fp32 {ref:.2f} %)"
        uniform = group[group["estimator"] == "uniform"]
        lines = [head, ""]
        if len(uniform):
            lines.append("uniform: " + ", ".join(f"{r.solver}A8 {r.metric:.2f} %" for r in uniform.itertuples()))
            lines.append("")
        mixed = group[group["estimator"] != "uniform"]
        budgets = sorted(mixed["budget"].unique())
        lines += ["| estimator (ILP plan) | " + " | ".join(f"{b:g} bits" for b in budgets) + " | other solvers' plans equal to ILP's |",
                  "|---|" + "---|" * (len(budgets) + 1)]
        for est, rows in mixed.groupby("estimator", sort=False):
            ilp = rows[rows["solver"] == "ilp"].set_index("budget")
            cells = [f"{ilp.at[b, 'metric']:.2f} ({ilp.at[b, 'avg_bits']:.2f})" if b in ilp.index else "-" for b in budgets]
            others = rows[rows["solver"] != "ilp"]
            same = sum(
                1 for r in others.itertuples()
                if r.budget in ilp.index and isinstance(r.plan_file, str)
                and _widths(folders[model, data, quantizer, bc] / r.plan_file)
                == _widths(folders[model, data, quantizer, bc] / ilp.at[r.budget, "plan_file"])
            )
            lines.append(f"| {est} | " + " | ".join(cells) + f" | {same} of {len(others)} |")
        parts.append("\n".join(lines))
    parts.append(compare(table))
    text = "\n\n".join(parts) + "\n"
    atomic_write_text(out / "cnn_cifar10.md", text)
    return text


def compare(table: pd.DataFrame, bits: float = 3.0) -> str:
    """Uniform W<bits>A8 against the best mixed plan at ``bits`` average weight bits, per setting."""
    lines = [f"| model | data | quantizer | BC | uniform W{bits:g}A8 | best mixed at {bits:g} bits (estimator, solver, bits) | margin |",
             "|---|---|---|---|---:|---|---:|"]
    for (model, data, quantizer, bc), g in table.groupby(["model", "data", "quantizer", "bias_correction"], sort=False):
        uniform = g[(g["estimator"] == "uniform") & (g["budget"] == bits)]["metric"]
        mixed = g[(g["estimator"] != "uniform") & (g["budget"] == bits)].dropna(subset=["metric"])
        if mixed.empty:
            continue
        best = mixed.loc[mixed["metric"].idxmax()]
        u = float(uniform.iloc[0]) if len(uniform) else float("nan")
        lines.append(f"| {model} | {data} | {quantizer} | {'yes' if bc else 'no'} | {u:.2f} | {best['metric']:.2f} "
                     f"({best['estimator']}, {best['solver']}, {best['avg_bits']:.2f}) | {best['metric'] - u:+.2f} |")
    return "\n".join(lines)


@functools.cache
def _widths(plan_path: Path) -> str:
    """A saved plan's widths as one comparable string (each file read once)."""
    return json.dumps(json.loads(plan_path.read_text())["bits"], sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    data = load_cifar10_split(args.data_dir, args.calibration, eval_limit=args.eval_limit or None, what="--calibration")
    x, y, x_eval, y_eval = data.x_calib, data.y_calib, data.x_eval, data.y_eval
    fp32 = {}
    for model_name in args.models.split(","):
        if not args.summarize:
            corrections = {"on": (True,), "off": (False,), "both": (True, False)}[args.bias_correction]
            for quantizer in args.quantizer.split(","):
                for bc in corrections:
                    for data in ("real", "distilled") if args.distilled else ("real",):
                        run_one(args, model_name, data, quantizer, bc, x, y, x_eval, y_eval)
        fp32[model_name] = accuracy(load_pretrained(model_name, args.data_dir), x_eval, y_eval)
    print(summarize(args.out, fp32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
