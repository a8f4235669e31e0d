"""The ``mpsearch`` argument parser: every verb, its options and its help (the verbs run in main.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

from mpsearch.cli.args import Parser, budget_values, fraction, int_at_least, seconds
from mpsearch.cli.llm_args import add_text_options
from mpsearch.cli.quantizer import add_quantizer_options

EPILOG = ("Data: --data-dir takes a folder with cifar10_test.npz and the resnet*.th checkpoints (or set "
          "MPSEARCH_DATA_DIR); without it the embedded ResNet-20 and 1,000 test images are used. A causal LM "
          "(--model FOLDER or FILE.gguf) reads --text, one paragraph a line (default: python_docs_prose.txt of the "
          "data folder): every tenth line (index % 10 == 9) is held out for evaluation, the others calibrate.")


def build_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The whole parser; ``commands`` maps each verb to the function that runs it."""
    from importlib.metadata import version

    from mpsearch.cli.inputs import DEFAULT_ESTIMATOR, ESTIMATOR_HELP, ESTIMATOR_NAMES, add_model_options

    parser = Parser(
        prog="mpsearch", description="Mixed-precision bit-allocation search for neural-network quantization.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"mpsearch {version('mpsearch')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
        if model:
            p.add_argument("--model", default=None, help="resnet20 (embedded), resnet32, resnet44, resnet56, or a causal "
                           "LM: a model folder holding config.json, or a .gguf file (default: resnet20; for evaluate, "
                           "the causal LM a plan records)")
            p.add_argument("--data-dir", type=Path, default=None, help="folder with cifar10_test.npz and the checkpoints")
            add_model_options(p)
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("quickstart", help="run the whole pipeline on the embedded ResNet-20", epilog=EPILOG,
                       description="Load a pretrained CIFAR ResNet, estimate Hessian sensitivities, solve mixed plans at "
                       "several average-bit budgets, measure every plan's top-1, and write plans (JSON), a table (CSV) "
                       "and the Pareto front (PNG).")
    common(p)
    p.add_argument("--out", type=Path, default=Path("mpsearch-out"), help="output folder (default: %(default)s)")
    p.add_argument("--calib", type=int_at_least(1, "--calib", 256), default=256,
                   help="calibration images, taken first; the rest are evaluated (default: %(default)s)")
    p.add_argument("--budgets", type=budget_values, default="2.5,3,3.5,4",
                   help="average-bit budgets of the mixed plans (default: %(default)s)")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="measure plans without bias correction (by default each plan carries its layers' mean output "
                        "shifts measured on the calibration images)")
    p.add_argument("--seed", type=int, default=0)
    add_quantizer_options(p, what="every plan is rounded so (default: rtn)")
    p.set_defaults(func=commands["quickstart"])

    p = sub.add_parser("sensitivity", help="estimate per-layer sensitivities and write a cost table (JSON)",
                       description="Score each layer's sensitivity on calibration images (the first --calib) with "
                       "--estimator; cost of a layer at b bits = score * ||Q_b(W) - W||^2, or the estimator's own "
                       "per-width cost.", epilog=EPILOG)
    common(p)
    p.add_argument("--out", type=Path, required=True, help="cost table JSON to write")
    p.add_argument("--calib", type=int_at_least(1, "--calib", 256), default=None,
                   help="CIFAR models: calibration images (default: 256)")
    p.add_argument("--batch-size", type=int_at_least(1, "--batch-size", 64), default=None,
                   help="calibration images per batch (for hessian: per Hessian-vector product) (default: 64); for a causal "
                        "LM, token windows per batch (default: 4)")
    p.add_argument("--bits", default="2,3,4,8", help="bit choices (default: %(default)s)")
    p.add_argument("--no-pins", action="store_true", help="also search the first and last layer (pinned to 8 bits by default)")
    p.add_argument("--estimator", default=None, choices=ESTIMATOR_NAMES, metavar="NAME",
                   help=ESTIMATOR_HELP.format(names=", ".join(ESTIMATOR_NAMES), default=DEFAULT_ESTIMATOR))
    p.add_argument("--tol", type=fraction, default=None,
                   help="hessian only: relative standard error at which probing stops (default: 0.1)")
    p.add_argument("--max-probes", type=int_at_least(2, "--max-probes", 200), default=None,
                   help="hessian only: at most this many probes; two at least, for a standard error (default: 200)")
    p.add_argument("--time-limit", type=seconds, default=None,
                   help="seconds for the estimate (loading the model and pricing the table come on top); it then stops "
                        "and uses what it has measured. A target, not a cap: the estimate finishes its minimum work first "
                        "(hessian: two probes, and a warning with the measured cost when the first already overran; "
                        "the others: one batch or unit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the estimator and of the calibration windows")
    add_text_options(p, calibration=True)
    p.set_defaults(func=commands["sensitivity"])

    p = sub.add_parser("search", help="find the best plan under a budget (writes plan JSON)",
                       description="Solve the cost table under one or more budgets. A budget reads like 3 or 3bits "
                       "(average bits per weight, scales included), 48KiB or 120000B (bytes), or KIND=VALUE.")
    common(p, model=False)
    p.add_argument("--costs", type=Path, required=True, help="cost table from `mpsearch sensitivity`")
    p.add_argument("--budget", action="append", default=[], help="repeat for several budgets at once")
    p.add_argument("--uniform", type=int, default=None, metavar="BITS",
                   help="instead of --budget: every unit at BITS without solving (pinned units keep their width)")
    p.add_argument("--bias-correction", action="store_true",
                   help="store in the plan each layer's mean output shift, measured on the cost table's calibration "
                        "images (lifts 2-3-bit top-1 by 3-7 points on ResNet-20); needs the model and the images")
    p.add_argument("--model", default=None, help="with --bias-correction: the model (default: the cost table's)")
    p.add_argument("--data-dir", type=Path, default=None, help="with --bias-correction: folder with cifar10_test.npz "
                   "and the checkpoints")
    p.add_argument("--calib", type=int_at_least(1, "--calib", 256), default=None,
                   help="with --bias-correction: the first N images calibrate (default: the cost table's count)")
    add_model_options(p)
    p.add_argument("--solver", default="ilp", help="(default: %(default)s)")
    p.add_argument("--time-limit", type=seconds, default=None, help="seconds; returns the best plan found so far")
    p.add_argument("--out", type=Path, required=True, help="plan JSON to write")
    add_quantizer_options(p, what="written into the plan (default: the cost table's)")
    p.set_defaults(func=commands["search"])

    p = sub.add_parser("pareto", help="sweep budgets and write the Pareto front (CSV, PNG, plans)",
                       description="Solve once per budget and keep the non-dominated plans.")
    common(p, model=False)
    p.add_argument("--costs", type=Path, required=True, help="cost table from `mpsearch sensitivity`")
    p.add_argument("--budgets", type=budget_values, default=None, help="START:STOP:STEP or a comma list (default: 2:8:0.25 average bits "
                   "up to the largest useful budget; for other kinds 16 values from the smallest to the largest)")
    p.add_argument("--kind", default="avg_bits", help="budget kind swept: avg_bits, bytes, or a resource "
                   "column such as latency_ms, bops, bytes_packed (see `mpsearch hw add`) (default: %(default)s)")
    p.add_argument("--x", default="avg_bits", choices=("avg_bits", "mib"), help="x axis of the plot")
    p.add_argument("--solver", default="ilp", help="(default: %(default)s)")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for pareto.csv, pareto.png, plans/ and a manifest; "
                   "one front per folder")
    p.add_argument("--overwrite", action="store_true", help="replace the front already in --out-dir (only the files its "
                   "manifest lists are removed)")
    add_quantizer_options(p, what="written into every plan (default: the cost table's)")
    p.set_defaults(func=commands["pareto"])

    p = sub.add_parser("study", help="run estimators x solvers x budgets from a TOML config",
                       description="Run a search study described by a TOML file (see mpsearch/workflows/study_config.py for "
                       "every key) and write results.csv, study.png/svg, the cost tables and the plans into its "
                       "out_dir. An interrupted study resumes where it stopped.")
    p.add_argument("config", type=Path, help="study config (TOML)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands["study"])

    from mpsearch.cli.hw import add_hw_parser

    add_hw_parser(sub)
    from mpsearch.cli.export import add_export_parser

    add_export_parser(sub)

    p = sub.add_parser("evaluate", help="measure a plan's top-1 (CIFAR) or perplexity and KL (causal LM), and its size",
                       epilog=EPILOG, description="Apply a plan (fake-quant reference) to a pretrained model and measure "
                       "top-1 on held-out CIFAR-10 images, or for a causal LM the perplexity and the mean next-token KL "
                       "divergence from the float model on the held-out lines of --text. Without --plan, measure the "
                       "float model.")
    common(p)
    p.add_argument("--plan", type=Path, default=None, help="plan JSON (omit for the fp32 model)")
    p.add_argument("--calib", type=int_at_least(0, "--calib", 256), default=None,
                   help="the first N images calibrate and are not evaluated; top-1 is measured on the rest (default: "
                        "the plan's calibration count, else 256; 0 evaluates every image)")
    p.add_argument("--limit", type=int_at_least(1, "--limit", 500), default=None,
                   help="evaluate only the first N held-out images (causal LM: token windows)")
    p.add_argument("--bias-correction", action="store_true",
                   help="measure the plan's bias correction on the calibration images first (if it carries none)")
    add_quantizer_options(p, what="applied to the plan (default: the plan's own)")
    add_text_options(p, calibration=False)
    p.set_defaults(func=commands["evaluate"])
    return parser


__all__ = ["EPILOG", "build_parser"]
