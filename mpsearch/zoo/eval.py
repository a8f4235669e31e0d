"""Top-1 accuracy of a classifier, the fidelity measure of the CNN experiments."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mpsearch.core.errors import DataError

__all__ = ["accuracy"]


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy of ``model`` in percent (0..100).

    The model is switched to eval mode (batch norm must use its running statistics)
    and run under ``torch.inference_mode`` in batches of ``batch_size`` to bound memory.

    Args:
        model: A classifier mapping (B, C, H, W) to logits (B, classes).
        images: Normalised inputs, e.g. from :func:`mpsearch.zoo.to_tensor`.
        labels: Integer class labels, one per image.
        batch_size: Images per forward pass.

    Example:
        >>> images, labels = load_cifar10(limit=100)
        >>> accuracy(load_pretrained("resnet20"), to_tensor(images), labels)  # doctest: +SKIP
        94.0
    """
    labels_t = torch.as_tensor(labels).long().reshape(-1)
    if images.shape[0] != labels_t.shape[0]:
        raise DataError(
            f"`images` and `labels` must have the same length, but got {images.shape[0]} "
            f"images and {labels_t.shape[0]} labels. Pass matching arrays."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, but got batch_size={batch_size!r}.")
    if labels_t.numel() == 0:
        raise DataError("`images` must hold at least one image, but got 0. Pass a non-empty set.")
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, labels_t.numel(), batch_size):
            logits = model(images[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == labels_t[start : start + batch_size]).sum())
    return 100.0 * correct / labels_t.numel()
