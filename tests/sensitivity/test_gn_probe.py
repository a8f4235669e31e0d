"""The probe loss of embedding_gn_calibration: its mean squared gradient is diag(J^T J)."""

from __future__ import annotations

import types

import torch
from torch import nn

from mpsearch.sensitivity.losses import (
    embedding_gn_calibration,
    probe_loss,
    sentence_embeddings,
)


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 4)
        self.config = types.SimpleNamespace(hidden_size=4)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return types.SimpleNamespace(last_hidden_state=torch.tanh(self.proj(self.embed(input_ids))))


def tokenizer(sentences, **_):
    ids = torch.tensor([[len(w) % 10 for w in s.split()][:3] + [0] * (3 - len(s.split()[:3])) for s in sentences])
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def test_mean_squared_probe_gradient_is_the_gauss_newton_diagonal():
    torch.manual_seed(0)
    model = TinyEncoder()
    batch = tokenizer(["a bb ccc"])
    w = model.proj.weight

    def embedding(weight):
        return sentence_embeddings(_Bound(model, weight), batch)[0]

    jac = torch.autograd.functional.jacobian(embedding, w.detach())
    exact = jac.reshape(4, -1).square().sum(0)  # diag(J^T J) over the weights of proj
    calib = embedding_gn_calibration(model, tokenizer, ["a bb ccc"] * 4000, batch_size=1, seed=1)
    total = torch.zeros(w.numel())
    for b in calib.batches:
        grad, = torch.autograd.grad(probe_loss(model, b), w)
        total += grad.reshape(-1).square()
    assert torch.allclose(total / len(calib.batches), exact, rtol=0.1, atol=1e-4)


class _Bound(nn.Module):
    """``model`` with proj.weight replaced by ``weight`` (for the exact Jacobian)."""

    def __init__(self, model, weight):
        super().__init__()
        self.model, self.weight = model, weight

    def forward(self, **inputs):
        params = {**dict(self.model.named_parameters()), "proj.weight": self.weight}
        return torch.func.functional_call(self.model, params, (), inputs)
