"""What several commands share: the model to load, the estimator to build, the images to use, and
warnings printed as one line on stderr."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_ESTIMATOR = "fisher"
#: The registered estimators (mpsearch.sensitivity.base.ESTIMATORS), named here so that parsing the
#: command line does not import torch; a test keeps the two equal.
ESTIMATOR_NAMES = ("first_order", "fisher", "gwq", "hessian", "hessian_diag", "hessian_eig", "lim", "lrp", "obs",
                   "obs_block", "token_fisher", "xtx", "zeroq", "zeroq_bc", "zscore")
HESSIAN_DEFAULTS = {"tol": 0.1, "max_probes": 200}
DEFAULT_CALIB = 256

ESTIMATOR_HELP = (
    "sensitivity estimator, any registered name: {names} (default: {default}; for a causal LM token_fisher, "
    "the token-level Fisher diagonal mean_t (dl/dy_t)^2 x_t^2 on the loss scale, priced per group as "
    "sum_j s_j (Q(W) - W)_j^2 and solved globally; xtx, the mean squared input of each weight's column, is "
    "forward-only and runs one decoder block at a time, but its scores are not on one scale across layers: "
    "solve it with --solver slim). The default is the best "
    "cheap one in the fidelity study (docs/estimators.md, 'How well they predict real damage'): fisher ranks "
    "the units of ResNet-20/56 by their real 2-bit damage with Spearman 0.85/0.63 and its 3-bit plans reach "
    "86.4/89.7 %% top-1, in 6-11 s; first_order is as cheap and close (0.86/0.57, 86.7/88.5 %%, 2.5-4 s) but "
    "behind on the deeper network. hessian (the HAWQ trace) takes 165-268 s for 87.2/90.6 %% and needs its "
    "probes: stopped early by --time-limit it can plan worse than uniform quantization. Scores that ignore "
    "the loss (zscore, lim, lrp) rank units poorly."
)


def parse_bits(text: str) -> tuple[int, ...]:
    """``--bits 2,3,4,8`` as a tuple of ints."""
    from mpsearch.core.errors import BitsOutOfRangeError

    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise BitsOutOfRangeError(f"--bits must be a comma list of integers, but got {text!r}. Pass e.g. --bits 2,3,4,8.") from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model-file`` and ``--trust-pickle``: the user's own checkpoint instead of the zoo's."""
    p.add_argument("--model-file", type=Path, default=None,
                   help="your own checkpoint: a torch state_dict of a CIFAR ResNet of --model's depth (a whole "
                        "pickled module only with --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let --model-file be a pickled module; loading one runs code named in the file")


def model_file_of(args: argparse.Namespace, meta: Mapping[str, Any] | None = None) -> Path | None:
    """``--model-file``, else the one a cost table or plan records (its model was that file, not the zoo's)."""
    if args.model_file is not None:
        return Path(args.model_file)
    recorded = (meta or {}).get("model_file")
    if isinstance(recorded, str):
        print(f"note: using the model file the input records (--model-file {recorded})", file=sys.stderr)
        return Path(recorded)
    return None


def load_model(args: argparse.Namespace, model: str, data_dir: Any, meta: Mapping[str, Any] | None = None):
    """The zoo's pretrained ``model``, or the ``--model-file`` checkpoint of that architecture."""
    from mpsearch.core.errors import ConfigError

    path = model_file_of(args, meta)
    if path is None:
        if args.trust_pickle:
            raise ConfigError("--trust-pickle applies to --model-file only, but no --model-file was given. "
                              "Pass --model-file PATH or drop --trust-pickle.")
        from mpsearch.zoo.models import load_pretrained

        return load_pretrained(model, data_dir)
    from mpsearch.zoo.checkpoints import load_model_file

    return load_model_file(path, model, trust_pickle=args.trust_pickle)


