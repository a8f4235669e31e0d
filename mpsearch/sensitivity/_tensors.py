"""Small tensor helpers shared by the estimators: group reductions, batch slicing, parameter access.

Kept apart from :mod:`mpsearch.sensitivity.base` so that the interface module stays short.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.core.config import QuantizerConfig, group_sizes
from mpsearch.core.errors import DataError
from mpsearch.kernels.quantize import num_groups, weight_matrix
from mpsearch.space.discover import SearchSpace
from mpsearch.space.hooks import model_mode


class Deadline:
    """A wall-clock limit: ``expired()`` is True once ``seconds`` have passed (never, for None)."""

    def __init__(self, seconds: float | None) -> None:
        import time

        if seconds is not None and not seconds > 0:
            raise DataError(f"`time_limit` must be positive seconds or None, but got {seconds!r}.")
        self._clock = time.perf_counter
        self.end = None if seconds is None else self._clock() + float(seconds)
        self.hit = False

    def expired(self) -> bool:
        if self.end is not None and self._clock() >= self.end:
            self.hit = True
        return self.hit


def group_reduce(per_weight: torch.Tensor, config: QuantizerConfig, how: str = "mean") -> np.ndarray:
    """Reduce a (out, fan_in) per-weight tensor to (out, n_blocks) per group of G inputs.

    ``how="mean"`` divides by each group's true size (the last block of a row may be
    partial); ``how="sum"`` adds. Computed in float64.

    >>> group_reduce(torch.arange(6.).reshape(1, 6), QuantizerConfig(group_size=4), "sum").tolist()
    [[6.0, 9.0]]
    """
    out, fan_in = per_weight.shape
    n = num_groups(fan_in, config)
    width = fan_in if n == 1 else int(config.group_size)  # type: ignore[arg-type]
    padded = F.pad(per_weight.detach().double(), (0, n * width - fan_in)).reshape(out, n, width)
    sums = padded.sum(dim=2)
    if how == "sum":
        return sums.numpy()
    return (sums / torch.from_numpy(group_sizes(fan_in, config)).double()).numpy()


def unit_reduce(per_weight: Sequence[torch.Tensor], space: SearchSpace) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """Per-unit means and (when the space's quantizer has a group size) per-group means.

    ``per_weight[i]`` has the shape of unit i's weight tensor; it is viewed as
    the unit's (out, fan_in) matrix exactly as the quantizer views the weight.
    """
    return scores_and_groups(space, [reduce_matrix(weight_matrix(v.detach(), u.kind), space.quantizer)
                                     for u, v in zip(space.units, per_weight)])


def reduce_matrix(mat: torch.Tensor, quantizer: QuantizerConfig) -> tuple[float, np.ndarray | None]:
    """One unit's mean and (when ``quantizer`` has a group size) its per-group means, from its (out, fan_in) values.

    Estimators that produce one unit's per-weight values at a time reduce them at once with this,
    so the per-weight values of the whole model never sit in memory together.
    """
    mat = mat.detach().cpu()
    return float(mat.double().mean()), (group_reduce(mat, quantizer, "mean") if quantizer.group_size is not None else None)


def scores_and_groups(space: SearchSpace, reduced: Sequence[tuple[float, np.ndarray | None] | None]
                      ) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """``Sensitivity.scores`` and ``group_scores`` from each unit's :func:`reduce_matrix` (None: the unit is left out)."""
    kept = [(u.name, r) for u, r in zip(space.units, reduced) if r is not None]
    groups = {name: r[1] for name, r in kept} if space.quantizer.group_size is not None else None
    return {name: r[0] for name, r in kept}, groups


def batch_length(batch: Any) -> int:
    """The number of samples of a batch (tensor, tuple/list or dict of tensors)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return batch_length(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return batch_length(batch[0])
    raise DataError(f"a calibration batch must be a tensor, a tuple/list or a dict of tensors, but got {type(batch).__name__}. "
                    "Pass batches of tensors with the samples along dimension 0.")


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a batch; every tensor is sliced along dimension 0."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {k: slice_batch(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(v, start, stop) for v in batch)
    return batch


@contextmanager
def params_requiring_grad(params: Sequence[torch.Tensor], flag: bool = True) -> Iterator[None]:
    """``requires_grad = flag`` on ``params`` for the block; each parameter's own flag restored after."""
    saved = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in saved:
            p.requires_grad_(flag)
        yield
    finally:
        for p, was in saved:
            p.requires_grad_(was)


@contextmanager
def weights_requiring_grad(model: nn.Module, params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Eval mode and ``requires_grad`` on ``params`` for the block; both restored after.

    Gradients are taken with :func:`torch.autograd.grad`, so no ``.grad`` is ever written.
    """
    with model_mode(model), params_requiring_grad(params):
        yield


def grads_or_zeros(loss: torch.Tensor, params: Sequence[torch.Tensor], *, create_graph: bool = False) -> list[torch.Tensor]:
    """d loss / d params, with zeros for parameters the loss does not use (e.g. an unused pooler)."""
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
