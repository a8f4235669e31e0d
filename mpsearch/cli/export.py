"""``mpsearch export``: write a plan as a model the target runtime loads, after the pre-export check.

    mpsearch export --plan plan.json --model smollm2.gguf --format gguf --out mixed.gguf
    mpsearch export --plan plan.json --model HF_DIR --format compressed-tensors --out ct/ [--target vllm]
    mpsearch export --plan plan.json --model HF_DIR --format mpsearch --out packed/
    mpsearch export --plan plan.json --model HF_DIR --format mpsearch --quantizer gptq --text prose.txt --out packed/

The check's report (every unit changed to fit the format, with its predicted cost when --costs is
given) is printed first; --strict refuses any change instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mpsearch.cli.llm_args import add_text_options
from mpsearch.cli.quantizer import add_quantizer_options, plan_with_quantizer

FORMATS = ("gguf", "compressed-tensors", "mpsearch")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` verb."""
    p = sub.add_parser("export", help="write a plan as a GGUF file, a compressed-tensors folder or an mpsearch folder",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", type=Path, required=True, help="plan JSON")
    p.add_argument("--model", type=Path, required=True, help="model: a .gguf file (gguf) or a model folder")
    p.add_argument("--format", choices=FORMATS, required=True, help="what to write")
    p.add_argument("--out", type=Path, required=True, help="output file (gguf) or folder")
    p.add_argument("--costs", type=Path, default=None, help="cost table, to price the changes the check makes")
    p.add_argument("--target", choices=("compressed-tensors", "vllm"), default="compressed-tensors",
                   help="for compressed-tensors: the library's rules, or vLLM's stricter ones (4/8 bits, fused q/k/v)")
    p.add_argument("--strict", action="store_true", help="refuse a plan the format cannot hold unchanged")
    p.add_argument("--base-type", default="Q8_0", help="gguf: llama-quantize type for tensors the plan leaves out")
    p.add_argument("--imatrix", type=Path, default=None, help="gguf: importance matrix for llama-quantize")
    p.add_argument("--llamacpp-bin", type=Path, default=None, help="gguf: folder of the llama.cpp tools")
    add_quantizer_options(p, what="mpsearch format only; gptq packs the codes GPTQ finds on the calibration windows "
                                  "of --text (default: the plan's own)")
    add_text_options(p, calibration=False)
    p.set_defaults(func=cmd_export)


def _gguf_rows(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return {t.name: int(t.shape[0]) for t in GGUFReader(str(path)).tensors}


def cmd_export(args: argparse.Namespace) -> int:
    from mpsearch.core.costs import CostTable
    from mpsearch.core.errors import ConfigError, DataError
    from mpsearch.core.plan import BitPlan
    from mpsearch.deploy.export_check import check_export

    meta = BitPlan.load(args.plan).meta
    plan = plan_with_quantizer(args, BitPlan.load(args.plan))
    if plan.quantizer.method == "gptq" and args.format != "mpsearch":
        how = "llama-quantize rounds them itself" if args.format == "gguf" else "it holds round-to-nearest weights"
        raise ConfigError(f"--format {args.format} cannot hold GPTQ's weights ({how}), but the plan's quantizer is gptq. "
                          "Pass --quantizer rtn, or --format mpsearch for the packed GPTQ model.")
    costs = CostTable.load(args.costs) if args.costs is not None else None
    if args.format == "gguf":
        from mpsearch.core.io import check_output_file
        from mpsearch.deploy import llamacpp
        from mpsearch.deploy.gguf_export import gguf_name, gguf_types, write_tensor_type_file

        if args.model.suffix.lower() != ".gguf" or not args.model.is_file():
            raise DataError(f"--format gguf quantizes a .gguf file, but --model is {args.model}. Pass the float or "
                            "reference .gguf of the model the plan was made for.")
        check_output_file(args.out)
        tensors = _gguf_rows(args.model)
        tied = "output.weight" not in tensors  # lm_head reads token_embd.weight
        rows = {u: tensors[gguf_name(u, tied=tied)] for u in plan.bits if gguf_name(u, tied=tied) in tensors}
        missing = sorted(set(plan.bits) - set(rows))
        if missing:
            raise DataError(f"every plan unit must be a tensor of {args.model.name}, but {missing[:5]} are not. "
                            "Pass the GGUF file of the model the plan was made for.")
        check = check_export(plan, "gguf", row_lengths=rows, costs=costs, allow_changes=not args.strict)
        print(check.report())
        types, fallbacks = gguf_types(check.plan, rows, tied=tied)
        for f in fallbacks:
            print(f"  {f.tensor}: row length {f.row_length} takes no {f.planned}; written as {f.written}")
        type_file = write_tensor_type_file(types, args.out.with_name(args.out.name + ".tensor-types.txt"))
        llamacpp.quantize(args.model, args.out, args.base_type, tensor_type_file=type_file, imatrix_file=args.imatrix,
                          bin_dir=args.llamacpp_bin)
        print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB) and {type_file.name}")
        return 0
    from torch import nn

    from mpsearch.core.io import check_output_dir
    from mpsearch.zoo.llm import load_causal_lm

    check_output_dir(args.out)
    model, tokenizer = load_causal_lm(args.model)
    if args.format == "mpsearch":
        from mpsearch.cli.llm import gptq_batches, text_file
        from mpsearch.deploy.apply import apply
        from mpsearch.deploy.export import export

        batches, how = gptq_batches(args, tokenizer, text_file(args, meta), meta) if plan.quantizer.method == "gptq" \
            else (None, "round to nearest")
        export(apply(model, plan, batches=batches), plan, args.out)
        print(f"wrote {args.out} ({how})")
        return 0
    from mpsearch.deploy.compressed_tensors_export import export_compressed_tensors
    from mpsearch.space.discover import discover_quietly

    rows = {n: int(m.weight.shape[1]) for n, m in model.named_modules() if n in plan.bits and isinstance(m, nn.Linear)}
    tied = [u.name for u in discover_quietly(model).units if u.tied]
    check = check_export(plan, args.target, row_lengths=rows, costs=costs, allow_changes=not args.strict, tied=tied)
    print(check.report())
    export_compressed_tensors(model, check.plan, args.out, tokenizer=tokenizer)
    print(f"wrote {args.out}")
    return 0
