"""Causal language models on the command line: ``--model FOLDER|FILE.gguf`` with ``--text FILE``.

    mpsearch sensitivity --model smollm2/ --text prose.txt --group-size 128 --out costs.json
    mpsearch search --costs costs.json --budget 3.1875 --solver slim --out plan.json
    mpsearch evaluate --model smollm2/ --plan plan.json [--quantizer gptq]

``--model`` names a causal LM when it is a folder holding ``config.json`` or a ``.gguf`` file (a
path that exists, or any name ending in .gguf); the built-in CIFAR ResNets keep their names.
The text is split as :mod:`mpsearch.zoo.text` splits the prose corpus: lines whose index % 10 is
9 are held out for evaluation, the others calibrate. Token windows are non-overlapping slices of
the tokenized stream; the cost table (and so every plan solved from it) records the text, the
window count, their length and the seed, so ``evaluate`` draws GPTQ's calibration windows again
from the same lines.

Searched units are every ``nn.Linear`` except ``lm_head`` (often tied to the token embedding,
kept in float as GPTQ-family tools keep it); no unit is pinned. The quantizer is affine, with one
fp16 scale and an 8-bit zero-point per ``--group-size`` inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpsearch.cli.llm_args import DEFAULT_BATCH, DEFAULT_ESTIMATOR, DEFAULT_SEQ_LEN, DEFAULT_WINDOWS

CNN_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56")
_PARTS = {"calibration": "whose index % 10 != 9", "evaluation": "whose index % 10 == 9"}


def is_causal_lm(model: Any) -> bool:
    """True for a ``.gguf`` name or any path (an existing file or folder, or a name with a folder part);
    False for the zoo's names, which then say which names they know."""
    if model is None or str(model) in CNN_MODELS:
        return False
    text = str(model)
    path = Path(text).expanduser()
    return path.suffix.lower() == ".gguf" or path.exists() or "/" in text or os.sep in text or text.startswith(("~", "."))


def recorded_lm(plan_file: Any) -> str | None:
    """The causal LM a plan file records (its cost table's ``--model``), announced on stderr; None otherwise."""
    if plan_file is None or not Path(plan_file).is_file():
        return None
    from mpsearch.core.plan import BitPlan

    meta = BitPlan.load(plan_file).meta
    if meta.get("model_kind") != "causal_lm" or not isinstance(meta.get("model"), str):
        return None
    print(f"note: using the model the plan records (--model {meta['model']})", file=sys.stderr)
    return meta["model"]


def refuse_cnn_options(args: argparse.Namespace, command: str) -> None:
    """CIFAR-only flags given with a causal LM are refused, not ignored."""
    from mpsearch.core.errors import ConfigError

    given = [flag for flag, attr in (("--calib", "calib"), ("--model-file", "model_file"), ("--trust-pickle", "trust_pickle"),
                                     ("--no-pins", "no_pins"), ("--bias-correction", "bias_correction"))
             if getattr(args, attr, None) not in (None, False)]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to the CIFAR models, but --model {args.model} is a causal LM. "
                          f"Drop {', '.join(given)} (`mpsearch {command} --help` lists the causal-LM options).")


def refuse_llm_options(args: argparse.Namespace) -> None:
    """Causal-LM flags given with a CIFAR model are refused, not ignored."""
    from mpsearch.core.errors import ConfigError

    given = [flag for flag, attr in (("--text", "text"), ("--windows", "windows"), ("--seq-len", "seq_len"),
                                     ("--group-size", "group_size"), ("--granularity", "granularity"))
             if getattr(args, attr, None) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to causal LMs, but --model {args.model} is a CIFAR model. Pass "
                          "--model FOLDER (holding config.json) or FILE.gguf, or drop them.")


def load_lm(model: Any, *, quiet: bool = False):
    """``(model, tokenizer)`` from the folder or GGUF file, offline (``quiet``: without transformers' loading bar)."""
    from mpsearch.zoo.llm import load_causal_lm

    if quiet:
        from transformers.utils import logging

        logging.disable_progress_bar()
    return load_causal_lm(Path(str(model)))


def text_file(args: argparse.Namespace, meta: Mapping[str, Any] | None = None) -> Path:
    """``--text``, else the text the plan records, else ``python_docs_prose.txt`` of the data folder."""
    from mpsearch.core.errors import ConfigError
    from mpsearch.zoo.data import default_data_dir
    from mpsearch.zoo.text import PROSE_FILE

    if args.text is not None:
        return Path(args.text).expanduser()
    recorded = (meta or {}).get("text")
    if isinstance(recorded, str):
        print(f"note: using the text the plan records (--text {recorded})", file=sys.stderr)
        return Path(recorded)
    data_dir = args.data_dir if getattr(args, "data_dir", None) is not None else default_data_dir()
    if data_dir is not None and (Path(data_dir) / PROSE_FILE).is_file():
        return Path(data_dir) / PROSE_FILE
    raise ConfigError(f"a causal LM is calibrated and evaluated on text, but no --text was given and the data folder "
                      f"({data_dir or 'none: no --data-dir, no MPSEARCH_DATA_DIR'}) holds no {PROSE_FILE}. Pass --text FILE "
                      "(UTF-8, one paragraph a line).")


