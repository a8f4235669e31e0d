"""Calibration data checked against the model before an estimator starts.

The tensors themselves are checked when a :class:`Calibration` is built
(:mod:`mpsearch.sensitivity._input_checks`). :func:`check_against_model` runs before every estimator (the base class wraps
each subclass's ``estimate``): one forward pass of the loss on the first two samples, so a batch
the model cannot take is reported in a second, not after minutes of probes.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mpsearch.core.errors import ConfigError, DataError, MPSearchError
from mpsearch.sensitivity._attention import estimate_guard
from mpsearch.sensitivity._input_checks import FIX_IMAGES, shape_of
from mpsearch.sensitivity.calibration import Calibration, cross_entropy
from mpsearch.space.hooks import model_mode

_checking: contextvars.ContextVar[bool] = contextvars.ContextVar("mpsearch_calibration_checked", default=False)


def _head(batch: Any, n: int = 2) -> Any:
    """The first ``n`` samples of a batch of tensors (a tensor, a tuple/list or a dict of them)."""
    parts = list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (tuple, list)) else [batch]
    if not parts or not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in parts) or len({len(t) for t in parts}) != 1:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: v[:n] for k, v in batch.items()}
    return type(batch)(t[:n] for t in batch)


def check_against_model(model: nn.Module, data: Calibration) -> None:
    """One forward pass of the loss on the first samples; a failure or a non-finite loss is a DataError."""
    first = data.batches[0]
    x = first[0] if isinstance(first, (tuple, list)) and first else first
    head = _head(first)
    try:
        with model_mode(model), torch.no_grad():  # eval: no batch-norm statistics change during the check
            if data.loss_fn is cross_entropy:  # one output row per sample, and every label names an output
                out = model(head[0])
                if out.ndim != 2 or len(out) != len(head[0]):
                    raise DataError(f"a classifier must give (samples, classes) outputs, but {type(model).__name__} gives "
                                    f"{tuple(out.shape)} for inputs {tuple(head[0].shape)}. {FIX_IMAGES}")
                top = max(int(y.max()) for _, y in data.batches)
                if top >= out.shape[1]:
                    raise DataError(f"calibration labels must be below the model's {out.shape[1]} outputs, but the "
                                    f"largest is {top}. Pass labels of this model's task (0..{out.shape[1] - 1}).")
            loss = data.loss_fn(model, head)
    except MPSearchError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        conv = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
        if isinstance(conv, nn.Conv2d) and isinstance(x, torch.Tensor) and x.ndim != 4:  # the likely cause
            raise DataError(f"calibration inputs of a model whose first convolution is a Conv2d must be 4-D "
                            f"(N, C, H, W), but got shape {tuple(x.shape)} ({reason}). {FIX_IMAGES}") from None
        raise DataError(f"calibration batches must fit the model, but {type(model).__name__} fails on the first "
                        f"samples (inputs {shape_of(x)}): {reason}. {FIX_IMAGES}") from None
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None
    if value is None or not math.isfinite(value):
        raise DataError(f"the calibration loss must be a finite number, but is {loss if value is None else value} on the "
                        "first samples. Check the inputs and the model's weights for NaN or overflow.")


def refuse_embedding_units(estimator: Any, model: nn.Module, space: Any) -> None:
    """An estimator without ``embeddings`` support refuses a space whose units include an embedding table."""
    if getattr(estimator, "embeddings", True) or not hasattr(space, "units"):
        return
    named = dict(model.named_modules())
    tables = [u.name for u in space.units if isinstance(named.get(u.name), nn.Embedding)]
    if tables:
        raise ConfigError(f"the {estimator.name} estimator scores layers that multiply their inputs by a weight matrix, but "
                          f"the space holds embedding unit(s) {tables}, whose rows are looked up. Use a gradient estimator "
                          "(token_fisher, fisher, first_order, hessian_diag), or discover the space without embeddings=True.")


def checked(estimate: Callable) -> Callable:
    """Wrap an estimator's ``estimate`` so the data is checked once, before any work (nested calls skip it)."""

    @functools.wraps(estimate)
    def wrapper(self, model, data, space, *args, **kwargs):
        if _checking.get():
            return estimate(self, model, data, space, *args, **kwargs)
        if not isinstance(data, Calibration):
            raise DataError(f"`data` must be a Calibration, but got {type(data).__name__}. "
                            "Build one with Calibration.classification(inputs, labels).")
        check_against_model(model, data)
        refuse_embedding_units(self, model, space)
        token = _checking.set(True)
        try:
            with estimate_guard(self, model, data, space):  # double backward: differentiable attention, memory warning
                return estimate(self, model, data, space, *args, **kwargs)
        finally:
            _checking.reset(token)

    wrapper.__mpsearch_checked__ = True  # type: ignore[attr-defined]
    return wrapper
