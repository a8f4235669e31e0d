"""The ``mpsearch hw`` commands: measure this machine and add hardware columns to a cost table.

    mpsearch hw calibrate --out lut.json [--quick] [--threads 1]
    mpsearch hw add --costs costs.json --model resnet20 --lut lut.json --out costs_hw.json
    mpsearch hw add --costs costs.json --model resnet20 --device t4 --out costs_hw.json
    mpsearch pareto --costs costs_hw.json --kind latency_ms --budgets 1,2,4 --out-dir front/

``hw add`` always adds ``bytes_packed`` and ``bops``, and ``latency_ms`` from the lookup table
(``--lut``) or the roofline of a named device (``--device``; ``cpu-local`` measures this machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def model_shapes(name: str, *, seq_len: int = 128) -> Any:
    """Trace a zoo model ('resnet20'..'resnet56' at 1x3x32x32, 'minilm' at ``seq_len`` tokens)."""
    import torch

    from mpsearch.core.errors import UnknownNameError
    from mpsearch.pricing.profile import trace_layers

    if name.startswith("resnet") and name[6:].isdigit():
        from mpsearch.zoo.resnet import cifar_resnet

        return trace_layers(cifar_resnet(int(name[6:])).eval(), torch.zeros(1, 3, 32, 32))
    if name == "minilm":
        from mpsearch.zoo.minilm import load_minilm

        model, _ = load_minilm()
        ids = torch.full((1, seq_len), 1000, dtype=torch.long)
        return trace_layers(model, input_ids=ids, attention_mask=torch.ones_like(ids))
    raise UnknownNameError(f"`--model` must be a CIFAR ResNet (resnet20, resnet32, resnet44, resnet56) or minilm, "
                           f"but got {name!r}. Pass one of those.")


def check_same_units(costs: Any, shapes: Any, model: str, path: Any) -> None:
    """Refuse a cost table whose units are not the model's (a ResNet-20 table priced as ResNet-56
    would silently keep the units the two share and price them with the wrong model)."""
    from mpsearch.core.costs import GroupIndex
    from mpsearch.core.errors import CostTableError

    units = costs.items.units if isinstance(costs.items, GroupIndex) else tuple(costs.items)
    left_out = set(costs.meta.get("float_units") or ())  # left out of the search: not in the table
    extra = [n for n in units if n not in shapes.names]
    missing = [n for n in shapes.names if n not in units and n not in left_out]
    if not extra and not missing:
        return

    def shown(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    parts = ([f"{len(missing)} of the model's units are not in the table ({shown(missing)})"] if missing else []) + \
        ([f"{len(extra)} of the table's units are not in the model ({shown(extra)})"] if extra else [])
    recorded = costs.meta.get("model")
    fix = (f"Pass --model {recorded} (the table was computed for it)" if isinstance(recorded, str) and recorded != model
           else "Pass the --model the table was computed for")
    raise CostTableError(
        f"`--model` must be the model the cost table was computed for, but {path} has {len(units)} units and "
        f"{model} has {len(shapes.names)}: {'; '.join(parts)}. {fix}."
    )


def cmd_hw_calibrate(args: argparse.Namespace) -> int:
    import time

    from mpsearch.workflows.hw_calibrate import calibrate, write_table

    start = time.perf_counter()
    table = calibrate(quick=args.quick, threads=args.threads, seed=args.seed,
                      progress=None if args.quiet else print)
    write_table(table, args.out)
    print(f"{table.ms.size} timings in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


def cmd_hw_add(args: argparse.Namespace) -> int:
    from mpsearch.core.costs import CostTable
    from mpsearch.core.errors import ConfigError
    from mpsearch.hardware_models.bops import bops_column
    from mpsearch.hardware_models.memory import bytes_packed_column

    costs = CostTable.load(args.costs)
    shapes = model_shapes(args.model, seq_len=args.seq_len)
    check_same_units(costs, shapes, args.model, args.costs)
    columns = {"bytes_packed": bytes_packed_column(costs, shapes),
               "bops": bops_column(costs, shapes, act_bits=args.act_bits, batch=args.batch)}
    if args.lut is not None and args.device is not None:
        raise ConfigError("latency comes from --lut or --device, but both were given. Pass one of them.")
    if args.lut is not None:
        from mpsearch.hardware_models.lut import LUTLatencyModel

        columns["latency_ms"] = LUTLatencyModel.from_json(args.lut).latency_column(costs, shapes, batch=args.batch)
    elif args.device is not None:
        from mpsearch.hardware_models.roofline import latency_column

        device: Any = args.device
        if device == "cpu-local":
            from mpsearch.workflows.hw_calibrate import measure_cpu

            device = measure_cpu()
        columns["latency_ms"] = latency_column(costs, shapes, device, batch=args.batch,
                                               act_bits=min(16, args.act_bits))
    out = costs.with_resources(**columns)
    out.save(args.out)
    print(f"added {', '.join(columns)} for {len(shapes.names)} units -> {args.out}")
    return 0


def add_hw_parser(sub: Any) -> None:
    """Register ``mpsearch hw calibrate`` and ``mpsearch hw add`` on the CLI's subparsers."""
    hw = sub.add_parser("hw", help="hardware models: measure kernels, add bytes/BOPs/latency to a cost table",
                        description="Measure this machine's packed kernels (calibrate) or add hardware resource "
                        "columns to a saved cost table (add), for budgets such as latency_ms=2 or bops=1e9.")
    hw_sub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND", required=True)

    p = hw_sub.add_parser("calibrate", help="time the Numba kernels over a grid of shapes and write a lookup table")
    p.add_argument("--out", type=Path, required=True, help="lookup table JSON to write")
    p.add_argument("--quick", action="store_true", help="a small grid (seconds instead of about a minute)")
    p.add_argument("--threads", type=int, default=1, help="Numba threads while timing (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_hw_calibrate)

    p = hw_sub.add_parser("add", help="add bytes_packed, bops and latency_ms columns to a cost table")
    p.add_argument("--costs", type=Path, required=True, help="cost table from `mpsearch sensitivity`")
    p.add_argument("--model", default="resnet20", help="resnet20..resnet56 or minilm (default: %(default)s)")
    p.add_argument("--lut", type=Path, default=None, help="lookup table from `mpsearch hw calibrate`")
    p.add_argument("--device", default=None, help="roofline device: h100-sxm, a100-80gb, t4, rtx4090, cpu-local")
    p.add_argument("--batch", type=int, default=1, help="samples per call (default: %(default)s)")
    p.add_argument("--act-bits", type=int, default=8, help="activation bits for BOPs (and roofline precision, "
                   "16+ = weight-only) (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sample for minilm (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="cost table JSON to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_hw_add)