def windows_from(tokenizer: Any, path: Path, part: str, *, seq_len: int, n: int | None, seed: int):
    """Token windows (n, seq_len) from one part of the text, refused in the flags' own terms when it is too short."""
    from mpsearch.core.errors import DataError
    from mpsearch.zoo.text import read_paragraphs, split_lines, text_windows, token_stream

    try:
        lines = split_lines(read_paragraphs(path), part)
    except UnicodeDecodeError as err:
        raise DataError(f"--text must be UTF-8 text, but {path} is not ({err.reason} at byte {err.start:,}). Pass a "
                        "plain-text file, one paragraph a line.") from None
    if not lines:
        raise DataError(f"--text must hold {part} lines (lines {_PARTS[part]}), but {path} has none. Pass a text of at "
                        "least 10 non-blank lines: every tenth one is held out for evaluation.")
    tokens = len(token_stream(tokenizer, lines))
    available = tokens // seq_len
    if available == 0 or (n is not None and n > available):
        fix = f"--windows {available}, " if available and n is not None else ""
        raise DataError(f"--text must give {n or 1} window(s) of --seq-len {seq_len} tokens from its {part} lines "
                        f"(lines {_PARTS[part]}), but those of {path.name} make {tokens:,} tokens: {available} window(s). "
                        f"Pass {fix}a smaller --seq-len or a longer text.")
    return text_windows(tokenizer, lines, seq_len, n, seed=seed)


def _recorded_int(meta: Mapping[str, Any], key: str, default: int) -> int:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def window_settings(args: argparse.Namespace, meta: Mapping[str, Any]) -> tuple[int, int, int]:
    """(seq_len, calibration windows, seed): the flags, else what the table or plan records, else the defaults."""
    seq_len = args.seq_len or _recorded_int(meta, "seq_len", DEFAULT_SEQ_LEN)
    windows = args.windows or _recorded_int(meta, "windows", DEFAULT_WINDOWS)
    seed = args.seed if args.seed is not None else meta.get("seed", 0) if isinstance(meta.get("seed"), int) else 0
    return seq_len, windows, seed


def calibration(args: argparse.Namespace, tokenizer: Any, text: Path, meta: Mapping[str, Any]):
    """The ``Calibration`` of a causal LM: windows of the calibration lines, a few a batch."""
    from mpsearch.sensitivity.calibration import Calibration

    seq_len, n, seed = window_settings(args, meta)
    windows = windows_from(tokenizer, text, "calibration", seq_len=seq_len, n=n, seed=seed)
    return Calibration.causal_lm(windows, batch_size=getattr(args, "batch_size", None) or DEFAULT_BATCH)


def run_llm_sensitivity(args: argparse.Namespace, checkpoint: Path) -> int:
    """Score a causal LM on its calibration windows and write the cost table (group items with --group-size)."""
    from mpsearch.cli.inputs import build_estimator, parse_bits
    from mpsearch.core.config import RECOMMENDED
    from mpsearch.core.errors import ConfigError
    from mpsearch.pricing.tables import build_cost_table
    from mpsearch.space.discover import discover_quietly

    refuse_cnn_options(args, "sensitivity")
    if args.granularity is not None and args.group_size is None:
        raise ConfigError(f"--granularity {args.granularity} chooses between group and layer items of a grouped "
                          "quantizer, but no --group-size was given. Pass e.g. --group-size 128.")
    name = args.estimator = args.estimator or DEFAULT_ESTIMATOR
    estimator = build_estimator(args, checkpoint, mode="block")  # flags it does not take are refused before loading
    bits = parse_bits(args.bits)
    text = text_file(args)
    model, tokenizer = load_lm(args.model, quiet=args.quiet)
    seq_len, n, seed = window_settings(args, {})
    calib = calibration(args, tokenizer, text, {})
    quantizer = dataclasses.replace(RECOMMENDED, group_size=args.group_size)  # affine, MSE-clipped ranges
    space = discover_quietly(model, bits=bits, pin_first_last=None, exclude=["lm_head"], quantizer=quantizer)
    meta = {"model": str(args.model), "model_kind": "causal_lm", "text": str(text), "windows": n, "seq_len": seq_len,
            "seed": seed, "calibration": n}
    grouped = args.group_size is not None and args.granularity != "layer"
    print(f"{len(space)} linear units of {args.model}, {n} calibration windows of {seq_len} tokens from {text.name}",
          file=sys.stderr)
    if name in ("token_fisher", "xtx"):  # the error-weighted recipe: exact per-weight costs, not a group mean times an error
        import time

        from mpsearch.pricing.recipes import error_weighted_costs, input_values, token_fisher_values
        from mpsearch.pricing.tables import cost_table_from_groups, cost_table_from_space

        start = time.perf_counter()
        if name == "xtx":
            values = input_values(model, calib, space, mode="block", progress=not args.quiet)
        else:
            values = token_fisher_values(model, calib, space, progress=not args.quiet)
        seconds = time.perf_counter() - start
        groups, units = error_weighted_costs(model, space, values)
        del values
        info = {"estimator": name, "recipe": "error-weighted", "estimator_seconds": seconds, **meta}
        if name == "token_fisher":
            from mpsearch.sensitivity.token_fisher import SKIP_FIRST

            info["skip_first"] = SKIP_FIRST  # positions of each window left out of the Fisher
        costs = cost_table_from_groups(space, groups, meta=info) if grouped else cost_table_from_space(space, units, meta=info)
    else:
        sens = estimator.estimate(model, calib, space)
        seconds = sens.seconds
        costs = build_cost_table(model, space, sens, meta=meta, granularity="auto" if grouped else "layer")
    costs.save(args.out)
    items = f"{costs.n_items:,} groups" if costs.meta.get("granularity") == "group" else f"{costs.n_items} layers"
    print(f"{len(space)} units ({items}), {name}, {seconds:.1f} s -> {args.out}")
    return 0


