"""Small networks and data shared by the sensitivity tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.Tanh(), nn.Linear(5, 3)
    )


def tiny_data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def trained_tiny_net(x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    """Fitted to (x, y), so the Hessian is close to positive semi-definite."""
    model = tiny_net()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model


def exact_hessian_block(model: nn.Module, x: torch.Tensor, y: torch.Tensor, unit: str) -> torch.Tensor:
    """The (n, n) Hessian of the mean cross-entropy with respect to one unit's weight."""
    params = dict(model.named_parameters())
    key = f"{unit}.weight"

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        p = dict(params)
        p[key] = w
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    h = torch.autograd.functional.hessian(loss_of, params[key].detach())
    n = params[key].numel()
    return h.reshape(n, n).double()
