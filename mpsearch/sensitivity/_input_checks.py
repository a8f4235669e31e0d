"""Calibration tensors checked when a :class:`~mpsearch.sensitivity.Calibration` is built.

Wrong shape, dtype, length or content fails fast with a DataError, before any model is involved.
"""

from __future__ import annotations

from typing import Any

import torch

from mpsearch.core.errors import DataError

FIX_IMAGES = "Pass float images shaped (N, C, H, W) like the model's training data, e.g. from mpsearch.zoo.to_tensor."


def shape_of(t: Any) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" if isinstance(t, torch.Tensor) else type(t).__name__


def check_finite(inputs: torch.Tensor, what: str = "calibration inputs") -> None:
    bad = ~torch.isfinite(inputs)
    if bool(bad.any()):
        first = int(bad.reshape(len(inputs), -1).any(dim=1).nonzero()[0])
        raise DataError(f"{what} must be finite, but {int(bad.sum())} values are NaN or infinite (first in sample "
                        f"{first}). Drop or repair those samples.")


def check_classification(inputs: Any, labels: Any, batch_size: Any) -> None:
    """The rules of :meth:`Calibration.classification`, in the order a user would fix them."""
    if not isinstance(inputs, torch.Tensor) or not torch.is_floating_point(inputs):
        raise DataError(f"calibration inputs must be a floating-point tensor, but got "
                        f"{type(inputs).__name__}{' of ' + str(inputs.dtype) if isinstance(inputs, torch.Tensor) else ''}. "
                        "Convert images with mpsearch.zoo.to_tensor.")
    if inputs.ndim < 2:
        raise DataError(f"calibration inputs must have a sample dimension and at least one more, but got shape "
                        f"{tuple(inputs.shape)}. {FIX_IMAGES}")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        raise DataError(f"calibration labels must be a 1-D int64 tensor of class indices, but got {shape_of(labels)}. "
                        "Convert them with torch.as_tensor(labels).long().flatten().")
    if len(inputs) != len(labels) or len(inputs) == 0:
        raise DataError(f"calibration inputs and labels must be equally long and non-empty, but got {len(inputs)} "
                        f"inputs and {len(labels)} labels. Pass one label per sample.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"`batch_size` must be an integer of at least 1, but got {batch_size!r}. Pass e.g. 64.")
    if bool((labels < 0).any()):
        raise DataError(f"calibration labels must be class indices >= 0, but got {int(labels.min())}. "
                        "Map the labels to 0..n_classes-1.")
    check_finite(inputs)