def gptq_batches(args: argparse.Namespace, tokenizer: Any, text: Path, meta: Mapping[str, Any]) -> tuple[Any, str]:
    """GPTQ's calibration batches (the calibration windows the table was scored on, by default) and their description."""
    calib = calibration(args, tokenizer, text, meta)
    seq_len, n, seed = window_settings(args, meta)
    return calib.batches, f"GPTQ on {n} calibration windows of {seq_len} tokens (seed {seed})"


def measured(model: Any, reference: Any, windows: Any, *, quiet: bool, chunk: int = 8) -> tuple[float, float | None]:
    """(perplexity of ``model``, mean logit KL from ``reference`` or None) over ``windows``, a few windows at a
    time under a progress bar: per-chunk NLLs weighted by their tokens and KLs by their positions give
    the same figures as :func:`~mpsearch.deploy.lm_metrics.perplexity` and ``logit_kl`` on all windows at once."""
    import math

    from tqdm.auto import tqdm

    from mpsearch.deploy.lm_metrics import logit_kl, perplexity

    nll = tokens = kl = 0.0
    for start in tqdm(range(0, len(windows), chunk), desc="held-out windows", disable=quiet, leave=False):
        part = windows[start:start + chunk]
        score = perplexity(model, part)
        nll, tokens = nll + score.nll * score.tokens, tokens + score.tokens
        if reference is not None:
            kl += logit_kl(reference, model, part) * len(part)
    return math.exp(nll / tokens), (kl / len(windows) if reference is not None else None)


def run_llm_evaluate(args: argparse.Namespace) -> int:
    """Perplexity and mean next-token KL from the float model on the held-out windows of the text."""
    from mpsearch.cli.quantizer import describe, plan_with_quantizer
    from mpsearch.core.errors import ConfigError
    from mpsearch.core.plan import BitPlan
    from mpsearch.deploy.evaluate import fake_quantize_model, plan_size
    refuse_cnn_options(args, "evaluate")
    plan = BitPlan.load(args.plan) if args.plan is not None else None
    if plan is None and (args.quantizer or args.act_order or args.damp is not None):
        raise ConfigError("--quantizer, --act-order and --damp round a plan's weights, but no --plan was given. "
                          "Pass --plan PATH, or drop them for the float model.")
    meta = plan.meta if plan is not None else {}
    plan = plan_with_quantizer(args, plan) if plan is not None else None
    text = text_file(args, meta)
    model, tokenizer = load_lm(args.model, quiet=args.quiet)
    seq_len = args.seq_len or _recorded_int(meta, "seq_len", DEFAULT_SEQ_LEN)
    held_out = windows_from(tokenizer, text, "evaluation", seq_len=seq_len, n=None, seed=0)[: args.limit]
    which = (f"{len(held_out)} held-out windows of {seq_len} tokens ({len(held_out) * (seq_len - 1):,} predicted tokens; "
             f"lines {_PARTS['evaluation']} of {text})")
    reference = measured(model, None, held_out, quiet=args.quiet)[0]
    if plan is None:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"perplexity {reference:.3f} on {which}; float, {n_params:,} parameters")
        return 0
    batches, how = gptq_batches(args, tokenizer, text, meta) if plan.quantizer.method == "gptq" else (None, "rtn")
    quantized = fake_quantize_model(model, plan, batches=batches)
    score, kl = measured(quantized, model, held_out, quiet=args.quiet)
    size = plan_size(model, plan)
    print(f"perplexity {score:.3f} (float {reference:.3f}), mean logit KL {kl:.4g} nats, on {which}; "
          f"quantizer {describe(plan.quantizer)}{'' if how == 'rtn' else '; ' + how}; {size.average_bits:.3f} bits/weight "
          f"(scales included); {size.total_bytes / 2**20:.2f} MiB in all ({size.quantized_bytes / 2**20:.2f} MiB quantized, "
          f"{size.float_bytes / 2**20:.2f} MiB float)")
    return 0


__all__ = ["CNN_MODELS", "calibration", "gptq_batches", "is_causal_lm", "load_lm", "measured", "refuse_cnn_options",
           "refuse_llm_options", "run_llm_evaluate", "run_llm_sensitivity", "text_file", "window_settings", "windows_from"]
