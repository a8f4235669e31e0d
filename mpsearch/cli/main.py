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

Causal LMs (``--model`` a model folder or a .gguf file; mpsearch/cli/llm.py):

    mpsearch sensitivity --model smollm2/ --text prose.txt --group-size 128 --out costs.json
    mpsearch search --costs costs.json --budget 3.1875 --solver slim --out plan.json
    mpsearch evaluate --model smollm2/ --plan plan.json [--quantizer gptq]   # perplexity, mean logit KL

Errors on user input print one line naming the rule, the value and the fix, and exit with status 2
(bad flags included). Ctrl-C exits with 130 and SIGTERM with 143, after the same cleanup: an
interrupted `sensitivity` keeps its finished probes for the next run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mpsearch.cli.args import Terminated, sigterm_as_interrupt


def _data_dir(args: argparse.Namespace):
    from mpsearch.zoo.data import default_data_dir

    return args.data_dir if args.data_dir is not None else default_data_dir()


def cmd_quickstart(args: argparse.Namespace) -> int:
    from mpsearch.cli.inputs import load_model
    from mpsearch.cli.quantizer import chosen_quantizer
    from mpsearch.core.config import RECOMMENDED
    from mpsearch.core.io import check_output_dir
    from mpsearch.workflows.quickstart import format_table, run_quickstart
    from mpsearch.zoo.data import load_cifar10_split

    args.model = args.model or "resnet20"
    quantizer = chosen_quantizer(args, RECOMMENDED)  # flags checked before minutes of work
    check_output_dir(args.out)
    load_cifar10_split(_data_dir(args), args.calib, what="--calib")  # the same check as the run's, in CLI terms
    result = run_quickstart(
        data_dir=_data_dir(args), out_dir=args.out, model_name=args.model, n_calib=args.calib,
        model=load_model(args, args.model, _data_dir(args)), model_file=args.model_file,
        seed=args.seed, budgets=args.budgets, bias_correction=args.bias_correction, progress=not args.quiet,
        quantizer=quantizer,
    )
    print()
    print(format_table(result.table))
    print()
    print(f"wrote {result.out_dir}/summary.csv, pareto.csv, pareto.png, costs.json and plans/*.json")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from mpsearch.cli.inputs import DEFAULT_CALIB, build_estimator, load_model, model_meta, parse_bits
    from mpsearch.cli.llm import is_causal_lm, refuse_llm_options, run_llm_sensitivity
    from mpsearch.core.io import check_output_file
    from mpsearch.pricing.tables import build_cost_table
    from mpsearch.sensitivity import Calibration
    from mpsearch.space.discover import discover_quietly
    from mpsearch.zoo.data import load_cifar10_split

    checkpoint = Path(str(args.out) + ".ckpt.npz")  # an interrupted run resumes from here when rerun
    check_output_file(args.out)  # before minutes of work
    check_output_file(checkpoint, what="the checkpoint file")
    args.model = args.model or "resnet20"
    if is_causal_lm(args.model):
        return _interruptible(lambda: run_llm_sensitivity(args, checkpoint), checkpoint)
    refuse_llm_options(args)
    data_dir = _data_dir(args)
    data = load_cifar10_split(data_dir, args.calib or DEFAULT_CALIB, min_eval=0, what="--calib")
    x, y = data.x_calib, data.y_calib
    model = load_model(args, args.model, data_dir)
    space = discover_quietly(model, bits=parse_bits(args.bits), pin_first_last=None if args.no_pins else 8)
    if notice := space.float_notice():
        print(f"note: {notice}", file=sys.stderr)
    estimator = build_estimator(args, checkpoint)
    calib = Calibration.classification(x, y, batch_size=args.batch_size or 64)
    sens = _interruptible(lambda: estimator.estimate(model, calib, space), checkpoint)
    costs = build_cost_table(model, space, sens, meta={**model_meta(args, args.model), "calibration": len(x)})
    costs.save(args.out)
    quality = costs.meta.get("estimate_quality")
    probes = (f", {quality['probes']} probes (converged={quality['converged']}, median relative standard error "
              f"{quality['rel_stderr_median']:.3g})" if quality else "")
    print(f"{len(space)} units, {sens.method}{probes}, {sens.seconds:.1f} s -> {args.out}")
    return 0


def _interruptible(run, checkpoint: Path):
    """``run()``; on Ctrl-C or SIGTERM, say whether finished probes were kept for the next run."""
    try:
        return run()
    except KeyboardInterrupt as stop:
        stop.mpsearch_detail = (f"finished probes kept in {checkpoint}; rerun the same command to resume"  # type: ignore[attr-defined]
                                if checkpoint.is_file() else "nothing was saved; rerun the same command to start again")
        raise


def cmd_search(args: argparse.Namespace) -> int:
    from mpsearch.cli.quantizer import table_with_quantizer
    from mpsearch.core.budget import Budget
    from mpsearch.core.costs import CostTable
    from mpsearch.core.errors import ConfigError
    from mpsearch.core.io import check_output_file
    from mpsearch.core.quality import warn_if_noisy
    from mpsearch.solvers import solve

    check_output_file(args.out)
    costs = table_with_quantizer(args, CostTable.load(args.costs))
    if costs.meta.get("float_modules"):  # only then: the space module imports torch
        from mpsearch.space.discover import float_notice_of

        if notice := float_notice_of(costs):
            print(f"note: {notice}", file=sys.stderr)
    warn_if_noisy(costs.meta.get("estimate_quality"))
    if args.bias_correction and costs.meta.get("model_kind") == "causal_lm":
        raise ConfigError("--bias-correction is measured on CIFAR images, but the cost table is a causal LM's "
                          f"({costs.meta.get('model')}). Drop --bias-correction.")
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
    from mpsearch.cli.quantizer import table_with_quantizer
    from mpsearch.core.costs import CostTable
    from mpsearch.solvers.front_dir import check_front_dir
    from mpsearch.solvers.pareto import pareto
    from mpsearch.workflows.quickstart import default_sweep

    out = check_front_dir(args.out_dir, overwrite=args.overwrite)  # before the solves
    costs = table_with_quantizer(args, CostTable.load(args.costs))
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
    from mpsearch.cli.llm import is_causal_lm, recorded_lm, refuse_llm_options, run_llm_evaluate

    args.model = args.model or recorded_lm(args.plan) or "resnet20"
    if is_causal_lm(args.model):
        return run_llm_evaluate(args)
    refuse_llm_options(args)
    return run_evaluate(args, _data_dir(args))


def cmd_study(args: argparse.Namespace) -> int:
    from mpsearch.workflows.study_config import run_config

    frame, fp32, out_dir = run_config(args.config, progress=not args.quiet)
    shown = frame[["estimator", "solver", "budget", "status", "avg_bits", "mib", "predicted_cost", "metric"]]
    print(shown.to_string(index=False))
    print(f"fp32: {fp32:.2f}; wrote {out_dir}/results.csv, study.png, study.svg, costs/ and plans/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mpsearch`` parser (:mod:`mpsearch.cli.parsers`) wired to this module's verbs."""
    from mpsearch.cli.parsers import build_parser as build

    return build({"quickstart": cmd_quickstart, "sensitivity": cmd_sensitivity, "search": cmd_search,
                  "pareto": cmd_pareto, "study": cmd_study, "evaluate": cmd_evaluate})


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
