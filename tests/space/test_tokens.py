"""Token windows and causal-LM logits: one set of rules for calibration and the LM metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.errors import DataError
from mpsearch.deploy.lm_metrics import perplexity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.tokens import causal_lm_logits, check_token_windows


class TinyLM(nn.Module):
    """Embedding then a linear head: logits (windows, tokens, vocab), or a wrong shape on request."""

    def __init__(self, vocab: int = 10, flat: bool = False) -> None:
        super().__init__()
        self.embed, self.head, self.flat = nn.Embedding(vocab, 4), nn.Linear(4, vocab), flat

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.embed(ids))
        return logits.mean(dim=1) if self.flat else logits


@pytest.mark.parametrize("windows, batch_size, match", [
    (torch.rand(2, 5), 1, r"int64 tensor \(windows, tokens\), but got \(2, 5\) float32"),
    ([[1, 2]], 1, "int64 tensor.*but got list"),
    (torch.zeros(0, 5, dtype=torch.long), 1, r"at least one window of at least 2 tokens, but got shape \(0, 5\)"),
    (torch.zeros(3, 1, dtype=torch.long), 1, "at least 2 tokens"),
    (torch.zeros(2, 4, dtype=torch.long), 0, "`batch_size` must be an integer of at least 1, but got 0"),
    (torch.tensor([[1, -2]]), 1, "token ids must be >= 0, but got -2"),
])
def test_window_rules(windows, batch_size, match):
    with pytest.raises(DataError, match=match):
        check_token_windows(windows, batch_size)


def test_logits_are_checked_the_same_way_by_calibration_and_metrics():
    ids = torch.tensor([[1, 2, 3], [4, 5, 9]])
    assert causal_lm_logits(TinyLM(), ids).shape == (2, 3, 10)
    too_big = torch.tensor([[1, 12, 3]])
    with pytest.raises(DataError, match="below the model's vocabulary of 10, but got 12"):
        perplexity(TinyLM(), too_big)
    with pytest.raises(DataError, match="below the model's vocabulary of 10, but got 12"):
        Calibration.causal_lm(too_big).loss_fn(TinyLM(), too_big)
    with pytest.raises(DataError, match=r"\(windows, tokens, vocab\) logits, but TinyLM gives \(2, 10\)"):
        perplexity(TinyLM(flat=True), ids)
    with pytest.raises(DataError, match="token ids must be >= 0"):
        perplexity(TinyLM(), torch.tensor([[1, -1, 2]]))
