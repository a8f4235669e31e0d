"""Distilled calibration data (ZeroQ): inputs whose batch statistics match every batch norm.

ZeroQ (Cai et al. 2020) builds data-free calibration inputs: start from Gaussian
noise and optimize the input tensor itself with Adam (cosine-decayed step) so that, at every
``BatchNorm2d``, the per-channel mean and standard deviation of the batch
entering it match the running statistics stored in the layer. The loss is

    sum over batch norms of  ||mu_batch - mu_running||_2 + ||sigma_batch - sigma_running||_2

with sigma_running = sqrt(running_var + eps) and sigma_batch the biased standard
deviation over (N, H, W). The model runs in eval mode, so its own statistics are
never updated; only the input receives gradients (:func:`torch.autograd.grad`,
no ``.grad`` on the weights).

The result plugs into every estimator through :meth:`Calibration.from_inputs`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError, DataError
from mpsearch.sensitivity._tensors import params_requiring_grad
from mpsearch.sensitivity.calibration import Calibration, LossFn
from mpsearch.space.hooks import ModelHooks, model_mode


@dataclass(frozen=True, kw_only=True, eq=False)
class DistilledData:
    """Distilled inputs and the BN-statistics loss before and after optimization."""

    inputs: torch.Tensor
    loss_before: float
    loss_after: float
    history: tuple[float, ...]
    seconds: float

    @property
    def reduction(self) -> float:
        """loss_before / loss_after (how many times the loss went down)."""
        return self.loss_before / max(self.loss_after, 1e-30)

    def calibration(self, *, loss_fn: LossFn | None = None, batch_size: int = 128) -> Calibration:
        """The inputs as :class:`Calibration` (pseudo-label cross-entropy unless ``loss_fn`` is given)."""
        return Calibration.from_inputs(self.inputs, loss_fn=loss_fn, batch_size=batch_size, name="distilled")


def bn_statistics_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ZeroQ's loss of one forward pass of ``x`` through ``model`` (eval mode assumed)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not norms:
        raise DataError(f"distilled data needs a model with BatchNorm2d layers that track running statistics, but "
                        f"{type(model).__name__} has none. Calibrate on real data instead.")
    terms: list[torch.Tensor] = []

    def hook(module: nn.BatchNorm2d, inputs: tuple) -> None:
        h = inputs[0]
        mean = h.mean(dim=(0, 2, 3))
        std = (h.var(dim=(0, 2, 3), unbiased=False) + module.eps).sqrt()
        terms.append((mean - module.running_mean).norm() + (std - (module.running_var + module.eps).sqrt()).norm())

    with ModelHooks(model, train=None) as hooks:
        for m in norms:
            hooks.pre(m, hook)
        model(x)
    return torch.stack(terms).sum()


def distill_bn_data(
    model: nn.Module,
    *,
    n: int = 32,
    shape: Sequence[int] = (3, 32, 32),
    steps: int = 200,
    lr: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> DistilledData:
    """Optimize ``n`` Gaussian-noise inputs of ``shape`` until the BN statistics match (ZeroQ).

    Example:
        >>> from mpsearch.zoo import load_pretrained
        >>> model = load_pretrained("resnet20")
        >>> data = distill_bn_data(model, n=32, steps=300, progress=False)  # doctest: +SKIP
        >>> data.reduction > 10, data.inputs.shape  # doctest: +SKIP
        (True, torch.Size([32, 3, 32, 32]))
        >>> # sens = HutchinsonTrace().estimate(model, data.calibration(), space)
    """
    for label, value in (("n", n), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"`{label}` must be a positive integer, but got {label}={value!r}. Pass e.g. n=32, steps=200.")
    if not lr > 0:
        raise ConfigError(f"`lr` must be positive, but got lr={lr!r}. Pass e.g. lr=0.2.")
    if n < 2:
        raise ConfigError("`n` must be at least 2 for a batch standard deviation, but got n=1. Pass e.g. n=32.")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    # Cosine decay to zero: the L2 norms are not smooth at a match, so a fixed
    # step keeps Adam circling it; a shrinking step settles in.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history: list[float] = []
    with model_mode(model), params_requiring_grad(list(model.parameters()), False):
        for _ in tqdm(range(steps), desc="distill", disable=not progress, leave=False, mininterval=0.5):
            loss = bn_statistics_loss(model, x)
            history.append(float(loss.detach()))
            (grad,) = torch.autograd.grad(loss, x)
            x.grad = grad
            optimizer.step()
            schedule.step()
            x.grad = None
        with torch.no_grad():
            final = float(bn_statistics_loss(model, x))
    return DistilledData(
        inputs=x.detach().clone(), loss_before=history[0], loss_after=final, history=tuple(history), seconds=time.perf_counter() - start
    )
