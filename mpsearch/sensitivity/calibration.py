"""Calibration data: batches and the loss an estimator differentiates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpsearch.core.errors import DataError
from mpsearch.sensitivity._input_checks import check_classification, check_finite

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def cross_entropy(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def pseudo_label_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy against the model's own predicted classes (for unlabeled or distilled inputs).

    The labels are the argmax of the logits, computed without gradient; they are
    piecewise constant in the weights, so gradients and Hessians equal those of
    cross-entropy with those labels held fixed. Unlike a distance to the model's own
    output, this loss has a non-zero gradient at the current weights.
    """
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    logits = model(x)
    return nn.functional.cross_entropy(logits, logits.detach().argmax(dim=1))


@dataclass(frozen=True, kw_only=True, eq=False)
class Calibration:
    """Calibration data: batches and the loss an estimator differentiates.

    ``loss_fn(model, batch)`` returns the mean loss of one batch; ``sizes`` are
    the batch sizes, used to weight batches into one mean over all samples.

    >>> x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    >>> calib = Calibration.classification(x, y, batch_size=4)
    >>> len(calib.batches), calib.sizes
    (2, (4, 4))
    """

    batches: tuple[Any, ...]
    sizes: tuple[int, ...]
    loss_fn: LossFn = cross_entropy
    name: str = "calibration"

    def __post_init__(self) -> None:
        if not self.batches:
            raise DataError("calibration data must hold at least one batch, but got none. Pass some samples.")
        if len(self.sizes) != len(self.batches) or any(s <= 0 for s in self.sizes):
            raise DataError(f"calibration `sizes` must give one positive size per batch, but got {self.sizes!r}.")

    @property
    def n_samples(self) -> int:
        return int(sum(self.sizes))

    @classmethod
    def classification(cls, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 128, name: str = "calibration") -> Calibration:
        """Batches of (inputs, labels) under the cross-entropy loss; dtype, shape, length and NaN checked here,
        the fit to the model when an estimator starts (``_data_checks``)."""
        check_classification(inputs, labels, batch_size)
        batches = tuple((inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(inputs), batch_size))
        return cls(batches=batches, sizes=tuple(len(b[1]) for b in batches), name=name)

    @classmethod
    def from_inputs(cls, inputs: torch.Tensor, *, loss_fn: LossFn | None = None, batch_size: int = 128,
                    name: str = "inputs") -> Calibration:
        """Batches of unlabeled inputs (e.g. ZeroQ distilled data) for any estimator.

        Each batch is a bare tensor. ``loss_fn(model, x)`` defaults to
        :func:`pseudo_label_loss` (cross-entropy against the model's own predictions).

        >>> calib = Calibration.from_inputs(torch.randn(10, 3), batch_size=4)
        >>> calib.sizes
        (4, 4, 2)
        """
        if not isinstance(inputs, torch.Tensor) or not torch.is_floating_point(inputs) or inputs.ndim < 1 or len(inputs) == 0:
            raise DataError(f"`inputs` must be a non-empty floating-point tensor, but got {type(inputs).__name__} "
                            f"{tuple(getattr(inputs, 'shape', ()))}. Pass e.g. distill_bn_data(model).inputs.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"`batch_size` must be an integer of at least 1, but got {batch_size!r}. Pass e.g. 64.")
        check_finite(inputs)
        batches = tuple(inputs[i : i + batch_size].detach() for i in range(0, len(inputs), batch_size))
        return cls(batches=batches, sizes=tuple(len(b) for b in batches), loss_fn=loss_fn or pseudo_label_loss, name=name)

    def mean_loss(self, model: nn.Module) -> torch.Tensor:
        total = self.n_samples
        return sum(self.loss_fn(model, b) * (s / total) for b, s in zip(self.batches, self.sizes))


__all__ = ["Calibration", "LossFn", "cross_entropy", "pseudo_label_loss"]
