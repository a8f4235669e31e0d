"""``mpsearch evaluate``: a plan's (or the fp32 model's) top-1 on held-out CIFAR-10 images, and its size.

The first ``--calib`` images (by default the number the plan was calibrated on, else 256) are the
ones sensitivity estimates and bias corrections see, so they are not evaluated: top-1 is measured
on the images after them, as the quickstart does, and the output names which. ``--calib 0``
evaluates every image (the published fp32 accuracy is on all 10,000).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mpsearch.cli.inputs import calibration_count, load_model, with_bias_correction
from mpsearch.cli.quantizer import describe, plan_with_quantizer


def _images(data_dir: Any, n_calib: int, limit: int | None):
    """(x_calib or None, x_eval, y_eval, description of the evaluated images)."""
    import torch

    from mpsearch.zoo.data import load_cifar10, load_cifar10_split, to_tensor

    if n_calib == 0:
        images, labels = load_cifar10(data_dir)
        images, labels = images[:limit], labels[:limit]
        source = "the embedded test set" if data_dir is None else str(data_dir)
        return None, to_tensor(images), torch.from_numpy(labels), f"images 0-{len(labels) - 1} of {source} (all; --calib 0)"
    split = load_cifar10_split(data_dir, n_calib, eval_limit=limit, what="--calib")
    source = "the embedded test set" if split.source == "embedded" else split.source
    text = (f"images {n_calib}-{split.eval_stop - 1} of {source} ({split.eval_stop - n_calib:,} held out; "
            f"0-{n_calib - 1} calibrate)")
    return split.x_calib, split.x_eval, split.y_eval, text


def run_evaluate(args: argparse.Namespace, data_dir: Any) -> int:
    """Load the plan first (a plan breaking its pins is refused before any model is loaded), then measure."""
    from mpsearch.core.errors import ConfigError
    from mpsearch.core.plan import BitPlan
    from mpsearch.core.quality import warn_if_noisy
    from mpsearch.deploy.evaluate import evaluate_plan, plan_size

    plan = BitPlan.load(args.plan) if args.plan is not None else None
    meta = plan.meta if plan is not None else {}
    if plan is None and (args.quantizer or args.act_order or args.damp is not None):
        raise ConfigError("--quantizer, --act-order and --damp round a plan's weights, but no --plan was given. "
                          "Pass --plan PATH, or drop them for the fp32 model.")
    plan = plan_with_quantizer(args, plan) if plan is not None else None
    if args.bias_correction and plan is None:
        raise ConfigError("--bias-correction corrects a plan's quantized layers, but no --plan was given. "
                          "Pass --plan PATH, or drop --bias-correction for the fp32 model.")
    n_calib = calibration_count(args, meta)
    if args.bias_correction and n_calib == 0 and not plan.bias_correction:
        raise ConfigError("--bias-correction is measured on the calibration images, but --calib 0 leaves none. "
                          "Pass --calib 256 (the first 256 images calibrate, the rest are evaluated).")
    if plan is not None and plan.quantizer.method == "gptq" and n_calib == 0:
        raise ConfigError("a GPTQ plan is rounded with the calibration images, but --calib 0 leaves none. "
                          "Pass --calib 256 (the first 256 images calibrate, the rest are evaluated), or --quantizer rtn.")
    x_calib, x_eval, y_eval, which = _images(data_dir, n_calib, args.limit)
    model = load_model(args, args.model, data_dir, meta)
    if plan is None:
        from mpsearch.zoo.eval import accuracy

        n_params = sum(p.numel() for p in model.parameters())
        print(f"top-1 {accuracy(model, x_eval, y_eval):.2f} % on {which}; fp32, {n_params:,} parameters")
        return 0
    warn_if_noisy(meta.get("estimate_quality"))
    if args.bias_correction:
        if plan.bias_correction:
            print("note: the plan already carries bias corrections; evaluating them as they are", file=sys.stderr)
        else:
            plan = with_bias_correction(model, plan, x_calib)
    size = plan_size(model, plan)
    gptq = plan.quantizer.method == "gptq"  # GPTQ rounds with the calibration images
    top1 = evaluate_plan(model, plan, x_eval, y_eval, batches=[x_calib] if gptq else None)
    corrected = ", bias-corrected" if plan.bias_correction else ""
    rounding = f"; {describe(plan.quantizer)} on images 0-{n_calib - 1}" if gptq else ""
    print(f"top-1 {top1:.2f} % on {which}{rounding}; {size.average_bits:.3f} bits/weight (scales included{corrected}); "
          f"{size.total_bytes / 1024:.1f} KiB in all ({size.quantized_bytes / 1024:.1f} KiB quantized, "
          f"{size.float_bytes / 1024:.1f} KiB float)")
    return 0
