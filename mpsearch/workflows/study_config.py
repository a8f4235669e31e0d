"""Run a :class:`~mpsearch.workflows.study.Study` from a TOML file (``mpsearch study CONFIG.toml``).

Example config (every key but ``model`` has a default)::

    model = "resnet20"            # resnet20 (embedded), resnet32, resnet44, resnet56
    data_dir = "DATA"   # a folder with cifar10_test.npz and the checkpoints; omit for the embedded 1,000 images
    out_dir = "study-resnet20"
    calibration = 512             # the first N images calibrate; the rest are evaluated
    eval_limit = 0                # evaluate at most this many of the rest (0 = all)
    estimators = ["hessian"]
    solvers = ["ilp"]
    budgets = [2.5, 3.0, 3.5, 4.0]
    uniform = [8, 4, 3, 2]
    bits = [2, 3, 4, 8]
    activation_bits = 8           # omit for fp32 activations
    seed = 0

    [quantizer]                   # QuantizerConfig fields; default per-channel affine + MSE clipping
    scheme = "affine"

    [estimator_options.hessian]   # keyword arguments per estimator
    max_probes = 200
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mpsearch.core.errors import ConfigError

KNOWN_KEYS = {
    "model", "data_dir", "out_dir", "calibration", "eval_limit", "estimators", "solvers", "budgets", "uniform",
    "bits", "activation_bits", "seed", "quantizer", "estimator_options", "calibration_batch", "title",
}


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a study config; unknown keys are an error (they are usually typos)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    example = "the example at the top of mpsearch/workflows/study_config.py"
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except OSError as err:
        raise ConfigError(
            f"a study config must be a readable file, but {str(path)!r} is not: {err.strerror or err}. "
            f"Check the path, or write a config like {example}."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"a study config must be UTF-8 TOML text, but {str(path)!r} is binary. Pass the TOML file ({example})."
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"a study config must be valid TOML, but {str(path)!r} is not: {err}. Fix the syntax there ({example})."
        ) from None
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"study config keys must be among {sorted(KNOWN_KEYS)}, but got unknown {unknown}. Fix the spelling.")
    if "model" not in config:
        raise ConfigError("a study config must name a `model`, but none is given. Add e.g. model = \"resnet20\".")
    for key in ("estimators", "solvers", "budgets", "uniform", "bits"):
        if key in config and not isinstance(config[key], list):
            raise ConfigError(f"`{key}` must be a list, but got {config[key]!r}. Write it in brackets, e.g. {key} = [{config[key]!r}].")
    return config


def run_config(path: str | os.PathLike[str], *, progress: bool = True):
    """Run the study a config describes; returns the results table (also in ``out_dir``)."""
    import torch

    from mpsearch.core.config import RECOMMENDED, QuantizerConfig
    from mpsearch.kernels.activations import calibrate_ranges
    from mpsearch.sensitivity.base import get_estimator
    from mpsearch.sensitivity.calibration import Calibration
    from mpsearch.space.discover import DEFAULT_BITS, discover
    from mpsearch.workflows.study import Study
    from mpsearch.zoo.data import load_cifar10_split
    from mpsearch.zoo.eval import accuracy
    from mpsearch.zoo.models import load_pretrained

    cfg = load_config(path)
    base = Path(path).resolve().parent
    data_dir = cfg.get("data_dir")
    if data_dir is not None and not os.path.isabs(data_dir):
        data_dir = str(base / data_dir)
    out_dir = Path(cfg.get("out_dir", "study-out"))
    if not out_dir.is_absolute():
        out_dir = base / out_dir
    torch.manual_seed(int(cfg.get("seed", 0)))
    data = load_cifar10_split(data_dir, cfg.get("calibration", 256), eval_limit=cfg.get("eval_limit") or None,
                              what="calibration")
    x_eval, y_eval = data.x_eval, data.y_eval
    model = load_pretrained(cfg["model"], data_dir)
    quantizer = QuantizerConfig.from_dict(cfg["quantizer"]) if "quantizer" in cfg else RECOMMENDED
    space = discover(model, bits=tuple(cfg.get("bits", DEFAULT_BITS)), quantizer=quantizer)
    calib = Calibration.classification(data.x_calib, data.y_calib, batch_size=int(cfg.get("calibration_batch", 64)))
    options = cfg.get("estimator_options", {})
    estimators = [get_estimator(name, **{"progress": progress, **options.get(name, {})}) for name in cfg.get("estimators", ["hessian"])]
    act = cfg.get("activation_bits")
    ranges = calibrate_ranges(model, [b[0] for b in calib.batches], space.names) if act is not None else None
    study = Study(
        model=model, calibration=calib, space=space, metric=lambda m: accuracy(m, x_eval, y_eval),
        estimators=estimators, solvers=cfg.get("solvers", ["ilp"]), budgets=cfg.get("budgets", [3.0]),
        uniform=cfg.get("uniform", []), out_dir=out_dir, metric_name="top-1 %", progress=progress,
        activation_bits=act, activation_ranges=ranges,
    )
    frame = study.run()
    fp32 = accuracy(model, x_eval, y_eval)
    suffix = f"W/A{act}" if act is not None else "weights only"
    study.plot(out_dir / "study.png", frame=frame, reference=fp32,
               title=cfg.get("title", f"{cfg['model']}: {len(x_eval)} held-out CIFAR-10 images, {suffix}"))
    return frame, fp32, out_dir