def model_meta(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """What a cost table records of its model: the name, and the file when it was the user's."""
    return {"model": model, **({"model_file": str(args.model_file)} if args.model_file is not None else {})}


def build_estimator(args: argparse.Namespace, checkpoint: Path, *, mode: str = "whole"):
    """The ``--estimator`` (default fisher), with the options that apply to it; Hessian-only flags elsewhere,
    and ``--time-limit`` for an estimator that makes one pass and cannot stop early, are refused. ``mode``
    goes to the estimators that score one decoder block at a time or the whole model (xtx, obs_block)."""
    import inspect

    from mpsearch.core.errors import ConfigError
    from mpsearch.sensitivity.base import ESTIMATORS, get_estimator

    name = args.estimator or DEFAULT_ESTIMATOR
    given = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in HESSIAN_DEFAULTS if getattr(args, k) is not None]
    if name != "hessian" and given:
        raise ConfigError(f"--tol and --max-probes set the Hessian's probing, but --estimator {name} was "
                          f"given with {', '.join(given)}. Drop them, or pass --estimator hessian.")
    options: dict[str, Any] = {"seed": args.seed, "progress": not args.quiet}
    accepted = inspect.signature(ESTIMATORS.get(name)).parameters
    if "mode" in accepted:
        options["mode"] = mode
    if "time_limit" in accepted:
        options["time_limit"] = args.time_limit
    elif args.time_limit is not None:
        raise ConfigError(f"--time-limit stops an estimate that samples or iterates, but --estimator {name} makes one "
                          f"pass over the calibration data and cannot stop early; got --time-limit {args.time_limit:g}. "
                          "Drop --time-limit, or pass fewer --windows.")
    if name == "hessian":  # the only estimator that checkpoints its probes
        options.update({k: v if (v := getattr(args, k)) is not None else d for k, d in HESSIAN_DEFAULTS.items()},
                       checkpoint=checkpoint)
    return get_estimator(name, **options)


def calibration_count(args: argparse.Namespace, meta: Mapping[str, Any] | None) -> int:
    """``--calib``, else the calibration size the cost table or plan records, else 256."""
    if args.calib is not None:
        return int(args.calib)
    recorded = (meta or {}).get("calibration")
    return recorded if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 0 else DEFAULT_CALIB


def with_bias_correction(model, plan, x_calib):
    """``plan`` carrying its units' mean output shifts measured on ``x_calib`` (Nagel et al. 2019)."""
    from mpsearch.deploy.bias_correction import measure_bias_correction

    return plan.with_bias_correction(measure_bias_correction(model, plan, [x_calib]))


def bias_corrected_for_table(args: argparse.Namespace, data_dir: Any, meta: Mapping[str, Any], plan):
    """``plan`` with bias corrections measured on the cost table's calibration images (the first
    ``--calib``, by default as many as the table records) of its model (``--model``, by default the
    table's)."""
    from mpsearch.zoo.data import load_cifar10_split

    model_name = args.model or (meta.get("model") if isinstance(meta.get("model"), str) else None) or "resnet20"
    data = load_cifar10_split(data_dir, calibration_count(args, meta), min_eval=0, what="--calib")
    model = load_model(args, model_name, data_dir, meta)
    corrected = with_bias_correction(model, plan, data.x_calib)
    source = "the embedded test set" if data.source == "embedded" else data.source
    print(f"bias correction of {len(corrected.bias_correction)} units measured on images 0-{data.n_calib - 1} of "
          f"{source} ({model_name})", file=sys.stderr)
    return corrected


@contextlib.contextmanager
def warnings_on_stderr(command: str) -> Iterator[None]:
    """Print mpsearch's warnings as one line each, ``mpsearch CMD: warning: ...``, when they happen."""
    from mpsearch.core.errors import FloatModulesWarning, MPSearchWarning

    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, (MPSearchWarning, FloatModulesWarning)):
                print(f"mpsearch {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATOR_HELP",
    "ESTIMATOR_NAMES",
    "add_model_options",
    "bias_corrected_for_table",
    "build_estimator",
    "calibration_count",
    "load_model",
    "model_meta",
    "parse_bits",
    "warnings_on_stderr",
    "with_bias_correction",
]
