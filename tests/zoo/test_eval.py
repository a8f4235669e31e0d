"""Top-1 accuracy on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.errors import DataError
from mpsearch.zoo.eval import accuracy


class PickFirstPixel(torch.nn.Module):
    """Predicts the class stored in channel 0 of the first pixel; records its mode."""

    def __init__(self) -> None:
        super().__init__()
        self.saw_training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.saw_training |= self.training
        assert not torch.is_grad_enabled()
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()


def test_known_answer_independent_of_batch_size() -> None:
    predicted = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    images = predicted.float().view(-1, 1, 1, 1).expand(8, 3, 2, 2).contiguous()
    labels = np.array([0, 1, 2, 3, 4, 0, 0, 0], dtype=np.int64)  # 5 of 8 right
    model = PickFirstPixel().train()
    for batch_size in (1, 3, 8, 500):
        assert accuracy(model, images, labels, batch_size=batch_size) == 62.5
    assert not model.saw_training and not model.training


def test_length_mismatch() -> None:
    with pytest.raises(DataError, match="same length.*4 images and 3 labels"):
        accuracy(PickFirstPixel(), torch.zeros(4, 3, 2, 2), torch.zeros(3, dtype=torch.long))


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        accuracy(PickFirstPixel(), torch.zeros(4, 3, 2, 2), torch.zeros(4), batch_size=0)
