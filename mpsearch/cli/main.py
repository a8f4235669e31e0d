"""The ``mpsearch`` command line.

    mpsearch quickstart                       # the whole pipeline on the embedded ResNet-20
    mpsearch sensitivity --model resnet20 --out costs.json [--estimator hessian] [--model-file mine.pt]
    mpsearch search --costs costs.json --budget 3 --out plan.json [--bias-correction]
    mpsearch search --costs costs.json --uniform 4 --out plan_w4.json     # no solve; pinned layers kept
    mpsearch pareto --costs costs.json --budgets 2.5:4:0.25 --out-dir front/
    mpsearch evaluate --model resnet20 --plan plan.json --data-dir DATA   # on the images not calibrated on
    mpsearch study study.toml                 # estimators x solvers x budgets, resumable
    mpsearch hw calibrate --out lut.json      # time the packed kernels on this machine
    mpsearch hw add --costs costs.json --lut lut.json --out costs_hw.json   # + latency_ms, bops, bytes_packed

Errors on user input print one line naming the rule, the value and the fix, and exit with status 2
(bad flags included). Ctrl-C exits with 130 and SIGTERM with 143, after the same cleanup: an
interrupted `sensitivity` keeps its finished probes for the next run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mpsearch.cli.args import Parser, Terminated, budget_values, fraction, int_at_least, seconds, sigterm_as_interrupt

EPILOG = "Data: --data-dir takes a folder with cifar10_test.npz and the resnet*.th checkpoints " \
    "(or set MPSEARCH_DATA_DIR); without it the embedded ResNet-20 and 1,000 test images are used."


def _data_dir(args: argparse.Namespace):
    from mpsearch.zoo.data import default_data_dir

    return args.data_dir if args.data_dir is not None else default_data_dir()


def parse_bits(text: str) -> tuple[int, ...]:
    from mpsearch.core.errors import BitsOutOfRangeError

    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise BitsOutOfRangeError(f"--bits must be a comma list of integers, but got {text!r}. Pass e.g. --bits 2,3,4,8.") from None


def cmd_quickstart(args: argparse.Namespace) -> int:
    from mpsearch.cli.inputs import load_model
    from mpsearch.core.io import check_output_dir
    from mpsearch.workflows.quickstart import format_table, run_quickstart
    from mpsearch.zoo.data import load_cifar10_split

    check_output_dir(args.out)  # before minutes of work
    load_cifar10_split(_data_dir(args), args.calib, what="--calib")  # the same check as the run's, in CLI terms
    result = run_quickstart(
        data_dir=_data_dir(args), out_dir=args.out, model_name=args.model, n_calib=args.calib,
        model=load_model(args, args.model, _data_dir(args)), model_file=args.model_file,
        seed=args.seed, budgets=args.budgets, bias_correction=args.bias_correction, progress=not args.quiet,
    )
    print()
    print(format_table(result.table))
    print()
    print(f"wrote {result.out_dir}/summary.csv, pareto.csv, pareto.png, costs.json and plans/*.json")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from mpsearch.cli.inputs import build_estimator, load_model, model_meta
    from mpsearch.core.io import check_output_file
    from mpsearch.pricing.tables import build_cost_table
    from mpsearch.sensitivity import Calibration
    from mpsearch.space.discover import discover_quietly
    from mpsearch.zoo.data import load_cifar10_split

    checkpoint = Path(str(args.out) + ".ckpt.npz")  # an interrupted run resumes from here when rerun
    check_output_file(args.out)  # before minutes of work
    check_output_file(checkpoint, what="the checkpoint file")
    data_dir = _data_dir(args)
    data = load_cifar10_split(data_dir, args.calib, min_eval=0, what="--calib")
    x, y = data.x_calib, data.y_calib
    model = load_model(args, args.model, data_dir)
    space = discover_quietly(model, bits=parse_bits(args.bits), pin_first_last=None if args.no_pins else 8)
    if notice := space.float_notice():
        print(f"note: {notice}", file=sys.stderr)
    estimator = build_estimator(args, checkpoint)
    try:
        sens = estimator.estimate(model, Calibration.classification(x, y, batch_size=args.batch_size), space)
    except KeyboardInterrupt as stop:
        stop.mpsearch_detail = (f"finished probes kept in {checkpoint}; rerun the same command to resume"  # type: ignore[attr-defined]
                                if checkpoint.is_file() else "nothing was saved; rerun the same command to start again")
        raise
    costs = build_cost_table(model, space, sens, meta={**model_meta(args, args.model), "calibration": len(x)})
    costs.save(args.out)
    quality = costs.meta.get("estimate_quality")
    probes = (f", {quality['probes']} probes (converged={quality['converged']}, median relative standard error "
              f"{quality['rel_stderr_median']:.3g})" if quality else "")
    print(f"{len(space)} units, {sens.method}{probes}, {sens.seconds:.1f} s -> {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mpsearch.core.budget import Budget
    from mpsearch.core.costs import CostTable
    from mpsearch.core.errors import ConfigError
    from mpsearch.core.io import check_output_file
    from mpsearch.core.quality import warn_if_noisy
    from mpsearch.solvers import solve

    check_output_file(args.out)
    costs = CostTable.load(args.costs)
    if costs.meta.get("float_modules"):  # only then: the space module imports torch
        from mpsearch.space.discover import float_notice_of

        if notice := float_notice_of(costs):
            print(f"note: {notice}", file=sys.stderr)
    warn_if_noisy(costs.meta.get("estimate_quality"))
    if (args.uniform is None) == (not args.budget):
        raise ConfigError(f"search needs --budget (solve) or --uniform BITS (one width, no solve), but got "
                          f"{'neither' if args.uniform is None else 'both'}. Pass one of them, e.g. --budget 3 or --uniform 4.")
    if args.uniform is not None:  # pinned units keep their width
        choice = costs.uniform_choice(args.uniform)
        plan = costs.plan(choice, solver="uniform", budget=f"uniform {args.uniform}-bit")
        status, objective, seconds = f"uniform {args.uniform}-bit", costs.objective(choice), 0.0
    else:
        result = solve(costs, [Budget.parse(b) for b in args.budget], solver=args.solver, time_limit=args.time_limit)
        plan = result.plan  # raises InfeasibleBudgetError with the smallest feasible budget
        choice, status, objective, seconds = result.choice, result.status.value, result.objective, result.seconds
    if args.bias_correction:
        from mpsearch.cli.inputs import bias_corrected_for_table

        plan = bias_corrected_for_table(args, _data_dir(args), costs.meta, plan)
    plan.save(args.out)
    print(f"{status}: predicted cost {objective:.6g}, {costs.average_bits(choice):.3f} bits/weight, "
          f"{costs.storage_bytes(choice) / 1024:.1f} KiB, {seconds:.2f} s -> {args.out}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from mpsearch.core.costs import CostTable
    from mpsearch.solvers.front_dir import check_front_dir
    from mpsearch.solvers.pareto import pareto
    from mpsearch.workflows.quickstart import default_sweep

    out = check_front_dir(args.out_dir, overwrite=args.overwrite)  # before the solves
    costs = CostTable.load(args.costs)
    values = args.budgets if args.budgets is not None else default_sweep(costs, args.kind)
    front = pareto(costs, values, solver=args.solver, kind=args.kind, progress=not args.quiet)
    if not front.front:  # every budget infeasible: say so instead of writing an empty front
        _ = front.results[-1].plan  # raises InfeasibleBudgetError naming the smallest feasible budget
    front.save(out, overwrite=args.overwrite, x=args.x)
    print(front.to_frame().to_string(index=False))
    print(f"wrote {out}/pareto.csv, pareto.png, pareto-manifest.json and {len(front.front)} plans")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mpsearch.cli.evaluate import run_evaluate

    return run_evaluate(args, _data_dir(args))


def cmd_study(args: argparse.Namespace) -> int:
    from mpsearch.workflows.study_config import run_config

    frame, fp32, out_dir = run_config(args.config, progress=not args.quiet)
    shown = frame[["estimator", "solver", "budget", "status", "avg_bits", "mib", "predicted_cost", "metric"]]
    print(shown.to_string(index=False))
    print(f"fp32: {fp32:.2f}; wrote {out_dir}/results.csv, study.png, study.svg, costs/ and plans/")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
            p.add_argument("--model", default="resnet20", help="resnet20 (embedded), resnet32, resnet44, resnet56 (default: %(default)s)")
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
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("sensitivity", help="estimate per-layer sensitivities and write a cost table (JSON)",
                       description="Score each layer's sensitivity on calibration images (the first --calib) with "
                       "--estimator; cost of a layer at b bits = score * ||Q_b(W) - W||^2, or the estimator's own "
                       "per-width cost.", epilog=EPILOG)
    common(p)
    p.add_argument("--out", type=Path, required=True, help="cost table JSON to write")
    p.add_argument("--calib", type=int_at_least(1, "--calib", 256), default=256, help="calibration images (default: %(default)s)")
    p.add_argument("--batch-size", type=int_at_least(1, "--batch-size", 64), default=64,
                   help="calibration images per batch (for hessian: per Hessian-vector product) (default: %(default)s)")
    p.add_argument("--bits", default="2,3,4,8", help="bit choices (default: %(default)s)")
    p.add_argument("--no-pins", action="store_true", help="also search the first and last layer (pinned to 8 bits by default)")
    p.add_argument("--estimator", default=DEFAULT_ESTIMATOR, choices=ESTIMATOR_NAMES, metavar="NAME",
                   help=ESTIMATOR_HELP.format(names=", ".join(ESTIMATOR_NAMES)))
    p.add_argument("--tol", type=fraction, default=None,
                   help="hessian only: relative standard error at which probing stops (default: 0.1)")
    p.add_argument("--max-probes", type=int_at_least(2, "--max-probes", 200), default=None,
                   help="hessian only: at most this many probes; two at least, for a standard error (default: 200)")
    p.add_argument("--time-limit", type=seconds, default=None,
                   help="seconds; the estimate then stops and uses what it has measured (hessian: checked before every "
                        "probe once two have run)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sensitivity)

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
    p.set_defaults(func=cmd_search)

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
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("study", help="run estimators x solvers x budgets from a TOML config",
                       description="Run a search study described by a TOML file (see mpsearch/workflows/study_config.py for "
                       "every key) and write results.csv, study.png/svg, the cost tables and the plans into its "
                       "out_dir. An interrupted study resumes where it stopped.")
    p.add_argument("config", type=Path, help="study config (TOML)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study)

    from mpsearch.cli.hw import add_hw_parser

    add_hw_parser(sub)
    from mpsearch.cli.export import add_export_parser

    add_export_parser(sub)

    p = sub.add_parser("evaluate", help="measure a plan's top-1 accuracy and size (fp32 without --plan)", epilog=EPILOG,
                       description="Apply a plan (fake-quant reference) to a pretrained model and measure top-1 on CIFAR-10. "
                       "Without --plan, measure the fp32 model.")
    common(p)
    p.add_argument("--plan", type=Path, default=None, help="plan JSON (omit for the fp32 model)")
    p.add_argument("--calib", type=int_at_least(0, "--calib", 256), default=None,
                   help="the first N images calibrate and are not evaluated; top-1 is measured on the rest (default: "
                        "the plan's calibration count, else 256; 0 evaluates every image)")
    p.add_argument("--limit", type=int_at_least(1, "--limit", 500), default=None,
                   help="evaluate only the first N held-out images")
    p.add_argument("--bias-correction", action="store_true",
                   help="measure the plan's bias correction on the calibration images first (if it carries none)")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mpsearch.cli.inputs import warnings_on_stderr
    from mpsearch.core.errors import MPSearchError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad flag (one line already printed)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        with sigterm_as_interrupt(), warnings_on_stderr(args.command):
            return int(args.func(args) or 0)
    except MPSearchError as err:
        print(f"mpsearch {args.command}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        term = isinstance(stop, Terminated)
        detail = getattr(stop, "mpsearch_detail", "")
        print(f"mpsearch {args.command}: {'terminated (SIGTERM)' if term else 'interrupted'}{'; ' + detail if detail else ''}",
              file=sys.stderr)
        return 143 if term else 130


if __name__ == "__main__":
    sys.exit(main())
