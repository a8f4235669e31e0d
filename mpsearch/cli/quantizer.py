"""``--quantizer rtn|gptq`` with GPTQ's ``--act-order`` and ``--damp``: how a plan's weights are rounded.

A cost table prices round-to-nearest errors; the rounding a plan is *reproduced* with is the
plan's quantizer. ``search`` and ``pareto`` write the chosen method into every plan they write,
``evaluate`` and ``export`` apply it to the plan they read (by default the plan's own), and
``quickstart`` uses it for every plan. GPTQ compensates each layer's rounding error from its
calibration inputs, so wherever a GPTQ plan is applied the calibration data is needed too: the
calibration images (CNNs) or the calibration windows of the text (causal LMs).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mpsearch.cli.args import fraction

QUANTIZERS = ("rtn", "gptq")
DEFAULT_DAMP = 0.01


def damp_value(text: str) -> float:
    """An argparse type: GPTQ's damping, a fraction of the Hessian's mean diagonal in (0, 1)."""
    try:
        return fraction(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (exclusive), but got {text!r}. Pass e.g. "
                                         f"--damp {DEFAULT_DAMP} (GPTQ's damping, a fraction of the Hessian's mean "
                                         "diagonal)") from None


def add_quantizer_options(p: argparse.ArgumentParser, *, what: str) -> None:
    """``--quantizer``, ``--act-order`` and ``--damp`` on one verb; ``what`` says where the method goes."""
    p.add_argument("--quantizer", choices=QUANTIZERS, default=None,
                   help=f"how weights are rounded: rtn (round to nearest) or gptq (error compensation from the "
                        f"calibration data); {what}")
    p.add_argument("--act-order", action="store_true",
                   help="gptq only: quantize the columns of each layer in order of decreasing input energy")
    p.add_argument("--damp", type=damp_value, default=None,
                   help=f"gptq only: damping added to the Hessian, a fraction of its mean diagonal (default: {DEFAULT_DAMP})")


def chosen_quantizer(args: argparse.Namespace, recorded: Any):
    """The :class:`~mpsearch.core.config.QuantizerConfig` to use: ``recorded`` (a config or its dict)
    with the method and GPTQ settings the flags ask for; ``recorded`` itself when none is given.

    ``--act-order`` and ``--damp`` need GPTQ: given with ``--quantizer rtn``, or without
    ``--quantizer`` on a round-to-nearest plan, they are refused rather than ignored.
    """
    from mpsearch.core.config import QuantizerConfig
    from mpsearch.core.errors import ConfigError

    base = recorded if isinstance(recorded, QuantizerConfig) else QuantizerConfig.from_dict(dict(recorded or {}))
    method = args.quantizer or base.method
    gptq_flags = [flag for flag, given in (("--act-order", args.act_order), ("--damp", args.damp is not None)) if given]
    if gptq_flags and method != "gptq":
        raise ConfigError(f"{' and '.join(gptq_flags)} set GPTQ's rounding, but the quantizer is {method} "
                          f"({'--quantizer rtn' if args.quantizer else 'as the input records'}). Pass --quantizer gptq, "
                          f"or drop {' and '.join(gptq_flags)}.")
    if method == "rtn":
        return dataclasses.replace(base, method="rtn", damp=DEFAULT_DAMP, act_order=False)
    return dataclasses.replace(base, method="gptq", damp=args.damp if args.damp is not None else base.damp,
                               act_order=args.act_order or (base.method == "gptq" and base.act_order))


def plan_with_quantizer(args: argparse.Namespace, plan):
    """``plan`` rounded as the flags say (unchanged without them)."""
    quantizer = chosen_quantizer(args, plan.quantizer)
    return plan if quantizer == plan.quantizer else dataclasses.replace(plan, quantizer=quantizer)


def table_with_quantizer(args: argparse.Namespace, costs):
    """``costs`` whose plans will carry the flags' quantizer (the costs themselves are unchanged)."""
    quantizer = chosen_quantizer(args, costs.quantizer).to_dict()
    return costs if quantizer == dict(costs.quantizer) else dataclasses.replace(costs, quantizer=quantizer)


def describe(quantizer) -> str:
    """``gptq (damp 0.01, act-order)`` or ``rtn``."""
    if quantizer.method != "gptq":
        return "rtn"
    return f"gptq (damp {quantizer.damp:g}{', act-order' if quantizer.act_order else ''})"


__all__ = ["QUANTIZERS", "add_quantizer_options", "chosen_quantizer", "damp_value", "describe", "plan_with_quantizer",
           "table_with_quantizer"]
