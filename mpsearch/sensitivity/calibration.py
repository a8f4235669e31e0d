"""Calibration data: batches and the loss an estimator differentiates.

Three kinds: labeled classification batches (cross-entropy), unlabeled inputs (cross-entropy
against the model's own predictions), and token windows of a causal language model (next-token
loss, :meth:`Calibration.causal_lm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpsearch.core.errors import DataError
from mpsearch.sensitivity._input_checks import check_classification, check_finite, shape_of
from mpsearch.space.tokens import causal_lm_logits, check_token_windows

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


def next_token_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Causal-LM loss of int64 (B, T) token windows: mean cross-entropy of each token given the ones before it.

    The logits at position t predict token t + 1, so the mean runs over the B * (T - 1)
    predicted tokens (every token of a window but the first); windows hold no padding. The
    logits are taken in float32 whatever the model's dtype.
    """
    ids = batch
    logits = causal_lm_logits(model, ids)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


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
        if isinstance(inputs, torch.Tensor) and inputs.dtype == torch.int64 and inputs.ndim == 2:
            raise DataError(f"calibration inputs must be a floating-point tensor, but got int64 {tuple(inputs.shape)}, which "
                            "looks like token ids. For a causal LM pass the windows to Calibration.causal_lm(windows).")
        check_classification(inputs, labels, batch_size)
        batches = tuple((inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(inputs), batch_size))
        return cls(batches=batches, sizes=tuple(len(b[1]) for b in batches), name=name)

    @classmethod
    def from_inputs(cls, inputs: torch.Tensor, *, loss_fn: LossFn | None = None, batch_size: int = 128,
                    name: str = "inputs") -> Calibration:
        """Batches of unlabeled inputs (e.g. ZeroQ distilled data) for any estimator.

        Each batch is a bare tensor. ``loss_fn(model, x)`` defaults to
        :func:`pseudo_label_loss` (cross-entropy against the model's own predictions).
        Integer token ids, int64 (N, T), are causal-LM windows: without a ``loss_fn`` they get
        :meth:`causal_lm`'s next-token loss.

        >>> calib = Calibration.from_inputs(torch.randn(10, 3), batch_size=4)
        >>> calib.sizes
        (4, 4, 2)
        """
        if isinstance(inputs, torch.Tensor) and inputs.dtype == torch.int64 and inputs.ndim == 2 and loss_fn is None:
            return cls.causal_lm(inputs, batch_size=batch_size, name=name)
        if isinstance(inputs, torch.Tensor) and inputs.dtype == torch.int64 and inputs.ndim == 2:
            check_token_windows(inputs, batch_size)
            batches = tuple(inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size))
            return cls(batches=batches, sizes=tuple(len(b) for b in batches), loss_fn=loss_fn, name=name)
        if not isinstance(inputs, torch.Tensor) or not torch.is_floating_point(inputs) or inputs.ndim < 1 or len(inputs) == 0:
            raise DataError(f"`inputs` must be a non-empty floating-point tensor (or int64 token windows), but got "
                            f"{shape_of(inputs)}. Pass e.g. distill_bn_data(model).inputs.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"`batch_size` must be an integer of at least 1, but got {batch_size!r}. Pass e.g. 64.")
        check_finite(inputs)
        batches = tuple(inputs[i : i + batch_size].detach() for i in range(0, len(inputs), batch_size))
        return cls(batches=batches, sizes=tuple(len(b) for b in batches), loss_fn=loss_fn or pseudo_label_loss, name=name)

    @classmethod
    def causal_lm(cls, windows: torch.Tensor, *, batch_size: int = 4, name: str = "causal-lm") -> Calibration:
        """Token windows of a causal LM under :func:`next_token_loss`, ``batch_size`` windows a batch.

        ``windows`` is an int64 (N, T) tensor of token ids, e.g. from
        :func:`mpsearch.zoo.text.text_windows`. Every window has T - 1 predicted tokens, so the
        size-weighted mean over batches is the mean over all predicted tokens. A sample is one
        window: Fisher's per-sample gradients are per window.

        >>> calib = Calibration.causal_lm(torch.randint(0, 100, (6, 16)), batch_size=4)
        >>> calib.sizes
        (4, 2)
        """
        check_token_windows(windows, batch_size)
        batches = tuple(windows[i : i + batch_size] for i in range(0, len(windows), batch_size))
        return cls(batches=batches, sizes=tuple(len(b) for b in batches), loss_fn=next_token_loss, name=name)

    def mean_loss(self, model: nn.Module) -> torch.Tensor:
        total = self.n_samples
        return sum(self.loss_fn(model, b) * (s / total) for b, s in zip(self.batches, self.sizes))


__all__ = ["Calibration", "LossFn", "cross_entropy", "next_token_loss", "pseudo_label_loss"]
