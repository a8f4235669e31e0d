"""The options of causal language models on the command line: the text, its token windows, the groups.

Kept apart from :mod:`mpsearch.cli.llm` so that building the parser imports neither torch nor
transformers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mpsearch.cli.args import int_at_least

DEFAULT_SEQ_LEN = 256
DEFAULT_WINDOWS = 32
DEFAULT_BATCH = 4
DEFAULT_ESTIMATOR = "token_fisher"


def add_text_options(p: argparse.ArgumentParser, *, calibration: bool) -> None:
    """``--text``, ``--windows``, ``--seq-len`` (and on ``sensitivity`` the quantizer's groups) for causal LMs."""
    p.add_argument("--text", type=Path, default=None,
                   help="causal LM: UTF-8 text, one paragraph a line; lines whose index %% 10 == 9 are held out for "
                        "evaluation, the others calibrate (default: python_docs_prose.txt of the data folder"
                        + ("" if calibration else ", else the text the plan records") + ")")
    p.add_argument("--windows", type=int_at_least(1, "--windows", DEFAULT_WINDOWS), default=None,
                   help=f"causal LM: calibration windows of --seq-len tokens, drawn with --seed from the calibration "
                        f"lines (default: {DEFAULT_WINDOWS}" + ("" if calibration else "; only GPTQ calibrates here, "
                        "by default on the windows the plan records") + ")")
    p.add_argument("--seq-len", type=int_at_least(2, "--seq-len", DEFAULT_SEQ_LEN), default=None,
                   help=f"causal LM: tokens per window (default: {DEFAULT_SEQ_LEN}"
                        + ("" if calibration else ", else the plan's") + ")")
    if calibration:
        p.add_argument("--group-size", type=int_at_least(1, "--group-size", 128), default=None,
                       help="causal LM: one scale and zero-point per G consecutive inputs of a row (affine, fp16 scale, "
                            "8-bit zero: 24 / G bits per weight); the table then prices every group (default: one "
                            "scale per output row)")
        p.add_argument("--granularity", choices=("group", "layer"), default=None,
                       help="causal LM with --group-size: one width per group (default) or one per layer")
    else:
        p.add_argument("--seed", type=int, default=None,
                       help="causal LM, GPTQ: seed of the calibration windows (default: the plan's, else 0)")


__all__ = ["DEFAULT_BATCH", "DEFAULT_ESTIMATOR", "DEFAULT_SEQ_LEN", "DEFAULT_WINDOWS", "add_text_options"]
