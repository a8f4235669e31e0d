"""Top Hessian eigenvalue per unit by power iteration (HAWQ-V1).

For unit u, the block H_uu of the Hessian of the mean calibration loss is
applied to a vector v_u by differentiating the unit's own gradient,
d/dW_u <g_u, v_u> = H_uu v_u, so the other units' weights never enter (an
exact block, not the full Hessian). Power iteration v <- H v / ||H v||
converges to the eigenvector of largest |eigenvalue|; the Rayleigh quotient
v^T H v is the estimate. It stops when the quotient changes by less than
``tol`` (relative) or after ``max_iter`` products.

The score is the eigenvalue itself (clamped at zero): lambda_max * ||dW||^2
bounds the second-order loss change along any perturbation dW of the unit, so
multiplying the squared quantization error by it gives a worst-case cost.
HAWQ-V1 ordered layers by lambda / n_weights; that ratio is in ``details``.

Cost: one double-backward pass per unit, per iteration, per batch, which on
CPU is far more than Hutchinson's one pass for all units. As HAWQ-V1 does, the
estimate therefore uses one mini-batch by default: the first ``max_samples``
(32) calibration samples (None: all). Pinned units (one bit choice, whose cost
never changes a plan) are skipped unless ``include_pinned``: their score is 0
and they are listed in ``details["skipped_pinned"]``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity._tensors import Deadline, grads_or_zeros, slice_batch, weights_requiring_grad
from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, unit_modules


def first_samples(data: Calibration, limit: int | None) -> Calibration:
    """The first ``limit`` samples of ``data`` (all of it when None or when it has no more)."""
    if limit is None or limit >= data.n_samples:
        return data
    batches, sizes, left = [], [], limit
    for batch, size in zip(data.batches, data.sizes):
        take = min(size, left)
        batches.append(batch if take == size else slice_batch(batch, 0, take))
        sizes.append(take)
        left -= take
        if left == 0:
            break
    return Calibration(batches=tuple(batches), sizes=tuple(sizes), loss_fn=data.loss_fn, name=f"{data.name}[:{limit}]")


def top_eigenvalues(
    model: nn.Module, data: Calibration, params: list[torch.Tensor], *, max_iter: int, tol: float, seed: int, progress: bool = False,
    deadline: Deadline | None = None,
) -> tuple[list[float], list[int], list[bool]]:
    """Largest-magnitude eigenvalue of each H_uu: (eigenvalues, iterations, converged) per parameter tensor.

    Once ``deadline`` has passed, the unit in progress stops iterating and every later unit gets a
    single power step (its Rayleigh quotient, a cheap lower estimate), reported as not converged.
    """
    grads = [grads_or_zeros(data.loss_fn(model, b), params, create_graph=True) for b in data.batches]
    shares = [s / data.n_samples for s in data.sizes]
    generator = torch.Generator().manual_seed(seed)
    values, iters, converged = [], [], []
    for u, p in enumerate(tqdm(params, desc="hessian eig", disable=not progress, leave=False)):
        v = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        v /= v.norm()
        live = [k for k in range(len(grads)) if grads[k][u].requires_grad]
        lam, done, it = 0.0, not live, 0
        while not done and it < max_iter:
            if it >= 1 and deadline is not None and deadline.expired():
                break
            it += 1
            hv = torch.zeros_like(v)
            for k in live:
                (h,) = torch.autograd.grad(grads[k][u], p, grad_outputs=v.to(p.dtype), retain_graph=True, allow_unused=True)
                if h is not None:
                    hv += shares[k] * h.double()
            new = float((v * hv).sum())
            norm = float(hv.norm())
            done = it > 1 and abs(new - lam) <= tol * max(abs(new), 1e-30)
            lam = new
            if norm == 0.0:
                break
            v = hv / norm
        values.append(lam)
        iters.append(it)
        converged.append(done)
    return values, iters, converged


@ESTIMATORS.register("hessian_eig")
class PowerIterationEigen(Estimator):
    """Top Hessian eigenvalue of each unit's block (HAWQ-V1).

    Example:
        >>> est = PowerIterationEigen(max_iter=50, tol=1e-3, seed=0, progress=False)
        >>> # sens = est.estimate(model, calib, space); sens.details["eigenvalue"]["fc"]
    """

    name = "hessian_eig"
    supports_groups = False
    double_backward = True
    quick_options: ClassVar[Mapping[str, Any]] = {"max_iter": 8}

    def __init__(
        self, *, max_iter: int = 20, tol: float = 1e-3, max_samples: int | None = 32, include_pinned: bool = False,
        seed: int = 0, progress: bool = True, time_limit: float | None = None,
    ) -> None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 2:
            raise ConfigError(f"`max_iter` must be an integer >= 2, but got max_iter={max_iter!r}. Pass e.g. max_iter=20.")
        if not 0 < tol < 1:
            raise ConfigError(f"`tol` must be within (0, 1), but got tol={tol!r}. Pass e.g. tol=1e-3.")
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
            raise ConfigError(f"`max_samples` must be None or a positive integer, but got max_samples={max_samples!r}. Pass e.g. 32.")
        self.max_iter, self.tol, self.max_samples, self.include_pinned = max_iter, tol, max_samples, bool(include_pinned)
        self.seed, self.progress, self.time_limit = seed, progress, time_limit

    def settings(self) -> dict:
        return {"max_iter": self.max_iter, "tol": self.tol, "max_samples": self.max_samples,
                "include_pinned": self.include_pinned, "seed": self.seed}

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        start = time.perf_counter()
        data = first_samples(data, self.max_samples)
        todo = [i for i, u in enumerate(space.units) if self.include_pinned or not u.pinned]
        modules = unit_modules(model, space)
        params = [modules[i].weight for i in todo]
        found: tuple = ([], [], [])
        deadline = Deadline(self.time_limit)
        if params:  # every unit pinned: nothing to iterate
            with weights_requiring_grad(model, params):
                found = top_eigenvalues(
                    model, data, params, max_iter=self.max_iter, tol=self.tol, seed=self.seed, progress=self.progress,
                    deadline=deadline,
                )
        values, iters, converged = [0.0] * len(space), [0] * len(space), [False] * len(space)
        for i, v, it, ok in zip(todo, *found):
            values[i], iters[i], converged[i] = v, it, ok
        names = space.names
        details = {
            "eigenvalue": dict(zip(names, values)),
            "eigenvalue_per_weight": {u.name: v / u.n_weights for u, v in zip(space.units, values)},
            "iterations": dict(zip(names, iters)),
            "converged": dict(zip(names, converged)),
            "clamped_negative": [n for n, v in zip(names, values) if v < 0],
            "skipped_pinned": [u.name for i, u in enumerate(space.units) if i not in todo],
            "calibration_samples": data.n_samples,
            "time_limited": deadline.hit,
        }
        return Sensitivity(
            method=self.name, scores={n: max(v, 0.0) for n, v in zip(names, values)}, settings=self.settings(),
            seconds=time.perf_counter() - start, details=details,
        )
